//! Helpers shared by the end-to-end tests.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The `medkg` binary under test. It dies with the test thread that started
/// it, so a failing test leaves no engine running behind it.
pub fn medkg() -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(env!("CARGO_BIN_EXE_medkg"));
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// shared/ (data and models): `MEDKG_SHARED`, else `../shared`.
pub fn shared() -> PathBuf {
    std::env::var_os("MEDKG_SHARED").map(PathBuf::from).unwrap_or_else(|| repo().join("../shared"))
}

/// The models and their variants (the pooled SPLADE the pipelines use):
/// `MEDKG_MODELS`, else what scripts/models.sh made (scripts/test.sh makes them).
pub fn models() -> PathBuf {
    medkg_operators::models::models_dir(None).expect("MEDKG_MODELS: run scripts/models.sh (scripts/test.sh does)")
}

/// The first `n` records of the PubMed sample, as a plain JSONL file in `dir`.
pub fn pubmed_slice(dir: &Path, n: usize) -> (PathBuf, Vec<Value>) {
    use std::io::BufRead;
    let file = std::fs::File::open(shared().join("data/pubmed_sample.jsonl.gz"))
        .expect("../shared/data/pubmed_sample.jsonl.gz (set MEDKG_SHARED)");
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
    let lines: Vec<String> = reader.lines().take(n).map(|l| l.unwrap()).collect();
    let path = dir.join(format!("pubmed-{n}.jsonl"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (path, lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect())
}

/// `output` of a `medkg` that must have succeeded; else the test fails
/// showing its stdout and stderr.
pub fn succeeded(output: std::process::Output) -> std::process::Output {
    assert!(
        output.status.success(),
        "medkg failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A plain HTTP/1.1 GET over loopback: (status, body).
#[allow(dead_code)]
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// What the test server answers to one request.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// Answer only after this long.
    pub delay: std::time::Duration,
    /// Answer only once this is set.
    pub hold: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Reply {
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply { status: 200, body: body.into(), ..Reply::default() }
    }

    pub fn status(status: u16) -> Reply {
        Reply { status, body: format!("status {status}\n").into_bytes(), ..Reply::default() }
    }
}

/// Answers a request given its path, its query string and how many times
/// that path was asked for before.
type Handler = dyn Fn(&str, &str, u32) -> Reply + Send + Sync;
/// Shared lists of (path, what) the server records.
type Records<T> = std::sync::Arc<std::sync::Mutex<Vec<(String, T)>>>;

/// A real HTTP server on loopback (hyper), answering with a handler given
/// the path and how many times that path was asked for before, and logging
/// every request with its arrival time.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    log: Records<std::time::Instant>,
    /// (path, query, arrival) of every request.
    queries: std::sync::Arc<std::sync::Mutex<Vec<(String, String, std::time::Instant)>>>,
    bodies: Records<Vec<u8>>,
    _runtime: tokio::runtime::Runtime,
}

impl TestServer {
    pub fn start(handler: impl Fn(&str, u32) -> Reply + Send + Sync + 'static) -> TestServer {
        TestServer::start_with_query(move |path, _, nth| handler(path, nth))
    }

    /// A server whose handler also sees each request's query string.
    pub fn start_with_query(handler: impl Fn(&str, &str, u32) -> Reply + Send + Sync + 'static) -> TestServer {
        use std::sync::{Arc, Mutex};
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Records<std::time::Instant> = Arc::default();
        let bodies: Records<Vec<u8>> = Arc::default();
        let queries: Arc<Mutex<Vec<(String, String, std::time::Instant)>>> = Arc::default();
        let seen: Arc<Mutex<std::collections::HashMap<String, u32>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let state = (log.clone(), seen, handler, bodies.clone(), queries.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (log, seen, handler, bodies, queries) = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let (log, seen, handler, bodies, queries) =
                            (log.clone(), seen.clone(), handler.clone(), bodies.clone(), queries.clone());
                        async move {
                            let path = request.uri().path().to_string();
                            let query = request.uri().query().unwrap_or_default().to_string();
                            let now = std::time::Instant::now();
                            log.lock().unwrap().push((path.clone(), now));
                            queries.lock().unwrap().push((path.clone(), query.clone(), now));
                            if request.method() == hyper::Method::POST {
                                use http_body_util::BodyExt;
                                let body = request.into_body().collect().await.map(|b| b.to_bytes().to_vec());
                                bodies.lock().unwrap().push((path.clone(), body.unwrap_or_default()));
                            }
                            let nth = {
                                let mut seen = seen.lock().unwrap();
                                let n = seen.entry(path.clone()).or_default();
                                *n += 1;
                                *n - 1
                            };
                            let reply = handler(&path, &query, nth);
                            tokio::time::sleep(reply.delay).await;
                            if let Some(hold) = &reply.hold {
                                while !hold.load(std::sync::atomic::Ordering::SeqCst) {
                                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                                }
                            }
                            let mut response = hyper::Response::builder().status(reply.status);
                            for (k, v) in &reply.headers {
                                response = response.header(k, v);
                            }
                            response.body(http_body_util::Full::new(bytes::Bytes::from(reply.body)))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        TestServer { addr, log, bodies, queries, _runtime: runtime }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The bodies POSTed to `path`, in order.
    pub fn posted(&self, path: &str) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().iter().filter(|(p, _)| p == path).map(|(_, b)| b.clone()).collect()
    }

    /// (path, query, arrival) of the requests for paths starting with `prefix`, in order.
    pub fn requests_with_query(&self, prefix: &str) -> Vec<(String, String, std::time::Instant)> {
        self.queries.lock().unwrap().iter().filter(|(p, _, _)| p.starts_with(prefix)).cloned().collect()
    }

    /// Arrival times of the requests for paths starting with `prefix`, in order.
    pub fn requests(&self, prefix: &str) -> Vec<(String, std::time::Instant)> {
        self.log.lock().unwrap().iter().filter(|(p, _)| p.starts_with(prefix)).cloned().collect()
    }
}

/// Kafka helpers: the broker scripts/test.sh started (`MEDKG_KAFKA_BROKERS`),
/// topics of a test's own, and what a group has read.
pub mod kafka {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};

    pub fn brokers() -> String {
        std::env::var("MEDKG_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
    }

    /// A topic name of its own for each test run (the broker outlives runs).
    pub fn topic(name: &str) -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        format!("{name}-{}-{nanos}", std::process::id())
    }

    pub fn create_topic(name: &str, partitions: usize) {
        // tansu creates topics on first use with 3 partitions; ask for ours explicitly.
        let tansu = std::env::var("MEDKG_TANSU")
            .unwrap_or_else(|_| format!("{}/.cache/medkg/tansu/bin/tansu", std::env::var("HOME").unwrap_or_default()));
        let status = std::process::Command::new(tansu)
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://{}", brokers()),
                "--partitions",
                &partitions.to_string(),
                name,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("tansu (scripts/kafka-broker.sh installs it)");
        assert!(status.success(), "cannot create topic {name}");
    }

    /// The group's committed offset of each partition (-1 where none is).
    pub fn committed(topic: &str, group: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(topic, p);
        }
        let committed = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
        (0..partitions)
            .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect()
    }

    /// Each partition's end (the offset after its last message), found by
    /// reading it: tansu 0.6's reported high watermark lags the last offset.
    pub fn ends(topic: &str, partitions: i32) -> Vec<i64> {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", format!("{topic}-end-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut all = TopicPartitionList::new();
        for p in 0..partitions {
            all.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        reader.assign(&all).unwrap();
        let mut ends = vec![0i64; partitions as usize];
        let mut idle_since = Instant::now();
        while idle_since.elapsed() < Duration::from_secs(3) {
            if let Some(Ok(message)) = reader.poll(Duration::from_millis(100)) {
                let slot = &mut ends[message.partition() as usize];
                *slot = (*slot).max(message.offset() + 1);
                idle_since = Instant::now();
            }
        }
        ends
    }

    /// A consumer of group `group` reading `topic` from its start.
    pub fn reader(topic: &str, group: &str) -> BaseConsumer {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "2000")
            .set("heartbeat.interval.ms", "200")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        consumer
    }
}
