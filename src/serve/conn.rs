//! Connections: the accept loop, TLS handshakes, and the limits that keep one client from
//! holding the server.
//!
//! Written here rather than `axum::serve` because that loop completes TLS handshakes inline
//! (one idle TCP connection blocked every HTTPS client) and has no read deadline. Here each
//! connection is its own task; a handshake has a deadline; headers must arrive within the
//! header timeout; a connection that moves no byte in either direction for the idle timeout
//! is closed (a half-sent request, an idle keep-alive); accept errors back off.
//!
//! Descriptors: at start the soft limit on open files is raised to the hard one, and
//! `max_connections` is capped so that the connections, with the blob file each may stream,
//! fit under it with a reserve left for the store, the upstreams and the answers below. A
//! connection past the cap is answered at once (plain HTTP: `429` with `Retry-After`, which
//! registry clients wait out) and closed; it never waits in the kernel's queue for a
//! descriptor while half-sent requests hold them all. (Over TLS it is closed: an answer
//! would need the handshake first.)
//!
//! Before refusing, the cap makes room: the connection that has waited longest for a
//! request (its TLS handshake or its headers, or idle between requests) is closed and the
//! newcomer takes its slot — Apache's `RequestReadTimeout … MinRate` idea, so that clients
//! dribbling headers cannot lock out a client that sends a whole request. A connection
//! serving a request (reading its body, streaming its answer) is never taken. Only when
//! every connection is serving one is the newcomer refused.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Mutex;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

/// Limits on what one client may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    /// No byte moved either way for this long: the connection is closed.
    pub idle_timeout: Duration,
    /// A request's headers must be complete within this.
    pub header_timeout: Duration,
    pub tls_handshake_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Descriptors kept for everything but client sockets: the store's files and locks, the
/// upstreams' connections, log files, and the sockets of connections being refused.
const RESERVED_FILES: u64 = 64;
/// Descriptors one connection may hold at once: its socket and the blob file it streams.
const FILES_PER_CONNECTION: u64 = 2;
/// Connections past the cap answered at the same time (each holds its socket briefly).
const REFUSALS_AT_ONCE: usize = 16;
/// How long a refused client's request is read (and dropped) after the answer, so that
/// closing with unread bytes does not reset the connection before the answer is read.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Raise the soft limit on open files to the hard one; the connections that fit under it:
/// `requested`, or fewer when the limit is too low (then `Some(limit)` says why).
pub fn fit_to_open_files(requested: usize) -> (usize, Option<u64>) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let Some(files) = limit.current else {
        return (requested, None); // unlimited
    };
    let fit = (files.saturating_sub(RESERVED_FILES) / FILES_PER_CONNECTION).max(1);
    match usize::try_from(fit) {
        Ok(fit) if fit < requested => (fit, Some(files)),
        _ => (requested, None),
    }
}

/// How long a newcomer waits for the slot of the connection closed for it.
const MAKE_ROOM_WAIT: Duration = Duration::from_millis(500);

/// One connection as the cap sees it. Requests touch only their own connection's state
/// (two atomics), never a lock all connections share: the map below is locked once when a
/// connection opens, once when it closes, and when the cap makes room.
struct ConnState {
    /// Requests being served (HTTP/1.1 serves one at a time; counted all the same).
    serving: AtomicU32,
    /// When it last began to wait for a request: milliseconds since the tracker's epoch.
    waiting_since: AtomicU64,
    close: Notify,
}

impl ConnState {
    fn request_started(&self) {
        self.serving.fetch_add(1, SeqCst);
    }

    fn request_done(&self, now_ms: u64) {
        // The time first: whoever sees the count at 0 sees when the wait began.
        self.waiting_since.store(now_ms, SeqCst);
        self.serving.fetch_sub(1, SeqCst);
    }
}

/// The open connections, by id.
#[derive(Clone)]
struct Tracker {
    epoch: Instant,
    next_id: Arc<AtomicU64>,
    conns: Arc<Mutex<HashMap<u64, Arc<ConnState>>>>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            epoch: Instant::now(),
            next_id: Arc::default(),
            conns: Arc::default(),
        }
    }
}

impl Tracker {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A connection accepted: it waits for a request (its TLS handshake, its headers).
    fn open(&self) -> (u64, Arc<ConnState>) {
        let id = self.next_id.fetch_add(1, SeqCst);
        let state = Arc::new(ConnState {
            serving: AtomicU32::new(0),
            waiting_since: AtomicU64::new(self.now_ms()),
            close: Notify::new(),
        });
        self.conns
            .lock()
            .expect("tracker lock")
            .insert(id, state.clone());
        (id, state)
    }

    fn closed(&self, id: u64) {
        self.conns.lock().expect("tracker lock").remove(&id);
    }

    /// Close the connection that has waited longest for a request; `false` when every
    /// connection is serving one.
    fn close_longest_waiting(&self) -> bool {
        let mut conns = self.conns.lock().expect("tracker lock");
        let oldest = conns
            .iter()
            .filter(|(_, c)| c.serving.load(SeqCst) == 0)
            .map(|(id, c)| (c.waiting_since.load(SeqCst), *id))
            .min();
        let Some((since, id)) = oldest else {
            return false;
        };
        let conn = conns.remove(&id).expect("listed");
        tracing::debug!(
            "closing a connection that waited {} ms for a request, to make room",
            self.now_ms().saturating_sub(since)
        );
        conn.close.notify_one();
        true
    }
}

/// A response body that tells its connection when it is done (sent whole, or dropped with
/// the connection).
struct Tracked {
    inner: axum::body::Body,
    done: Option<(Tracker, Arc<ConnState>)>,
}

impl Tracked {
    fn finish(&mut self) {
        if let Some((tracker, conn)) = self.done.take() {
            conn.request_done(tracker.now_ms());
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish();
    }
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            this.finish();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Answer a connection past the cap (429, wait a second) and close it.
async fn refuse(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"the server is at its connection limit; retry shortly"}]}"#;
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let linger = async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = 64 << 10;
        while left > 0 {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => left -= n.min(left),
            }
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}

/// Accept connections for ever, each served by `app` in its own task.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    limits: ConnLimits,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let tracker = Tracker::default();
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS_AT_ONCE));
    let mut backoff = Duration::from_millis(5);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => {
                backoff = Duration::from_millis(5);
                c
            }
            Err(e) => {
                // EMFILE and friends: wait for descriptors to free up instead of spinning.
                tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Some(slot) = take_slot(&slots, &tracker).await else {
            tracing::warn!(
                "refusing a connection from {peer}: {} connections are open (the limit), each serving a request",
                limits.max_connections
            );
            match (&tls, refusals.clone().try_acquire_owned()) {
                (None, Ok(permit)) => {
                    tokio::spawn(async move {
                        refuse(tcp).await;
                        drop(permit);
                    });
                }
                _ => drop(tcp),
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls, tracker) = (app.clone(), tls.clone(), tracker.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let (id, conn) = tracker.open();
            let served =
                serve_accepted(tcp, peer, tls, app, limits, (tracker.clone(), conn.clone()));
            tokio::select! {
                () = served => {}
                () = conn.close.notified() => tracing::debug!("closed {peer} to make room for a newcomer"),
            }
            tracker.closed(id);
        });
    }
}

/// A connection slot: a free one, or the longest waiter's once its task has let it go.
async fn take_slot(
    slots: &Arc<tokio::sync::Semaphore>,
    tracker: &Tracker,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match slots.clone().try_acquire_owned() {
        Ok(slot) => Some(slot),
        Err(_) if tracker.close_longest_waiting() => {
            tokio::time::timeout(MAKE_ROOM_WAIT, slots.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        }
        Err(_) => None,
    }
}

/// One accepted connection served, over TLS when the server has it (the handshake bounded).
async fn serve_accepted(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    limits: ConnLimits,
    tracked: (Tracker, Arc<ConnState>),
) {
    let io = Idle::new(tcp, limits.idle_timeout);
    let Some(acceptor) = tls else {
        return serve_one(io, app, limits, peer, tracked).await;
    };
    match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => serve_one(stream, app, limits, peer, tracked).await,
        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
    }
}

async fn serve_one<S>(
    io: S,
    app: axum::Router,
    limits: ConnLimits,
    peer: std::net::SocketAddr,
    (tracker, conn): (Tracker, Arc<ConnState>),
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt as _;
    // Each request marks the connection as serving until its answer's body is done.
    let tracked = tower::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (app, tracker, conn) = (app.clone(), tracker.clone(), conn.clone());
        async move {
            conn.request_started();
            let response = app.oneshot(req.map(axum::body::Body::new)).await?;
            Ok::<_, std::convert::Infallible>(response.map(|inner| {
                axum::body::Body::new(Tracked {
                    inner,
                    done: Some((tracker, conn)),
                })
            }))
        }
    });
    let service = hyper_util::service::TowerToHyperService::new(tracked);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!("connection from {peer} ended: {e}");
    }
}

/// A stream that fails with `TimedOut` once no byte has moved in either direction for
/// `timeout` while someone waits on it.
struct Idle<S> {
    inner: S,
    timeout: Duration,
    last_progress: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Idle<S> {
    fn new(inner: S, timeout: Duration) -> Idle<S> {
        Idle {
            inner,
            timeout,
            last_progress: Instant::now(),
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Note progress of a write, or wait on the idle deadline if it is not ready.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match r {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.check(cx).map(Err),
        }
    }

    /// Called when the inner stream is not ready: time out, or arrange to be woken then.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let deadline = tokio::time::Instant::from_std(self.last_progress + self.timeout);
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no byte moved for the idle timeout",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_waiter_is_closed_and_a_connection_serving_a_request_never_is() {
        let t = Tracker::default();
        let (a, conn_a) = t.open();
        std::thread::sleep(Duration::from_millis(5));
        let (b, _conn_b) = t.open();
        let (_, conn_c) = t.open();
        let listed = |id| t.conns.lock().unwrap().contains_key(&id);
        conn_a.request_started(); // a serves a request: not a candidate however old
        assert!(t.close_longest_waiting());
        assert!(!listed(b), "b waited longest");
        conn_c.request_started();
        assert!(
            !t.close_longest_waiting(),
            "every connection left serves a request"
        );
        conn_a.request_done(t.now_ms());
        assert!(t.close_longest_waiting());
        assert!(!listed(a));
    }
}
