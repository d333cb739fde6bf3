//! `medkg validate`: check pipeline files, and say which this build runs.

use std::process::ExitCode;

use super::load_plan;
use crate::cli::ValidateArgs;

pub fn validate(args: ValidateArgs) -> ExitCode {
    let mut ok = true;
    for file in &args.files {
        match load_plan(file, args.resilience.as_deref()) {
            Ok(plan) => {
                let note = match medkg_dataflow::check_implemented(&plan) {
                    Ok(()) => String::new(),
                    Err(e) => format!(" (valid, but cannot run in this build: {e})"),
                };
                println!(
                    "{}: ok: pipeline `{}` v{}, {} stages{note}",
                    file.display(),
                    plan.name,
                    plan.version,
                    plan.stages.len()
                );
            }
            Err(errors) => {
                ok = false;
                eprintln!("{errors}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
