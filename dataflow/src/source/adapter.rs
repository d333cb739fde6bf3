//! The adapter source: a public API paged through by one worker, its pages
//! spread over every worker, its cursor checkpointed once the pages before
//! it are durable in every index.
//!
//! A *pager* task on the run's I/O runtime makes the calls, one at a time,
//! under the source's policy (rate limit capped by the API's own limit,
//! retries honouring `Retry-After`, breaker, timeout), and hands each page
//! to worker 0 through a channel two pages deep. Worker 0 sends a page's
//! payload into the dataflow as one epoch (the raw stream is exchanged by
//! page, so every worker parses and indexes its share), and remembers the
//! cursor *after* that page. Once the probe after the sinks passes the
//! epoch, every document of the page is durable, and that cursor becomes
//! the checkpoint: a restart (even after `kill -9`) resumes at the first
//! page not yet durable, requesting no page before it again. Pages are
//! upserts, so a page read twice after a crash indexes nothing twice.
//!
//! A page that is not what its API documents is dead-lettered with its URL
//! and reason. When the pass can go on past it (an offset to skip to, a
//! next cursor it still names) it does; when it cannot (no cursor, or one
//! that would loop) a batch run ends with an error after draining what it
//! read, and a followed source tries the same page again after `interval`
//! (never sooner: it never spins). An expired cursor starts the pass over
//! once; an expired PubMed history is searched again once per page.
//!
//! `follow` polls for new and updated records every `interval` (each pass
//! from the day the previous one began) until SIGTERM or SIGINT, which
//! drains, commits and checkpoints like the Kafka source.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use medkg_connectors::adapter::{shown_url, Adapter, AdapterCheckpoint, Call, Cursor, PageError, Pass, Session};
use medkg_connectors::{Position, RawPayload};
use medkg_operators::fetch::{FetchConfig, Fetcher, Url};
use medkg_operators::resilience::Resilience;
use medkg_operators::{ErrorClass, StageError};
use medkg_topology::{AdapterKind, Policy};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;
use tokio::sync::mpsc;

use super::feed::{drain, Feed, Tail};
use super::source_failure;
use crate::options::AdapterSource;
use crate::progress::frontier_of;
use crate::shared::Shared;
use crate::telemetry::{CallObserver, Reporter, Telemetry};

/// The most bytes one response may have (a ctgov page of 1,000 studies is
/// tens of MiB), and what a dead letter keeps of a bad page.
const MAX_PAGE_BYTES: usize = 128 << 20;
const MAX_LETTER_BYTES: usize = 1 << 20;

/// Feeds the adapter source: worker 0 pages, every other worker only
/// processes its share; all then drain.
pub(crate) fn feed(
    worker: &mut Worker,
    shared: &Arc<Shared>,
    feed: Feed,
    source: &AdapterSource,
) -> anyhow::Result<()> {
    let Feed { mut input, flow, committed, letters, mut housekeeping, mut ir_ready, census } = feed;
    housekeeping.opened(0);
    if worker.index() != 0 {
        drop(input);
        let tail = Tail { committed, letters, housekeeping, ir_ready, census };
        return drain(worker, shared, tail, |_| Ok(()));
    }
    let options = &shared.options;
    let (name, key) = (source.spec.name(), source.spec.checkpoint_name());
    let checkpoint = match options.from_start {
        true => None,
        false => AdapterCheckpoint::load(&options.data_dir, &key)
            .with_context(|| format!("cannot read the checkpoint in {}", options.data_dir.display()))?,
    };
    if let Some(checkpoint) = &checkpoint {
        tracing::info!(
            source = %name, pages = checkpoint.pages, cursor = ?checkpoint.pass.cursor, since = ?checkpoint.pass.since,
            "resuming from the checkpoint (a `since` applies to a first run, or with --from-start)"
        );
    }
    let start = checkpoint.unwrap_or_else(|| AdapterCheckpoint {
        source: key.clone(),
        pass: Pass::first(source.spec.since.clone()),
        pages: 0,
    });
    let adapter = shared.adapter.clone().ok_or_else(|| anyhow!("{name}: the adapter was not opened"))?;
    let pager =
        Pager::new(adapter, &source.policy, start.pass.clone(), shared.telemetry.clone(), shared.max_record_bytes)?;
    let (tx, mut rx) = mpsc::channel(2);
    let task = shared.runtime.spawn(pager.run(tx));
    let mut checkpointer = Checkpointer::new(shared, start);
    let window = options.plan.runtime.max_epochs_in_flight.max(1);
    let mut ordinal = checkpointer.durable.pages;
    let mut epoch = 0u64;
    let outcome = loop {
        if let Some(fatal) = shared.failed() {
            task.abort();
            bail!("{fatal}");
        }
        if shared.stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        // Flow control: stay within `window` epochs of what the sinks have seen.
        if flow.less_than(&epoch.saturating_sub(window)) {
            worker.step_or_park(Some(Duration::from_millis(10)));
            housekeeping.tick(&committed)?;
            continue;
        }
        match rx.try_recv() {
            Ok(Paged::Page(page)) => {
                let position = Position { ordinal, file: page.url, line: None, partition: None };
                if let Some(error) = &page.problem {
                    let bytes = &page.body[..page.body.len().min(MAX_LETTER_BYTES)];
                    source_failure(shared, &letters, &name, &position, error, bytes)?;
                }
                if let Some(bytes) = page.payload {
                    shared.progress.read(page.records);
                    let payload = RawPayload {
                        source: name.clone(),
                        key: None,
                        bytes,
                        name: Some(page_name(source.spec.kind).into()),
                        position,
                        tombstone: false,
                        tenant: None,
                    };
                    input.send(payload);
                }
                ordinal += 1;
                checkpointer
                    .after
                    .insert(epoch, AdapterCheckpoint { source: key.clone(), pass: page.after, pages: ordinal });
                epoch += 1;
                input.advance_to(epoch);
                housekeeping.opened(epoch);
                if let Some(ir_ready) = &mut ir_ready {
                    ir_ready.advance(epoch);
                }
                worker.step();
            }
            Ok(Paged::Stopped(result)) => break result,
            Err(mpsc::error::TryRecvError::Empty) => {
                // No page waiting: the time until the next is headroom.
                let parked = std::time::Instant::now();
                worker.step_or_park(Some(Duration::from_millis(20)));
                shared.headroom.idle(parked.elapsed());
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break Err("the pager stopped without a word".into()),
        }
        if let Some(ir_ready) = &mut ir_ready {
            ir_ready.poll();
        }
        housekeeping.tick(&committed)?;
        checkpointer.maybe_store(&committed, &letters, false)?;
    };
    task.abort();
    drop(input);
    let tail = Tail { committed, letters: letters.clone(), housekeeping, ir_ready, census };
    drain(worker, shared, tail, |committed| checkpointer.maybe_store(committed, &letters, false))?;
    // Everything sent is durable now.
    checkpointer.maybe_store(&ProbeHandle::new(), &letters, true)?;
    outcome.map_err(|e: String| anyhow!("{name}: {e}"))
}

/// A name for a page that tells `parse` what it is.
fn page_name(kind: AdapterKind) -> &'static str {
    match kind {
        AdapterKind::Ctgov => "ctgov-studies.json",
        AdapterKind::Pubmed => "efetch.xml",
        AdapterKind::OpenAlex => "openalex-works.json",
        AdapterKind::Unpaywall => "unpaywall.json",
    }
}

/// Stores the state after the last page every index has made durable.
struct Checkpointer {
    shared: Arc<Shared>,
    /// The state after each epoch's page, until durable.
    after: BTreeMap<u64, AdapterCheckpoint>,
    /// The state after the last durable epoch.
    durable: AdapterCheckpoint,
    /// ... not yet written.
    unwritten: bool,
    stored: Instant,
}

impl Checkpointer {
    fn new(shared: &Arc<Shared>, start: AdapterCheckpoint) -> Checkpointer {
        Checkpointer {
            shared: shared.clone(),
            after: BTreeMap::new(),
            durable: start,
            unwritten: false,
            stored: Instant::now(),
        }
    }

    /// Moves to the state after the last durable epoch, and writes it at
    /// most five times a second; `now` writes it at once, every epoch durable.
    fn maybe_store(
        &mut self,
        committed: &ProbeHandle<u64>,
        letters: &crate::ops::ctx::Letters,
        now: bool,
    ) -> anyhow::Result<()> {
        let frontier = if now { u64::MAX } else { frontier_of(committed) };
        while let Some(entry) = self.after.first_entry() {
            if *entry.key() >= frontier {
                break;
            }
            self.durable = entry.remove();
            self.unwritten = true;
        }
        if !now && (!self.unwritten || self.stored.elapsed() < Duration::from_millis(200)) {
            return Ok(());
        }
        // The dead letters of the pages before the cursor are durable first.
        letters.borrow_mut().sync().context("cannot sync the dead letters")?;
        let dir = &self.shared.options.data_dir;
        self.durable.store(dir).with_context(|| format!("cannot write the checkpoint in {}", dir.display()))?;
        self.stored = Instant::now();
        self.unwritten = false;
        Ok(())
    }
}

/// What the pager hands worker 0.
enum Paged {
    /// One response, and where the pass stands after it.
    Page(Page),
    /// No more pages: the pass (or every pass) is done, or it cannot go on.
    Stopped(Result<(), String>),
}

struct Page {
    /// The URL asked, as shown (keys masked).
    url: String,
    /// What goes downstream.
    payload: Option<Vec<u8>>,
    /// Its records.
    records: u64,
    /// What is wrong with it, to dead-letter (with `body`).
    problem: Option<StageError>,
    body: Vec<u8>,
    /// The pass after this page.
    after: Pass,
}

/// Why a pass stopped before its end.
enum Stop {
    /// Worker 0 is gone (stopped, or failed).
    Closed,
    /// The pass cannot go on: a page it cannot pass, or calls that failed
    /// after every retry.
    Failed(String),
}

/// Makes the calls of an adapter source, one at a time.
struct Pager {
    adapter: Adapter,
    fetcher: Fetcher,
    resilience: Resilience,
    telemetry: Arc<Telemetry>,
    pass: Pass,
}

impl Pager {
    fn new(
        adapter: Adapter,
        policy: &Policy,
        pass: Pass,
        telemetry: Arc<Telemetry>,
        max_record_bytes: usize,
    ) -> anyhow::Result<Pager> {
        // Only the API's own host: a redirect anywhere else is refused.
        let config = FetchConfig {
            allow_hosts: vec![adapter.host()],
            max_bytes: max_record_bytes.min(MAX_PAGE_BYTES),
            ..FetchConfig::default()
        };
        let fetcher = Fetcher::new(&config).map_err(|e| anyhow!("{}: {}", adapter.spec().name(), e.message))?;
        let resilience = Resilience::new(&capped(policy, adapter.ceiling()));
        Reporter::calls_out(&telemetry, "source");
        Ok(Pager { adapter, fetcher, resilience, telemetry, pass })
    }

    async fn run(mut self, tx: mpsc::Sender<Paged>) {
        let result = self.passes(&tx).await;
        let _ = tx.send(Paged::Stopped(result)).await;
    }

    /// Every pass: one, or (following) one every `interval` until stopped.
    async fn passes(&mut self, tx: &mpsc::Sender<Paged>) -> Result<(), String> {
        let spec = self.adapter.spec().clone();
        // A rerun after a complete pass reads what is new since it.
        if self.pass.cursor.is_none() {
            self.pass = self.adapter.next_pass(&self.pass);
        }
        loop {
            match self.pass(tx).await {
                Ok(()) => tracing::info!(source = %spec.name(), until = %self.pass.until, "pass complete"),
                Err(Stop::Closed) => return Ok(()),
                Err(Stop::Failed(message)) if !spec.follow => return Err(message),
                Err(Stop::Failed(message)) => {
                    tracing::warn!(source = %spec.name(), "{message}; trying again in {:?}", spec.interval);
                    tokio::time::sleep(spec.interval).await;
                    continue;
                }
            }
            if !spec.follow {
                return Ok(());
            }
            tokio::time::sleep(spec.interval).await;
            if let Err(e) = self.adapter.reload() {
                tracing::warn!(source = %spec.name(), "{e}; keeping the DOIs read before");
            }
            self.pass = self.adapter.next_pass(&self.pass);
        }
    }

    /// One pass, from where it stands to its end.
    async fn pass(&mut self, tx: &mpsc::Sender<Paged>) -> Result<(), Stop> {
        let kind = self.adapter.spec().kind;
        let mut session: Option<Session> = None;
        let mut restarted = false;
        let mut searched_again = false;
        loop {
            let Some(call) = self.adapter.call(&self.pass, session.as_ref()) else {
                if kind != AdapterKind::Unpaywall && self.pass.cursor.is_some() {
                    // (A search that found nothing: the pass is complete all the same.)
                    self.pass.cursor = None;
                    self.send(tx, Page::empty(String::new(), &self.pass)).await?;
                }
                return Ok(());
            };
            let (url, search) = match call {
                Call::Search(url) => (url, true),
                Call::Page(url) => (url, false),
            };
            let shown = shown_url(&url);
            let body = match self.get(&url).await {
                Ok(body) => body,
                Err(error) => {
                    let status = error.kind.strip_prefix("http_").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
                    if !search && !restarted && self.adapter.expired(&self.pass, status) {
                        // The cursor expired: start the pass over (pages are upserts), once.
                        restarted = true;
                        let error = StageError::permanent("cursor_expired", format!("{error}; starting the pass over"));
                        self.send(tx, Page::failed(shown, &self.pass, error, Vec::new())).await?;
                        self.pass.cursor = Some(Cursor::Start);
                        continue;
                    }
                    if kind == AdapterKind::Unpaywall && error.class == ErrorClass::Permanent {
                        // One DOI the API does not know (404): dead-lettered, the next one.
                        self.skip_doi();
                        self.send(tx, Page::failed(shown, &self.pass, error, Vec::new())).await?;
                        continue;
                    }
                    // (The error names the URL.)
                    let message = format!("stopped: {error}");
                    self.send(tx, Page::failed(shown, &self.pass, error, Vec::new())).await?;
                    return Err(Stop::Failed(message));
                }
            };
            if search {
                match self.adapter.read_search(&body) {
                    Ok(found) => session = Some(found),
                    Err(error) => return Err(self.page_failed(tx, shown, error, body).await),
                }
                continue;
            }
            match self.adapter.read_page(&self.pass, session.as_ref(), &body) {
                Ok(read) => {
                    self.pass.cursor = read.next;
                    let problem = read.problem.map(|p| StageError::permanent(&p.kind, p.message));
                    let body = if problem.is_some() { body } else { Vec::new() };
                    let page = Page {
                        url: shown,
                        payload: read.payload,
                        records: read.records,
                        problem,
                        body,
                        after: self.pass.clone(),
                    };
                    self.send(tx, page).await?;
                    searched_again = false;
                }
                Err(error) if error.kind == "cursor_expired" && !searched_again => {
                    // PubMed's history expired: search again, fetch the same offset.
                    tracing::info!(source = %self.adapter.spec().name(), "{error}; searching again");
                    searched_again = true;
                    session = None;
                }
                Err(error) => return Err(self.page_failed(tx, shown, error, body).await),
            }
        }
    }

    /// Moves an Unpaywall pass past its current DOI.
    fn skip_doi(&mut self) {
        if let Some(Cursor::Offset(at)) = self.pass.cursor {
            self.pass.cursor = Some(Cursor::Offset(at + 1));
        }
    }

    /// Dead-letters a response the pass cannot go past.
    async fn page_failed(&mut self, tx: &mpsc::Sender<Paged>, url: String, error: PageError, body: Vec<u8>) -> Stop {
        let message = format!("stopped at {url}: {error}");
        let error = StageError::permanent(&error.kind, error.message);
        match self.send(tx, Page::failed(url, &self.pass, error, body)).await {
            Ok(()) => Stop::Failed(message),
            Err(stop) => stop,
        }
    }

    async fn send(&self, tx: &mpsc::Sender<Paged>, page: Page) -> Result<(), Stop> {
        tx.send(Paged::Page(page)).await.map_err(|_| Stop::Closed)
    }

    /// One GET under the policy: the body, or the last attempt's error.
    async fn get(&self, url: &Url) -> Result<Vec<u8>, StageError> {
        let observer = CallObserver {
            telemetry: self.telemetry.clone(),
            stage: "source".into(),
            doc_id: shown_url(url),
            tenant: String::new(),
            began: Instant::now(),
        };
        let shown = observer.doc_id.as_str();
        // Errors name the URL (in retry logs, events and dead letters): as shown, an API key masked.
        let attempt = |_| async move {
            self.fetcher.get(url).await.map_err(|mut error| {
                error.message = error.message.replace(url.as_str(), shown);
                error
            })
        };
        self.resilience.call(&observer, attempt).await.result.map(|fetched| fetched.body)
    }
}

impl Page {
    /// A response with nothing to index: the pass's new state only.
    fn empty(url: String, after: &Pass) -> Page {
        Page { url, payload: None, records: 0, problem: None, body: Vec::new(), after: after.clone() }
    }

    /// A response to dead-letter.
    fn failed(url: String, after: &Pass, error: StageError, body: Vec<u8>) -> Page {
        Page { problem: Some(error), body, ..Page::empty(url, after) }
    }
}

/// `policy` with its rate capped at the API's own limit: at most `ceiling`
/// requests in any second, its burst included (a policy above the limit
/// becomes the limit, one request at a time).
fn capped(policy: &Policy, ceiling: f64) -> Policy {
    let rate_limit = match policy.rate_limit {
        Some((rate, burst)) if rate <= ceiling => {
            let room = (ceiling - rate).floor().max(1.0) as u32;
            Some((rate, burst.clamp(1, room)))
        }
        _ => Some((ceiling, 1)),
    };
    Policy { rate_limit, ..policy.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_caps_the_policy_rate() {
        let mut policy = medkg_topology::Policies::builtin().by_name["polite-api"].clone();
        policy.rate_limit = Some((20.0, 20));
        assert_eq!(capped(&policy, 3.0).rate_limit, Some((3.0, 1)));
        assert_eq!(capped(&policy, 50.0).rate_limit, Some((20.0, 20)));
        policy.rate_limit = Some((2.0, 5));
        assert_eq!(capped(&policy, 3.0).rate_limit, Some((2.0, 1)));
        policy.rate_limit = None;
        assert_eq!(capped(&policy, 10.0).rate_limit, Some((10.0, 1)));
    }
}
