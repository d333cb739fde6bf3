//! `medkg bench`: the models alone against the whole pipeline, and search latency.

use anyhow::{anyhow, bail};
use medkg_dataflow::Mode;

use super::{run_options, Job};
use crate::cli::{AdapterArgs, BenchArgs, KafkaArgs, SourceSpec};

/// `medkg bench`.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let BenchArgs { pipeline, source, queries, data_dir, workers, mode, json, models } = args;
    let mut report = serde_json::Map::new();
    if let (Some(pipeline), Some(source)) = (&pipeline, &source) {
        if matches!(source, SourceSpec::Adapter(_)) {
            bail!("bench reads file:PATH or kafka:TOPIC (an API's own pace is not medkg's)");
        }
        let job = Job {
            pipeline,
            source: Some(source),
            data_dir: data_dir.clone(),
            workers,
            tenant: "default".into(),
            from_start: true,
            resilience: None,
            models: &models,
            kafka: &KafkaArgs::default(),
            adapter: &AdapterArgs::default(),
        };
        let options = run_options(job)?;
        let result = medkg_dataflow::bench::pipeline(&options)?;
        if let serde_json::Value::Object(fields) = serde_json::to_value(&result)? {
            report.extend(fields);
        }
    }
    if let Some(queries) = &queries {
        let mode: Mode = mode.parse().map_err(|e: String| anyhow!(e))?;
        let result = medkg_dataflow::bench::queries(&data_dir, queries, mode, "default", 10)?;
        report.insert("search".into(), serde_json::to_value(&result)?);
    }
    if report.is_empty() {
        bail!("nothing to bench: give --pipeline and --source, or --queries");
    }
    if json {
        println!("{}", serde_json::Value::Object(report));
    } else {
        for (key, value) in &report {
            println!("{key}: {value}");
        }
    }
    Ok(())
}
