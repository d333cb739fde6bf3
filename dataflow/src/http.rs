//! The one way medkg serves HTTP/1 (the run's `/metrics`, `medkg serve`):
//! connections bounded in number, headers bounded in time, every
//! connection bounded in lifetime, and failing `accept`s (out of file
//! descriptors) backing off instead of spinning.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

/// How a listener bounds its clients.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections held at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (no slowloris).
    pub header_timeout: Duration,
    /// How long one connection may stay open.
    pub connection_lifetime: Duration,
}

/// Largest request head a connection buffers.
const MAX_BUF_BYTES: usize = 64 << 10;

/// Accepts connections on `listener` until the runtime shuts down and
/// answers each request with `handler`. `on_refused` is called for each
/// connection closed at once because `max_connections` are open; `name`
/// says which server a log line is about.
pub async fn serve_connections<H, F>(
    listener: tokio::net::TcpListener,
    name: &'static str,
    limits: HttpLimits,
    handler: H,
    on_refused: impl Fn(),
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut backoff = Duration::from_millis(10);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(e) => {
                tracing::warn!(error = %e, "{name}: accept failed; backing off {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            on_refused();
            drop(stream); // at the limit: closed at once
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let answer = handler(request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_BUF_BYTES)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection_lifetime, connection).await;
        });
    }
}
