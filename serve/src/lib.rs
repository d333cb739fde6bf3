//! `medkg serve`: a JSON API over a data directory (search, documents,
//! the knowledge graph with a SPARQL endpoint, runs, the ledger, the gate,
//! dead letters), and the operator UI that reads it.
//!
//! - [`auth`] tenants and tokens (`--auth FILE`);
//! - [`readers`] index readers reopened on every commit, and the query
//!   encoders shared by all searches;
//! - `api` the endpoints (described in `docs/openapi.yaml`);
//! - [`http`] what they share: JSON errors, bounded bodies, query strings;
//! - [`snippet`] highlighted snippets; `ui` the embedded operator UI.
//!
//! The server runs on a tokio runtime of its own, beside a run's workers
//! when it is started by `medkg run --serve` (then it shares the run's
//! graph store and metrics: Oxigraph lets one process hold a store) or
//! alone over a data directory (`medkg serve`). Every blocking call (a
//! search, SQLite, a SPARQL query) runs on the runtime's blocking pool,
//! bounded by [`Limits`].
#![warn(missing_docs)]

mod api;
pub mod auth;
pub mod http;
mod metrics;
pub mod readers;
pub mod snippet;
mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use medkg_dataflow::Progress;
use medkg_operators::graph::GraphStore;

pub use auth::{Auth, Principal, Role};

/// What a server may be asked for, and how long it waits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body (a search, a SPARQL query).
    pub max_body_bytes: usize,
    /// Longest search query text.
    pub max_query_bytes: usize,
    /// Largest `k` of a search.
    pub max_k: usize,
    /// Searches running or waiting at once; past it, 503 with `Retry-After`.
    pub max_searches: usize,
    /// SPARQL queries running at once; past it, 503 with `Retry-After`.
    pub max_queries: usize,
    /// Index readers per generation (searches that run at the same moment).
    pub readers: usize,
    /// Connections held at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (no slowloris).
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    pub body_timeout: Duration,
    /// Time a SPARQL query may run before it is cancelled.
    pub sparql_timeout: Duration,
    /// Largest SPARQL result.
    pub max_sparql_result_bytes: usize,
    /// How long one connection may stay open.
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Limits {
            max_body_bytes: 64 << 10,
            max_query_bytes: 2048,
            max_k: 100,
            max_searches: 64,
            max_queries: cores.max(2),
            readers: cores,
            max_connections: 512,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            sparql_timeout: Duration::from_secs(10),
            max_sparql_result_bytes: 16 << 20,
            connection_lifetime: Duration::from_secs(600),
        }
    }
}

/// What to serve.
pub struct ServeOptions {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where to listen.
    pub addr: SocketAddr,
    /// Tokens; `None`: every request is `tenant`'s admin, and only a
    /// loopback address may be bound.
    pub auth: Option<Auth>,
    /// The tenant of requests without `--auth`.
    pub tenant: String,
    /// Limits.
    pub limits: Limits,
    /// The run of this process, for `run --serve` (its graph store, metrics and id).
    pub live: Option<Arc<Progress>>,
}

impl ServeOptions {
    /// Serving `data_dir` on `addr` to loopback clients, as tenant `default`.
    pub fn new(data_dir: impl Into<PathBuf>, addr: SocketAddr) -> ServeOptions {
        ServeOptions {
            data_dir: data_dir.into(),
            addr,
            auth: None,
            tenant: "default".into(),
            limits: Limits::default(),
            live: None,
        }
    }
}

/// Where a server stands, shared by its requests.
pub(crate) struct State {
    pub options: ServeOptions,
    pub readers: readers::Readers,
    pub searches: tokio::sync::Semaphore,
    pub queries: tokio::sync::Semaphore,
    pub metrics: metrics::ServerMetrics,
    /// The graph store `medkg serve` opened (a live run's is in `options.live`).
    graph: Mutex<Option<GraphStore>>,
}

impl State {
    /// The graph store: the live run's, else the data directory's (opened
    /// on first use; Oxigraph takes its lock, so a run cannot write it while
    /// this server holds it; serve a live run with `run --serve`).
    pub fn graph(&self) -> Result<GraphStore, http::ApiError> {
        if let Some(live) = &self.options.live {
            return live.graph.get().cloned().ok_or_else(|| {
                http::ApiError::not_found("this run has no embedded knowledge graph (no kg stage, or --graph sparql:)")
            });
        }
        let mut slot = self.graph.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = slot.as_ref() {
            return Ok(store.clone());
        }
        let dir = self.options.data_dir.join("graph");
        if !dir.join("CURRENT").exists() {
            return Err(http::ApiError::not_found(format!(
                "{} has no knowledge graph (run a pipeline with a kg stage)",
                self.options.data_dir.display()
            )));
        }
        let store = GraphStore::open_existing(&dir)
            .map_err(|e| http::ApiError::unavailable("graph_unavailable", e.to_string(), 5))?;
        *slot = Some(store.clone());
        Ok(store)
    }
}

/// A running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGTERM or SIGINT.
    pub fn wait_for_signal(self) -> anyhow::Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, stop.clone()).context("cannot install the signal handler")?;
        }
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::info!("stopping the server");
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Whether `addr` is a loopback address.
fn loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Starts a server: binds (a busy port is an error at once), opens the
/// readers if the directory has an index, and serves on a runtime of its own.
pub fn start(options: ServeOptions) -> anyhow::Result<Server> {
    if options.auth.is_none() && !loopback(&options.addr) {
        bail!(
            "refusing to serve {} without --auth: without tokens every client is an admin of tenant `{}`; \
             bind a loopback address (127.0.0.1 or [::1]) or give --auth FILE (see `medkg token`)",
            options.addr,
            options.tenant
        );
    }
    if !auth::valid_tenant(&options.tenant) {
        bail!("--tenant `{}` is not a tenant name (letters, digits, -_.)", options.tenant);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(options.limits.max_searches + options.limits.max_queries + 16)
        .thread_name("medkg-serve")
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    let listener =
        std::net::TcpListener::bind(options.addr).with_context(|| format!("cannot bind {}", options.addr))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let readers = readers::Readers::new(&options.data_dir, options.limits.readers);
    if let Err(e) = readers.refresh() {
        tracing::info!(reason = %e, "no index to search yet; serving, and watching for the first commit");
    }
    let state = Arc::new(State {
        searches: tokio::sync::Semaphore::new(options.limits.max_searches),
        queries: tokio::sync::Semaphore::new(options.limits.max_queries),
        metrics: metrics::ServerMetrics::new(),
        graph: Mutex::new(None),
        readers,
        options,
    });
    let stop = Arc::new(AtomicBool::new(false));
    {
        // The watcher: reopens the readers after each commit.
        let (state, stop) = (state.clone(), stop.clone());
        runtime.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(readers::POLL_INTERVAL).await;
                let state = state.clone();
                let _ = tokio::task::spawn_blocking(move || state.readers.refresh()).await;
            }
        });
    }
    let _guard = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    runtime.spawn(accept_loop(listener, state));
    tracing::info!(addr = %addr, "serving the API and the operator UI at http://{addr}/");
    Ok(Server { addr, runtime: Some(runtime), stop })
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<State>) {
    let limits = &state.options.limits;
    let limits = medkg_dataflow::http::HttpLimits {
        max_connections: limits.max_connections,
        header_timeout: limits.header_timeout,
        connection_lifetime: limits.connection_lifetime,
    };
    let handler = {
        let state = state.clone();
        move |request| api::handle(state.clone(), request)
    };
    let refused = || state.metrics.connections_refused.inc();
    medkg_dataflow::http::serve_connections(listener, "server", limits, handler, refused).await;
}
