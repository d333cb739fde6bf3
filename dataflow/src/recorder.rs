//! The run's record in the ledger: a snapshot of its counters and stages
//! about once a second, and a last one saying how it ended, which is what
//! `medkg serve` shows as runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use medkg_connectors::ledger::{LedgerWriter, RunRecord, MAX_HISTORY};

use crate::options::RunOptions;
use crate::progress::Progress;
use crate::telemetry::Telemetry;

/// How often a running run's record is brought up to date.
pub const RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// Writes the run's snapshots until [`RunRecorder::finish`] (or drop).
pub(crate) struct RunRecorder {
    base: RunRecord,
    telemetry: Arc<Telemetry>,
    progress: Arc<Progress>,
    ledger: Arc<LedgerWriter>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    history: Arc<std::sync::Mutex<Vec<[i64; 2]>>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Adds a point to a throughput history, thinning it when full.
fn remember(history: &mut Vec<[i64; 2]>, at_ms: i64, docs: u64) {
    if history.len() >= MAX_HISTORY {
        let mut i = 0;
        history.retain(|_| {
            i += 1;
            i % 2 == 1
        });
    }
    history.push([at_ms, docs as i64]);
}

fn snapshot(base: &RunRecord, telemetry: &Telemetry, progress: &Progress, history: &mut Vec<[i64; 2]>) -> RunRecord {
    let pipeline = telemetry.pipeline.as_str();
    let (updated_ms, docs) = (now_ms(), progress.docs.load(Ordering::Relaxed));
    remember(history, updated_ms, docs);
    RunRecord {
        updated_ms,
        history: history.clone(),
        records: progress.records.load(Ordering::Relaxed),
        docs,
        chunks: progress.chunks.load(Ordering::Relaxed),
        failed: progress.failed.load(Ordering::Relaxed),
        gate_pending: telemetry.metrics.gate_pending.with_label_values(&[pipeline]).get(),
        consumer_lag: progress.lag(),
        stages: telemetry.stage_records(),
        ..base.clone()
    }
}

impl RunRecorder {
    /// Starts recording (nothing when the ledger is off).
    pub fn start(
        options: &RunOptions,
        telemetry: &Arc<Telemetry>,
        progress: &Arc<Progress>,
        ledger: Option<&Arc<LedgerWriter>>,
    ) -> Option<RunRecorder> {
        let ledger = ledger?.clone();
        let source = match (&options.kafka, &options.adapter) {
            (Some(kafka), _) => format!("kafka:{}", kafka.topic),
            (None, Some(adapter)) => adapter.spec.name(),
            (None, None) => format!("file:{}", options.source.display()),
        };
        let base = RunRecord {
            run_id: options.telemetry.run_id.clone(),
            process: options.cluster.as_ref().map_or(0, |c| c.process as u32),
            pipeline: options.plan.name.clone(),
            tenant_id: options.tenant.clone(),
            source,
            status: "running".into(),
            started_ms: now_ms(),
            ..RunRecord::default()
        };
        let done = Arc::new(AtomicBool::new(false));
        let history: Arc<std::sync::Mutex<Vec<[i64; 2]>>> = Arc::default();
        let thread = {
            let (base, telemetry, progress, ledger, done, history) =
                (base.clone(), telemetry.clone(), progress.clone(), ledger.clone(), done.clone(), history.clone());
            std::thread::Builder::new()
                .name("medkg-run-record".into())
                .spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        let record = {
                            let mut history = history.lock().unwrap_or_else(|p| p.into_inner());
                            snapshot(&base, &telemetry, &progress, &mut history)
                        };
                        ledger.record_run(record);
                        // Sleep in short steps so a finished run does not wait a whole interval.
                        let mut slept = Duration::ZERO;
                        while slept < RECORD_INTERVAL && !done.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(50));
                            slept += Duration::from_millis(50);
                        }
                    }
                })
                .ok()
        };
        Some(RunRecorder {
            base,
            telemetry: telemetry.clone(),
            progress: progress.clone(),
            ledger,
            done,
            thread,
            history,
        })
    }

    fn stop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// The last snapshot: `completed`, or `failed` with `error`.
    pub fn finish(mut self, error: Option<&str>) {
        self.stop();
        let mut history = std::mem::take(&mut *self.history.lock().unwrap_or_else(|p| p.into_inner()));
        let mut last = snapshot(&self.base, &self.telemetry, &self.progress, &mut history);
        last.status = if error.is_some() { "failed" } else { "completed" }.into();
        last.finished_ms = Some(last.updated_ms);
        last.error = error.map(|e| medkg_connectors::dead_letter::truncate(e, 2048).into_owned());
        self.ledger.record_run(last);
    }
}

impl Drop for RunRecorder {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_keeps_its_whole_span_within_its_bound() {
        let mut history = Vec::new();
        for t in 0..10_000 {
            remember(&mut history, t, t as u64 * 2);
            assert!(history.len() <= MAX_HISTORY);
        }
        assert_eq!(history.first(), Some(&[0, 0]));
        assert_eq!(history.last(), Some(&[9_999, 19_998]));
        assert!(history.windows(2).all(|w| w[0][0] < w[1][0]));
    }
}
