//! Connections that go quiet are closed. The request timeout (`api`) starts only once a
//! request's headers are in, and a download's body is sent after its handler returned; a
//! client that sends half a request line, or stops reading a bundle, would otherwise hold its
//! connection, task and buffers forever. Every connection here must move a byte in either
//! direction at least every `limits.idle_connection_secs`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// A TCP listener whose connections close when idle (see the module docs).
#[derive(Debug)]
pub struct IdleTimeoutListener {
    inner: TcpListener,
    idle: Duration,
}

impl IdleTimeoutListener {
    /// Wraps a bound listener; each accepted connection closes after `idle` without traffic.
    pub fn new(inner: TcpListener, idle: Duration) -> IdleTimeoutListener {
        IdleTimeoutListener { inner, idle }
    }
}

impl axum::serve::Listener for IdleTimeoutListener {
    type Io = IdleTimeoutStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, address) = axum::serve::Listener::accept(&mut self.inner).await;
        (IdleTimeoutStream::new(stream, self.idle), address)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The peer's address, as the connection info `serve` gives every request (failed logins
/// are counted per address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddress(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, IdleTimeoutListener>>
    for PeerAddress
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, IdleTimeoutListener>) -> Self {
        PeerAddress(*stream.remote_addr())
    }
}

/// A connection that fails with `TimedOut` once nothing was read or written for its idle
/// time while the server waited on it.
#[derive(Debug)]
pub struct IdleTimeoutStream {
    inner: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl IdleTimeoutStream {
    fn new(inner: TcpStream, idle: Duration) -> IdleTimeoutStream {
        IdleTimeoutStream {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn moved(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// For an operation that is pending: an error once the deadline has passed (the task is
    /// woken then), pending otherwise.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connection idle for {} s (limits.idle_connection_secs)",
                    self.idle.as_secs()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl IdleTimeoutStream {
    /// A write's outcome: progress moves the deadline, waiting is bounded by it.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.pending(cx),
        }
    }
}

impl AsyncRead for IdleTimeoutStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.pending(cx),
        }
    }
}

impl AsyncWrite for IdleTimeoutStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, data);
        this.after_write(cx, written)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.pending(cx),
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
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A TLS listener: TCP connections are accepted here and their handshakes run each in its own
/// task (bounded by the idle timer and in number), so a client that stalls its handshake holds
/// up no one else; finished handshakes are handed to `serve`.
#[derive(Debug)]
pub struct TlsListener {
    handshaken: tokio::sync::mpsc::Receiver<(TlsConnection, SocketAddr)>,
    local: SocketAddr,
}

/// A connection after its TLS handshake, closed when idle like [`IdleTimeoutStream`].
pub type TlsConnection = tokio_rustls::server::TlsStream<IdleTimeoutStream>;

impl TlsListener {
    /// Accepts on `inner` with `config`; at most `max_handshakes` handshakes run at once, each
    /// cut after `idle` (the idle time of the connection, too).
    pub fn new(
        inner: TcpListener,
        idle: Duration,
        config: std::sync::Arc<rustls::ServerConfig>,
        max_handshakes: usize,
    ) -> io::Result<TlsListener> {
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
                let Ok(permit) = std::sync::Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    let stream = IdleTimeoutStream::new(stream, idle);
                    // A failed handshake (a plain-HTTP client, a refused certificate, a
                    // scanner) is the client's to report: there is nothing to serve.
                    if let Ok(Ok(tls)) = tokio::time::timeout(idle, acceptor.accept(stream)).await {
                        drop(permit);
                        let _ = done.send((tls, address)).await;
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
    for PeerAddress
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerAddress(*stream.remote_addr())
    }
}
