//! Connections: their TLS handshakes run off the accept loop, and no client can hold one by
//! sending slowly. A request's headers must be in within `limits.header_timeout_secs` of the
//! connection opening or of the previous response (the request layer says when a request is
//! being answered: [`ConnectionState`]); a partial request is then answered 408, a silent or
//! idle keep-alive connection closed. Request bodies are held to a minimum data rate by the
//! request layer (`throttle::BodyRate`). A response the client stops reading is cut after
//! `limits.idle_connection_secs`. No single byte resets any of these clocks.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// How long a connection may take to send a request's headers and to read a response, and
/// how many connections one address may hold.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// `limits.header_timeout_secs`.
    pub header_timeout: Duration,
    /// `limits.idle_connection_secs`: a response write that makes no progress this long.
    pub write_stall: Duration,
    per_address: ConnectionsPerAddress,
}

impl ConnectionLimits {
    /// The connection limits of `[limits]`.
    pub fn of(limits: &crate::config::Limits) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(u64::from(limits.header_timeout_secs)),
            write_stall: Duration::from_secs(u64::from(limits.idle_connection_secs)),
            per_address: ConnectionsPerAddress::new(limits.max_connections_per_address),
        }
    }

    /// These limits with `proxies` (`trusted_proxies`) exempt from the per-address cap: every
    /// client behind a proxy comes from its address.
    pub fn exempting(mut self, proxies: Vec<crate::proxy::AddressRange>) -> ConnectionLimits {
        self.per_address.exempt = proxies;
        self
    }
}

/// The same time for both limits, no cap per address (tests and in-process servers).
impl From<Duration> for ConnectionLimits {
    fn from(both: Duration) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: both,
            write_stall: both,
            per_address: ConnectionsPerAddress::new(u32::MAX),
        }
    }
}

/// Open connections per peer address (IPv6: its /64), at most `limits.max_connections_per_address`;
/// one more is closed as soon as it is accepted.
#[derive(Debug, Clone)]
struct ConnectionsPerAddress {
    max: u32,
    exempt: Vec<crate::proxy::AddressRange>,
    open: Arc<std::sync::Mutex<std::collections::HashMap<crate::throttle::AddressKey, u32>>>,
}

/// One open connection counted against its peer's address until dropped.
#[derive(Debug)]
struct AddressSlot {
    open: Arc<std::sync::Mutex<std::collections::HashMap<crate::throttle::AddressKey, u32>>>,
    key: crate::throttle::AddressKey,
}

fn lock_open<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl ConnectionsPerAddress {
    fn new(max: u32) -> ConnectionsPerAddress {
        ConnectionsPerAddress {
            max,
            exempt: Vec::new(),
            open: Arc::default(),
        }
    }

    /// A slot for a connection from `peer`; `None` when its address holds as many as it may.
    /// A trusted proxy takes no slot.
    fn admit(&self, peer: std::net::IpAddr) -> Option<Option<AddressSlot>> {
        if self.exempt.iter().any(|range| range.contains(peer)) {
            return Some(None);
        }
        let key = crate::throttle::AddressKey::of(Some(peer));
        let mut open = lock_open(&self.open);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Some(AddressSlot {
            open: Arc::clone(&self.open),
            key,
        }))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = lock_open(&self.open);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What the request layer tells a connection: how many of its requests are being answered,
/// and since when it has been waiting for the next one's headers.
#[derive(Debug)]
pub struct ConnectionState {
    opened: Instant,
    open_requests: AtomicU32,
    /// Milliseconds after `opened` when the connection last began waiting for a request.
    awaiting_since_ms: AtomicU64,
}

impl ConnectionState {
    fn new() -> ConnectionState {
        ConnectionState {
            opened: Instant::now(),
            open_requests: AtomicU32::new(0),
            awaiting_since_ms: AtomicU64::new(0),
        }
    }

    /// A request's headers are in: its connection's header clock stops until
    /// [`ConnectionState::request_finished`].
    pub fn request_started(&self) {
        self.open_requests.fetch_add(1, Ordering::SeqCst);
    }

    /// A response is sent (or abandoned): the header clock for the next request starts.
    pub fn request_finished(&self) {
        let since = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.awaiting_since_ms.store(since, Ordering::SeqCst);
        self.open_requests.fetch_sub(1, Ordering::SeqCst);
    }

    /// When the next request's headers must be in; `None` while a request is answered.
    fn header_deadline(&self, timeout: Duration) -> Option<(u64, Instant)> {
        if self.open_requests.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = self.awaiting_since_ms.load(Ordering::SeqCst);
        Some((since, self.opened + Duration::from_millis(since) + timeout))
    }
}

/// A request that stays open until dropped (the request layer moves it into the response
/// body, so the header clock restarts only once the response is sent).
#[derive(Debug)]
pub struct OpenRequest(Arc<ConnectionState>);

impl OpenRequest {
    /// Marks a request on `state` open.
    pub fn start(state: Arc<ConnectionState>) -> OpenRequest {
        state.request_started();
        OpenRequest(state)
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The answer to a request whose headers did not come in time; the connection closes after
/// it.
const HEADER_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 85\r\n\r\n\
{\"error\":\"the request headers took too long to arrive (limits.header_timeout_secs)\"}\n";

/// The times of [`ConnectionLimits`] one connection is held to.
#[derive(Debug, Clone, Copy)]
struct ConnectionTimes {
    header_timeout: Duration,
    write_stall: Duration,
}

/// A connection held to [`ConnectionLimits`] (see the module docs), over TCP or TLS.
#[derive(Debug)]
pub struct GuardedStream<S> {
    inner: S,
    limits: ConnectionTimes,
    state: Arc<ConnectionState>,
    /// Bytes read in all, and the count when the current wait for headers began (which
    /// `awaiting_since` identifies): more since then is a partial request.
    bytes_read: u64,
    awaiting: (u64, u64),
    header_clock: Pin<Box<Sleep>>,
    write_clock: Pin<Box<Sleep>>,
    cut: bool,
    /// Its place among its address's connections, given back when it closes.
    _slot: Option<AddressSlot>,
}

impl<S> GuardedStream<S> {
    fn new(inner: S, limits: &ConnectionLimits, slot: Option<AddressSlot>) -> GuardedStream<S> {
        let limits = ConnectionTimes {
            header_timeout: limits.header_timeout,
            write_stall: limits.write_stall,
        };
        GuardedStream {
            _slot: slot,
            inner,
            limits,
            state: Arc::new(ConnectionState::new()),
            bytes_read: 0,
            awaiting: (0, 0),
            header_clock: Box::pin(tokio::time::sleep(limits.header_timeout)),
            write_clock: Box::pin(tokio::time::sleep(limits.write_stall)),
            cut: false,
        }
    }

    /// What the request layer uses to tell this connection about its requests.
    pub fn state(&self) -> Arc<ConnectionState> {
        Arc::clone(&self.state)
    }

    fn closed_error(what: String) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, what)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> GuardedStream<S> {
    /// A read is pending: whether the headers' deadline has passed (then the connection is
    /// cut, a partial request answered 408 first); the task is woken at the deadline.
    fn pending_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((since, deadline)) = self.state.header_deadline(self.limits.header_timeout) else {
            return Poll::Pending;
        };
        if self.awaiting.0 != since {
            self.awaiting = (since, self.bytes_read);
        }
        if self.header_clock.deadline() != deadline {
            self.header_clock.as_mut().reset(deadline);
        }
        if self.header_clock.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.cut = true;
        if self.bytes_read > self.awaiting.1 {
            // Best effort: the answer is a few bytes into an empty socket buffer.
            if let Poll::Ready(Ok(_)) =
                Pin::new(&mut self.inner).poll_write(cx, HEADER_TIMEOUT_RESPONSE)
            {
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
        Poll::Ready(Err(Self::closed_error(format!(
            "no complete request headers within {} s (limits.header_timeout_secs)",
            self.limits.header_timeout.as_secs()
        ))))
    }

    /// A write is pending: an error once it made no progress for the stall time.
    fn pending_write<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.write_clock.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.cut = true;
                Poll::Ready(Err(Self::closed_error(format!(
                    "the client read nothing for {} s (limits.idle_connection_secs)",
                    self.limits.write_stall.as_secs()
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// A write's outcome: progress restarts the stall clock, waiting is bounded by it.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    let next = Instant::now() + self.limits.write_stall;
                    self.write_clock.as_mut().reset(next);
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.pending_write(cx),
        }
    }

    fn refuse_if_cut(&self) -> io::Result<()> {
        if self.cut {
            return Err(Self::closed_error("the connection was cut".into()));
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.refuse_if_cut()?;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let read = buf.filled().len().saturating_sub(before);
                this.bytes_read = this.bytes_read.saturating_add(read as u64);
                Poll::Ready(result)
            }
            Poll::Pending => this.pending_read(cx),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.refuse_if_cut()?;
        let written = Pin::new(&mut this.inner).poll_write(cx, data);
        this.after_write(cx, written)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.refuse_if_cut()?;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.pending_write(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.refuse_if_cut()?;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A plain TCP listener whose connections are [`GuardedStream`]s.
#[derive(Debug)]
pub struct GuardedListener {
    inner: TcpListener,
    limits: ConnectionLimits,
}

impl GuardedListener {
    /// Wraps a bound listener; each accepted connection is held to `limits`. Serve it with
    /// the connection info [`Connection`] (see [`TlsListener::new`]).
    pub fn new(inner: TcpListener, limits: ConnectionLimits) -> GuardedListener {
        GuardedListener { inner, limits }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, address) = axum::serve::Listener::accept(&mut self.inner).await;
            // Beyond its address's connections: closed at once.
            if let Some(slot) = self.limits.per_address.admit(address.ip()) {
                return (GuardedStream::new(stream, &self.limits, slot), address);
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The peer's address, as the connection info every request can read (failed logins are
/// counted per address). The request layer puts it in each request from [`Connection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddress(pub SocketAddr);

/// The connection info `serve` gives every request: the peer, and the connection's state
/// for the request layer to report to.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The TCP peer (a trusted proxy's address behind one).
    pub peer: SocketAddr,
    /// See [`ConnectionState`].
    pub state: Arc<ConnectionState>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GuardedListener>>
    for Connection
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> Self {
        Connection {
            peer: *stream.remote_addr(),
            state: stream.io().state(),
        }
    }
}

/// A TLS listener: TCP connections are accepted here and their handshakes run each in its own
/// task (bounded by the header timeout and in number), so a client that stalls its handshake
/// holds up no one else; finished handshakes are handed to `serve`.
#[derive(Debug)]
pub struct TlsListener {
    handshaken: tokio::sync::mpsc::Receiver<(TlsConnection, SocketAddr)>,
    local: SocketAddr,
}

/// A connection after its TLS handshake, held to [`ConnectionLimits`].
pub type TlsConnection = GuardedStream<tokio_rustls::server::TlsStream<TcpStream>>;

impl TlsListener {
    /// Accepts on `inner` with `config`; at most `max_handshakes` handshakes run at once, each
    /// cut after the header timeout (the clock for the first request's headers starts when
    /// the handshake is done). Serve it with the connection info [`Connection`], so the
    /// request layer stops the header clock while a request is answered.
    pub fn new(
        inner: TcpListener,
        limits: impl Into<ConnectionLimits>,
        config: std::sync::Arc<rustls::ServerConfig>,
        max_handshakes: usize,
    ) -> io::Result<TlsListener> {
        let limits = limits.into();
        let local = inner.local_addr()?;
        let (done, handshaken) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(max_handshakes.max(1)));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = done.closed() => return,
                    accepted = inner.accept() => accepted,
                };
                let (stream, address) = match accepted {
                    Ok(pair) => pair,
                    // Out of file descriptors and the like: wait, as axum's own loop does.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Beyond its address's connections: closed at once.
                let Some(slot) = limits.per_address.admit(address.ip()) else {
                    continue;
                };
                let Ok(permit) = std::sync::Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let done = done.clone();
                let limits = limits.clone();
                tokio::spawn(async move {
                    // A failed handshake (a plain-HTTP client, a refused certificate, a
                    // scanner) is the client's to report: there is nothing to serve.
                    let handshake = acceptor.accept(stream);
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(limits.header_timeout, handshake).await
                    {
                        drop(permit);
                        let _ = done
                            .send((GuardedStream::new(tls, &limits, slot), address))
                            .await;
                    }
                });
            }
        });
        Ok(TlsListener { handshaken, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(pair) => pair,
            // The accepting task is gone (it ends only with this listener): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for Connection
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Connection {
            peer: *stream.remote_addr(),
            state: stream.io().state(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn the_header_timeout_answer_is_well_formed() {
        let text = std::str::from_utf8(HEADER_TIMEOUT_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"]
            .as_str()
            .unwrap()
            .contains("header_timeout_secs"));
    }
}
