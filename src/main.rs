//! `medkg`: stream biomedical documents through a YAML topology into
//! searchable indexes.
//!
//! `cli` holds every subcommand's arguments; `commands/` one file per
//! subcommand.

mod cli;
mod commands;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use medkg_topology::ValidationErrors;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli.log_format);
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::PdfParser(args) => commands::pdf_parser::command(args),
        Command::PdfExtract(args) => commands::pdf_parser::extract_one(&args.doc_id, &args.tenant, args.max_bytes),
        Command::Ledger(args) => commands::ledger::ledger(args),
        Command::Produce(args) => commands::produce::produce(args),
        Command::Search(args) => commands::search::search(args),
        Command::Bench(args) => commands::bench::bench(args),
        Command::Stats(args) => commands::stats::stats(args),
        Command::Graph(args) => commands::graph::graph(args),
        Command::Sparql(args) => commands::graph::sparql(args),
        Command::Export(args) => commands::graph::export(args),
        Command::Serve(args) => commands::serve::serve(args),
        Command::Token(args) => commands::serve::token(args),
        Command::Validate(args) => return commands::validate::validate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<ValidationErrors>() {
                // Located errors say `FILE:LINE:COL: error: ...` themselves.
                Some(errors) => eprintln!("{errors}"),
                None => eprintln!("medkg: error: {e:#}"),
            }
            ExitCode::from(2)
        }
    }
}

/// Logs on stderr, as text or JSON lines, filtered by MEDKG_LOG (default info).
fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEDKG_LOG")
        // The PDF text extractor warns about every odd glyph: keep it to errors.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pdf_extract=error,lopdf=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).init();
    }
}
