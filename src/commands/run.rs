//! `medkg run`: a pipeline over a file or a topic.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::bail;
use medkg_dataflow::{Progress, RunOptions};

use super::{run_options, Job};
use crate::cli::RunArgs;

/// `medkg run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        pipeline,
        source,
        data_dir,
        workers,
        tenant,
        from_start,
        resilience,
        models,
        kafka,
        adapter,
        cluster,
        telemetry,
        ir_ready,
        graph,
        serve,
        server,
        ..
    } = args;
    if serve.is_none() && server.auth.is_some() {
        bail!("--auth needs --serve ADDR");
    }
    let job = Job {
        pipeline: &pipeline,
        source: source.as_ref(),
        data_dir,
        workers,
        tenant,
        from_start,
        resilience: resilience.as_deref(),
        models: &models,
        kafka: &kafka,
        adapter: &adapter,
    };
    let mut options = run_options(job)?;
    options.cluster = cluster.cluster()?;
    options.telemetry = telemetry.options(&kafka)?;
    // One run, one id: the ledger, events and lineage of every process must agree.
    if options.cluster.is_some() && telemetry.run_id.is_none() {
        bail!("-n {} needs --run-id ID, the same in every process of the cluster", cluster.processes);
    }
    options.ir_ready = ir_ready;
    options.graph = graph;
    let progress = Arc::new(Progress::default());
    // The server starts first (a busy address stops the run before it reads
    // anything) and stops when the run ends.
    let _server = match serve {
        Some(addr) => {
            Some(super::serve::start_beside_run(&options.data_dir, addr, &options.tenant, &server, &progress)?)
        }
        None => None,
    };
    run_with_progress(options, progress)
}

/// Runs `options`, showing progress on a terminal; prints the summary as JSON.
fn run_with_progress(options: RunOptions, progress: Arc<Progress>) -> anyhow::Result<()> {
    let tty = std::io::stderr().is_terminal();
    let summary = medkg_dataflow::run(options, progress, |p, elapsed| {
        if tty {
            let docs = p.docs.load(Ordering::Relaxed);
            let rate = docs as f64 / elapsed.as_secs_f64().max(1e-9);
            let lag = match p.lag() {
                0 => String::new(),
                n => format!("  lag {n:>7}"),
            };
            let line = format!(
                "\r{:>6.1}s  read {:>9}  docs {:>9}  {:>8.0} docs/s  chunks {:>9}  failed {:>6}{lag}",
                elapsed.as_secs_f64(),
                p.records.load(Ordering::Relaxed),
                docs,
                rate,
                p.chunks.load(Ordering::Relaxed),
                p.failed.load(Ordering::Relaxed)
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    })?;
    if tty {
        eprintln!();
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
