//! `medkg ledger`: where each document of a data directory stands.

use std::io::Write;

use anyhow::{anyhow, Context};
use medkg_connectors::ledger::{Ledger, Status};

use crate::cli::LedgerArgs;

/// `medkg ledger`: rows of the job ledger, as a table or JSON.
pub fn ledger(args: LedgerArgs) -> anyhow::Result<()> {
    let LedgerArgs { data_dir, status, doc, limit, json } = args;
    let doc = doc.as_deref();
    let status: Option<Status> =
        status.as_deref().map(str::parse).transpose().map_err(|e: String| anyhow!("--status {e}"))?;
    let ledger = Ledger::open_existing(&data_dir)?;
    let rows = ledger.query(status, doc, limit)?;
    let counts = ledger.counts()?;
    let mut out = std::io::stdout().lock();
    let printed = (|| -> std::io::Result<()> {
        if json {
            let mut value = serde_json::json!({ "rows": rows });
            if status.is_none() && doc.is_none() {
                value["counts"] = serde_json::to_value(&counts)?;
            }
            return writeln!(out, "{}", serde_json::to_string_pretty(&value)?);
        }
        if status.is_none() && doc.is_none() {
            let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
            writeln!(out, "documents: {}", if summary.is_empty() { "none".to_string() } else { summary.join(", ") })?;
        }
        writeln!(
            out,
            "{:<28} {:<10} {:<12} {:<12} {:<16} {:<24} LAST ERROR",
            "DOCUMENT", "TENANT", "STATUS", "STAGE", "RETRIES", "UPDATED"
        )?;
        for row in rows {
            let retries: Vec<String> = row.retries.iter().map(|(s, n)| format!("{s}={n}")).collect();
            writeln!(
                out,
                "{:<28} {:<10} {:<12} {:<12} {:<16} {:<24} {}",
                row.doc_id,
                row.tenant_id,
                row.status,
                row.stage,
                if retries.is_empty() { "-".to_string() } else { retries.join(",") },
                row.updated_at,
                row.last_error.unwrap_or_default()
            )?;
        }
        Ok(())
    })();
    match printed {
        // `medkg ledger | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot print the ledger"),
    }
}
