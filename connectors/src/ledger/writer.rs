//! How updates reach the ledger: a [`LedgerBuffer`] per worker folds them,
//! and one [`LedgerWriter`] thread per process writes them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc, Arc, Mutex};

use super::runs::RunRecord;
use super::store::Ledger;
use super::update::{now_ms, Pending, Update};
use crate::error::{Error, Result};

/// A worker's unwritten updates.
#[derive(Debug)]
pub struct LedgerBuffer {
    /// `None`: the ledger is off (`--no-ledger`); updates are dropped.
    writer: Option<Arc<LedgerWriter>>,
    pending: HashMap<(String, String), Pending>,
    last_write: std::time::Instant,
}

impl LedgerBuffer {
    /// A buffer writing to `ledger`.
    pub fn new(writer: Arc<LedgerWriter>) -> LedgerBuffer {
        LedgerBuffer { writer: Some(writer), pending: HashMap::new(), last_write: std::time::Instant::now() }
    }

    /// A buffer that keeps nothing (the ledger is off).
    pub fn off() -> LedgerBuffer {
        LedgerBuffer { writer: None, pending: HashMap::new(), last_write: std::time::Instant::now() }
    }

    /// Folds in one update.
    pub fn record(&mut self, update: Update) {
        if self.writer.is_none() {
            return;
        }
        let at_ms = now_ms();
        let key = (update.tenant_id.clone(), update.doc_id.clone());
        match self.pending.get_mut(&key) {
            Some(pending) => {
                if update.retries > 0 {
                    *pending.retries.entry(update.stage.clone()).or_default() += update.retries;
                }
                pending.latest.pdf_downloaded |= update.pdf_downloaded;
                pending.latest.pdf_ir_ready |= update.pdf_ir_ready;
                pending.at_ms = at_ms;
                if update.supersedes(&pending.latest) {
                    let (downloaded, ready) = (pending.latest.pdf_downloaded, pending.latest.pdf_ir_ready);
                    let error = update.error.clone().or(pending.latest.error.take());
                    pending.latest = Update { error, pdf_downloaded: downloaded, pdf_ir_ready: ready, ..update };
                } else if update.error.is_some() {
                    pending.latest.error = update.error;
                }
            }
            None => {
                let mut retries = BTreeMap::new();
                if update.retries > 0 {
                    retries.insert(update.stage.clone(), update.retries);
                }
                self.pending.insert(key, Pending { latest: update, retries, at_ms });
            }
        }
    }

    /// Documents with unwritten updates.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Hands the updates to the writer when the last hand-off is `interval`
    /// old (or the buffer is large).
    pub fn write_if_due(&mut self, interval: std::time::Duration) -> Result<()> {
        if !self.pending.is_empty() && (self.last_write.elapsed() >= interval || self.pending.len() >= 50_000) {
            self.write()?;
        }
        Ok(())
    }

    /// Hands every pending update to the writer (it writes them in one transaction).
    pub fn write(&mut self) -> Result<()> {
        self.last_write = std::time::Instant::now();
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        if self.pending.is_empty() {
            return writer.error();
        }
        writer.send(self.pending.drain().map(|(_, p)| p).collect())
    }

    /// Hands everything over and waits until it is written.
    pub fn sync(&mut self) -> Result<()> {
        self.write()?;
        match &self.writer {
            Some(writer) => writer.sync(),
            None => Ok(()),
        }
    }
}

enum Message {
    Write(Vec<Pending>),
    Run(Box<RunRecord>),
    Sync(mpsc::Sender<()>),
}

/// The thread that owns a process's ledger connection.
#[derive(Debug)]
pub struct LedgerWriter {
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The first write error: every later hand-off returns it.
    error: Arc<Mutex<Option<String>>>,
}

impl LedgerWriter {
    /// Starts the writer of `ledger` for a run.
    pub fn start(mut ledger: Ledger, pipeline: &str, run_id: &str) -> Result<Arc<LedgerWriter>> {
        let (sender, receiver) = mpsc::channel::<Message>();
        let error: Arc<Mutex<Option<String>>> = Arc::default();
        let failed = error.clone();
        let (pipeline, run_id) = (pipeline.to_string(), run_id.to_string());
        let thread = std::thread::Builder::new()
            .name("medkg-ledger".into())
            .spawn(move || {
                while let Ok(first) = receiver.recv() {
                    let mut batch = Vec::new();
                    let mut syncs = Vec::new();
                    let mut run = None;
                    for message in std::iter::once(first).chain(receiver.try_iter()) {
                        match message {
                            Message::Write(pending) => batch.extend(pending),
                            // Only the latest snapshot of the run matters.
                            Message::Run(record) => run = Some(record),
                            Message::Sync(done) => syncs.push(done),
                        }
                    }
                    if !batch.is_empty() {
                        if let Err(e) = ledger.write(&pipeline, &run_id, &batch) {
                            failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e.to_string());
                        }
                    }
                    if let Some(run) = run {
                        // A snapshot that cannot be written is not the documents' loss: logged, not fatal.
                        if let Err(e) = ledger.write_run(&run) {
                            tracing::warn!(error = %e, "cannot record the run in the ledger");
                        }
                    }
                    for done in syncs {
                        let _ = done.send(());
                    }
                }
            })
            .map_err(|e| Error::io("cannot start the ledger writer", e))?;
        Ok(Arc::new(LedgerWriter { sender: Mutex::new(Some(sender)), thread: Mutex::new(Some(thread)), error }))
    }

    fn error(&self) -> Result<()> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(e) => Err(Error::Other(e)),
            None => Ok(()),
        }
    }

    fn send(&self, pending: Vec<Pending>) -> Result<()> {
        self.error()?;
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        match sender.as_ref() {
            Some(sender) => sender.send(Message::Write(pending)).map_err(|_| stopped()),
            None => Err(stopped()),
        }
    }

    /// Hands over this process's latest snapshot of the run.
    pub fn record_run(&self, run: RunRecord) {
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = sender.as_ref() {
            let _ = sender.send(Message::Run(Box::new(run)));
        }
    }

    /// Waits until everything handed over so far is written.
    pub fn sync(&self) -> Result<()> {
        let (done_tx, done_rx) = mpsc::channel();
        {
            let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(sender) = sender.as_ref() {
                sender.send(Message::Sync(done_tx)).map_err(|_| stopped())?;
            }
        }
        let _ = done_rx.recv();
        self.error()
    }

    /// Writes what is left and stops the thread.
    pub fn close(&self) -> Result<()> {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
        self.error()
    }
}

fn stopped() -> Error {
    Error::Other("the ledger writer has stopped".into())
}
