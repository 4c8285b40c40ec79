//! A WAN emulator for tests and benchmarks: a loopback TCP proxy that caps each connection's
//! bandwidth and the link's as a whole (all connections together: an origin's egress, a
//! node's NIC), adds latency to every request, and injects faults (resets, truncated
//! bodies, stalls, 503 answers, a registry throttling with 429 for a while, registries that
//! ignore `Range`).
//!
//! The kernels here have no traffic-control qdiscs (`tc` refuses netem/tbf), so this proxy is
//! how hoist is measured against a cloud-like link. It counts what it forwards, so tests can
//! check how many bytes a resumed pull really fetched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A fault injected into the first `Link::faulty_connections` connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Reset (RST) the connection after this many bytes towards the client.
    ResetAfter(u64),
    /// Close the connection cleanly after this many bytes (a truncated body).
    TruncateAfter(u64),
    /// Stop forwarding for `Duration` after this many bytes.
    StallAfter(u64, Duration),
    /// Answer `503 Service Unavailable` without contacting the upstream.
    Unavailable,
    /// Answer manifest and blob downloads with `429 Too Many Requests` and
    /// `Retry-After: secs` (then close the connection, without contacting the upstream) for
    /// this long after the first one was asked for: an origin throttling a rush of nodes.
    /// Other requests, and everything after the window, pass.
    Throttle(Duration, u64),
}

/// The link's shape.
#[derive(Debug, Clone)]
pub struct Link {
    /// Bytes per second per connection and direction; 0 for no cap.
    pub rate: u64,
    /// Bytes per second towards the clients for all connections together; 0 for no cap.
    pub link_rate: u64,
    /// Added before each request is forwarded.
    pub latency: Duration,
    pub fault: Fault,
    /// How many connections get the fault (`usize::MAX`: all of them).
    pub faulty_connections: usize,
    /// Hide `Range` headers from the upstream, as a registry that ignores them would.
    pub strip_range: bool,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            rate: 0,
            link_rate: 0,
            latency: Duration::ZERO,
            fault: Fault::None,
            faulty_connections: 0,
            strip_range: false,
        }
    }
}

/// What the proxy has seen.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    /// Bytes forwarded from the upstream to clients.
    pub bytes_down: AtomicU64,
    /// Requests that carried `Authorization: Basic` (a password) to the upstream.
    pub basic_auth_requests: AtomicUsize,
    /// Requests answered 429 by a `Throttle` fault.
    pub throttled: AtomicUsize,
    /// When the first download was asked for (a `Throttle` window starts there).
    first_blob_request: std::sync::OnceLock<Instant>,
}

impl Stats {
    /// Should this request be answered 429 under `fault`?
    fn throttles(&self, fault: Fault, request: &[u8]) -> Option<u64> {
        let Fault::Throttle(window, retry_after) = fault else {
            return None;
        };
        let content = contains(request, b"/blobs/sha256:") || contains(request, b"/manifests/");
        if !request.starts_with(b"GET ") || !content {
            return None;
        }
        let first = *self.first_blob_request.get_or_init(Instant::now);
        (first.elapsed() < window).then(|| {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            retry_after
        })
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The link's shared cap: every chunk sent on any connection books its transmission time on
/// one clock, first come first served, so N busy connections get 1/N of the link each (a
/// FIFO queue, as a NIC's is). A sender wakes up to a timer tick (1 ms) late; the booking
/// may start up to `SLACK` in the past so that lateness is not lost, which is all the credit
/// an idle link earns.
struct LinkPacer {
    rate: u64,
    next_free: std::sync::Mutex<Instant>,
}

impl LinkPacer {
    async fn send(&self, bytes: usize) {
        if self.rate == 0 {
            return;
        }
        const SLACK: Duration = Duration::from_millis(10);
        let cost = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        let done = {
            let mut next = self.next_free.lock().expect("pacer lock");
            let now = Instant::now();
            let start = (*next).max(now.checked_sub(SLACK).unwrap_or(now));
            *next = start + cost;
            *next
        };
        tokio::time::sleep_until(done.into()).await;
    }
}

/// A running proxy; it stops when dropped.
pub struct Proxy {
    /// Where the first route listens.
    pub addr: SocketAddr,
    /// Where each route listens, in the order given.
    pub addrs: Vec<SocketAddr>,
    pub stats: Arc<Stats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

impl Proxy {
    /// Listen on `listen` (use port 0 for any) and forward to `upstream`.
    pub async fn start(listen: &str, upstream: SocketAddr, link: Link) -> std::io::Result<Proxy> {
        Self::start_routes(&[(listen.to_string(), upstream)], link).await
    }

    /// One link with several routes (listen address → upstream), sharing its cap, its
    /// faults and its counters: a node's NIC, which carries its traffic to every host.
    pub async fn start_routes(
        routes: &[(String, SocketAddr)],
        link: Link,
    ) -> std::io::Result<Proxy> {
        let stats = Arc::new(Stats::default());
        let pacer = Arc::new(LinkPacer {
            rate: link.link_rate,
            next_free: std::sync::Mutex::new(Instant::now()),
        });
        let link = Arc::new(link);
        let (mut addrs, mut tasks) = (Vec::new(), Vec::new());
        for (listen, upstream) in routes {
            let listener = TcpListener::bind(listen).await?;
            addrs.push(listener.local_addr()?);
            let (link, stats, pacer, upstream) =
                (link.clone(), stats.clone(), pacer.clone(), *upstream);
            tasks.push(tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let n = stats.connections.fetch_add(1, Ordering::Relaxed);
                    let fault = if n < link.faulty_connections {
                        link.fault
                    } else {
                        Fault::None
                    };
                    let (link, stats, pacer) = (link.clone(), stats.clone(), pacer.clone());
                    tokio::spawn(async move {
                        let _ = serve(client, upstream, &link, fault, &stats, &pacer).await;
                    });
                }
            }));
        }
        Ok(Proxy {
            addr: addrs[0],
            addrs,
            stats,
            tasks,
        })
    }

    pub fn bytes_down(&self) -> u64 {
        self.stats.bytes_down.load(Ordering::Relaxed)
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    link: &Link,
    fault: Fault,
    stats: &Stats,
    pacer: &LinkPacer,
) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    if fault == Fault::Unavailable {
        let mut buf = [0u8; 4096];
        let _ = client.read(&mut buf).await?;
        client
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return client.shutdown().await;
    }
    if matches!(fault, Fault::ResetAfter(_)) {
        #[allow(deprecated)] // linger 0 does not block on close: it resets.
        client.set_linger(Some(Duration::ZERO))?;
    }
    let server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let throttled = tokio::select! {
        r = forward_up(&mut client_rx, &mut server_tx, link, fault, stats) => r?,
        r = forward_down(&mut server_rx, &mut client_tx, link, fault, stats, pacer) => r.map(|()| None)?,
    };
    if let Some(retry_after) = throttled {
        let answer = format!("HTTP/1.1 429 Too Many Requests\r\nRetry-After: {retry_after}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        client_tx.write_all(answer.as_bytes()).await?;
        client_tx.shutdown().await?;
    }
    Ok(())
}

/// Requests towards the server, after the link's latency. Ends with `Some(seconds)` when a
/// request is to be answered 429 here.
async fn forward_up(
    client_rx: &mut tokio::net::tcp::OwnedReadHalf,
    server_tx: &mut tokio::net::tcp::OwnedWriteHalf,
    link: &Link,
    fault: Fault,
    stats: &Stats,
) -> std::io::Result<Option<u64>> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = client_rx.read(&mut buf).await?;
        if n == 0 {
            return server_tx.shutdown().await.map(|()| None);
        }
        // Clients wait for each answer before the next request, so the connection is idle
        // towards the client when a new request arrives: the 429 can go out now.
        if let Some(retry_after) = stats.throttles(fault, &buf[..n]) {
            return Ok(Some(retry_after));
        }
        if !link.latency.is_zero() {
            tokio::time::sleep(link.latency).await;
        }
        if link.strip_range {
            hide_range(&mut buf[..n]);
        }
        stats
            .basic_auth_requests
            .fetch_add(count_basic_auth(&buf[..n]), Ordering::Relaxed);
        server_tx.write_all(&buf[..n]).await?;
    }
}

/// Answers towards the client, paced to the link's rates, with the fault applied.
async fn forward_down(
    server_rx: &mut tokio::net::tcp::OwnedReadHalf,
    client_tx: &mut tokio::net::tcp::OwnedWriteHalf,
    link: &Link,
    fault: Fault,
    stats: &Stats,
    pacer: &LinkPacer,
) -> std::io::Result<()> {
    // 64 KiB at a time: 1.3 ms at 50 MB/s, fine enough for pacing, and the hops behind the
    // link do not pay their per-chunk costs on network-packet-sized pieces.
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    let started = Instant::now();
    let mut stalled = false;
    loop {
        let n = server_rx.read(&mut buf).await?;
        if n == 0 {
            return client_tx.shutdown().await;
        }
        let mut chunk = &buf[..n];
        let limit = match fault {
            Fault::ResetAfter(at) | Fault::TruncateAfter(at) => Some(at),
            Fault::StallAfter(at, _) if !stalled => Some(at),
            _ => None,
        };
        let cut = limit.filter(|at| sent + chunk.len() as u64 >= *at);
        if let Some(at) = cut {
            chunk = &chunk[..(at - sent) as usize];
        }
        pace(link.rate, sent + chunk.len() as u64, started).await;
        pacer.send(chunk.len()).await;
        client_tx.write_all(chunk).await?;
        sent += chunk.len() as u64;
        stats
            .bytes_down
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        match (cut, fault) {
            // Dropping the socket with linger 0 (set on it) sends RST.
            (Some(_), Fault::ResetAfter(_)) => return Err(std::io::Error::other("reset")),
            (Some(_), Fault::TruncateAfter(_)) => return client_tx.shutdown().await,
            (Some(_), Fault::StallAfter(_, pause)) => {
                stalled = true;
                tokio::time::sleep(pause).await;
                let rest = &buf[chunk.len()..n];
                client_tx.write_all(rest).await?;
                sent += rest.len() as u64;
                stats
                    .bytes_down
                    .fetch_add(rest.len() as u64, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Sleep until `total` bytes are within the rate since `started`.
async fn pace(rate: u64, total: u64, started: Instant) {
    if rate == 0 {
        return;
    }
    let due = Duration::from_secs_f64(total as f64 / rate as f64);
    let elapsed = started.elapsed();
    if due > elapsed {
        tokio::time::sleep(due - elapsed).await;
    }
}

/// How many `Authorization: Basic` headers a chunk of requests holds.
fn count_basic_auth(buf: &[u8]) -> usize {
    const NEEDLE: &[u8] = b"authorization: basic ";
    buf.windows(NEEDLE.len())
        .filter(|w| w.eq_ignore_ascii_case(NEEDLE))
        .count()
}

/// Rename `Range:` request headers to a header of the same length that servers ignore.
fn hide_range(buf: &mut [u8]) {
    const NEEDLE: &[u8] = b"\r\nrange:";
    let mut i = 0;
    while i + NEEDLE.len() <= buf.len() {
        if buf[i..i + NEEDLE.len()].eq_ignore_ascii_case(NEEDLE) {
            buf[i + 2..i + NEEDLE.len()].copy_from_slice(b"x-nop:");
            i += NEEDLE.len();
        } else {
            i += 1;
        }
    }
}

/// Parse `reset:N`, `truncate:N`, `stall:N:SECS`, `503`, `throttle:SECS:RETRY_AFTER` (N in
/// bytes).
pub fn parse_fault(s: &str) -> Result<Fault, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let num = |i: usize| {
        parts
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("bad fault {s:?}"))
    };
    Ok(match parts[0] {
        "none" => Fault::None,
        "reset" => Fault::ResetAfter(num(1)?),
        "truncate" => Fault::TruncateAfter(num(1)?),
        "stall" => Fault::StallAfter(num(1)?, Duration::from_secs(num(2)?)),
        "503" => Fault::Unavailable,
        "throttle" => Fault::Throttle(Duration::from_secs(num(1)?), num(2)?),
        _ => {
            return Err(format!(
                "unknown fault {s:?}: use reset:N, truncate:N, stall:N:SECS, 503 or throttle:SECS:RETRY_AFTER"
            ))
        }
    })
}

#[test]
fn hides_range_headers_case_insensitively() {
    let mut req = b"GET / HTTP/1.1\r\nRange: bytes=0-1\r\nrange: x\r\n\r\n".to_vec();
    hide_range(&mut req);
    assert_eq!(
        &req[..],
        &b"GET / HTTP/1.1\r\nx-nop: bytes=0-1\r\nx-nop: x\r\n\r\n"[..]
    );
}
