//! A loopback TCP proxy for fault injection.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long `restore` keeps trying to bind the proxy's port again.
const REBIND_TIMEOUT: Duration = Duration::from_secs(3);
const REBIND_PAUSE: Duration = Duration::from_millis(20);
/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// accept loop never spins.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
const BUF_SIZE: usize = 16 * 1024;

/// What a [`Proxy`] does with traffic.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use etcdutil::testing::{Proxy, ProxyState};
/// # let target: std::net::SocketAddr = "127.0.0.1:2379".parse().unwrap();
/// let proxy = Proxy::start(target).await?;
/// assert_eq!(proxy.state(), ProxyState::Forwarding);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyState {
    /// Accepting connections and forwarding bytes both ways.
    Forwarding,
    /// Not listening (connects are refused); every connection was closed.
    Cut,
    /// Accepting connections but forwarding nothing, either way: like a
    /// network partition that drops packets. Nothing is lost: what was
    /// sent is delivered after [`Proxy::restore`].
    Blackhole,
}

/// State shared by the proxy handle and its tasks.
struct Shared {
    target: SocketAddr,
    state: watch::Sender<ProxyState>,
    /// Open proxied connections; a watch so tests can wait for a count.
    open: watch::Sender<usize>,
    accept: Mutex<Option<JoinHandle<()>>>,
    /// While cut: a bound, non-listening socket holding the port, so that
    /// connects are refused and no other socket takes the port meanwhile.
    reservation: Mutex<Option<TcpSocket>>,
    conns: Mutex<HashMap<u64, JoinHandle<()>>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts one open connection while alive and forgets its task when the
/// connection ends (including when the task is aborted).
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        lock(&self.shared.conns).remove(&self.id);
        self.shared.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A TCP proxy on a free loopback port, forwarding to `target`, whose
/// traffic a test can [`cut`](Self::cut), [`blackhole`](Self::blackhole) and
/// [`restore`](Self::restore).
///
/// Point the code under test at [`endpoint`](Self::endpoint) instead of
/// etcd's. The proxy works at the TCP level, so it forwards TLS as well:
/// use `format!("https://{}", proxy.addr())` for a TLS member (its
/// certificate is valid for `127.0.0.1`).
///
/// Each connection pair is served by one task; half-closes are forwarded.
/// The proxy connects to the target when it accepts a client (or, when
/// blackholed, once restored); if the target refuses, it closes the
/// client's connection.
/// Dropping the proxy aborts every task, closing all connections. Needs a
/// Tokio runtime.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use etcdutil::testing::{Etcd, Proxy};
///
/// let etcd = Etcd::start().await?;
/// let proxy = Proxy::start(etcd.client_addr()).await?;
/// let mut config = etcd.config();
/// config.endpoints = vec![proxy.endpoint()];
/// // ... connect the code under test with `config` ...
/// proxy.blackhole().await?; // etcd goes silent
/// proxy.restore().await?;
/// proxy.cut().await; // connections drop, connects are refused
/// proxy.restore().await?;
/// # Ok(()) }
/// ```
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Serializes state changes (`cut`, `blackhole`, `restore`).
    control: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("state", &self.state())
            .field("connections", &self.connection_count())
            .finish()
    }
}

/// Holds `addr` without listening: connects to it are refused, and other
/// sockets cannot bind it (not even with `SO_REUSEADDR`, which the other
/// harnesses' port probes and most listeners use). Best effort: `None` if
/// the port cannot be held.
fn reserve(addr: SocketAddr) -> Option<TcpSocket> {
    // Without SO_REUSEADDR the port is exclusively ours...
    let socket = TcpSocket::new_v4().ok()?;
    if socket.bind(addr).is_ok() {
        return Some(socket);
    }
    // ... but that fails while closed connections linger in TIME_WAIT: bind
    // with it, then drop it so that later binds conflict with ours.
    let socket = TcpSocket::new_v4().ok()?;
    socket.set_reuseaddr(true).ok()?;
    socket.bind(addr).ok()?;
    socket.set_reuseaddr(false).ok()?;
    Some(socket)
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Lets `restore` bind the same port again while closed connections
    // linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Proxy {
    /// Starts a proxy to `target` on `127.0.0.1:<free port>`, forwarding.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::start().await?;
    /// let proxy = etcdutil::testing::Proxy::start(etcd.client_addr()).await?;
    /// assert!(proxy.endpoint().starts_with("http://127.0.0.1:"));
    /// # Ok(()) }
    /// ```
    pub async fn start(target: SocketAddr) -> io::Result<Proxy> {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            state: watch::Sender::new(ProxyState::Forwarding),
            open: watch::Sender::new(0),
            accept: Mutex::new(None),
            reservation: Mutex::new(None),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        *lock(&shared.accept) = Some(tokio::spawn(accept_loop(listener, shared.clone())));
        Ok(Proxy {
            addr,
            shared,
            control: tokio::sync::Mutex::new(()),
        })
    }

    /// `http://127.0.0.1:PORT`, the URL to give the code under test.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// # let proxy = etcdutil::testing::Proxy::start("127.0.0.1:2379".parse().unwrap()).await?;
    /// assert_eq!(proxy.endpoint(), format!("http://{}", proxy.addr()));
    /// # Ok(()) }
    /// ```
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the proxy listens on; it stays the same across
    /// [`cut`](Self::cut) and [`restore`](Self::restore).
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// # let proxy = etcdutil::testing::Proxy::start("127.0.0.1:2379".parse().unwrap()).await?;
    /// let stream = tokio::net::TcpStream::connect(proxy.addr()).await?;
    /// # Ok(()) }
    /// ```
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::start().await?;
    /// let proxy = etcdutil::testing::Proxy::start(etcd.client_addr()).await?;
    /// assert_eq!(proxy.target(), etcd.client_addr());
    /// # Ok(()) }
    /// ```
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// The current state.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use etcdutil::testing::ProxyState;
    /// # let proxy = etcdutil::testing::Proxy::start("127.0.0.1:2379".parse().unwrap()).await?;
    /// proxy.cut().await;
    /// assert_eq!(proxy.state(), ProxyState::Cut);
    /// # Ok(()) }
    /// ```
    pub fn state(&self) -> ProxyState {
        *self.shared.state.borrow()
    }

    /// How many client connections the proxy holds open right now
    /// (accepted and not yet closed), in any state.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// # let proxy = etcdutil::testing::Proxy::start("127.0.0.1:2379".parse().unwrap()).await?;
    /// // e.g. after the client under test connected: it uses one connection.
    /// assert_eq!(proxy.connection_count(), 1);
    /// # Ok(()) }
    /// ```
    pub fn connection_count(&self) -> usize {
        *self.shared.open.borrow()
    }

    /// Waits until exactly `n` connections are open, for at most `timeout`;
    /// fails with [`TimedOut`](io::ErrorKind::TimedOut) otherwise.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use std::time::Duration;
    /// # let proxy = etcdutil::testing::Proxy::start("127.0.0.1:2379".parse().unwrap()).await?;
    /// let _conn = tokio::net::TcpStream::connect(proxy.addr()).await?;
    /// proxy.wait_for_connections(1, Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_connections(&self, n: usize, timeout: Duration) -> io::Result<()> {
        let mut rx = self.shared.open.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|&open| open == n)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(io::Error::other("proxy shut down")),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "proxy {}: {} connections open after {timeout:?}, expected {n}",
                    self.addr,
                    self.connection_count()
                ),
            )),
        }
    }

    /// Cuts the link: stops listening (new connects get "connection
    /// refused") and closes every open connection, before returning.
    ///
    /// The port stays reserved for [`restore`](Self::restore) meanwhile: a
    /// bound socket that does not listen holds it, so no other process's
    /// free-port probe or listener takes it (on Linux; best effort
    /// elsewhere).
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// # let proxy = etcdutil::testing::Proxy::start("127.0.0.1:2379".parse().unwrap()).await?;
    /// proxy.cut().await;
    /// assert!(tokio::net::TcpStream::connect(proxy.addr()).await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn cut(&self) {
        let _control = self.control.lock().await;
        self.shared.state.send_replace(ProxyState::Cut);
        let accept = lock(&self.shared.accept).take();
        if let Some(task) = accept {
            task.abort();
            // Resolves once the task is dropped, and with it the listener.
            let _ = task.await;
            *lock(&self.shared.reservation) = reserve(self.addr);
        }
        // No new connection can be registered now that accepting stopped.
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for task in conns.values() {
            task.abort();
        }
        for (_, task) in conns {
            let _ = task.await;
        }
    }

    /// Blackholes the link: connections stay open and new ones are
    /// accepted, but no byte (nor close) is forwarded either way until
    /// [`restore`](Self::restore). A byte already in flight when this is
    /// called may still get through.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// # let proxy = etcdutil::testing::Proxy::start("127.0.0.1:2379".parse().unwrap()).await?;
    /// proxy.blackhole().await?;
    /// // ... requests through the proxy now hang ...
    /// proxy.restore().await?; // ... and complete
    /// # Ok(()) }
    /// ```
    pub async fn blackhole(&self) -> io::Result<()> {
        self.set_open_state(ProxyState::Blackhole).await
    }

    /// Back to forwarding: listens again after [`cut`](Self::cut) (on the
    /// same port, retrying the bind for up to 3 s), and blackholed
    /// connections resume.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// # let proxy = etcdutil::testing::Proxy::start("127.0.0.1:2379".parse().unwrap()).await?;
    /// proxy.cut().await;
    /// proxy.restore().await?;
    /// let stream = tokio::net::TcpStream::connect(proxy.addr()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn restore(&self) -> io::Result<()> {
        self.set_open_state(ProxyState::Forwarding).await
    }

    async fn set_open_state(&self, state: ProxyState) -> io::Result<()> {
        let _control = self.control.lock().await;
        if lock(&self.shared.accept).is_none() {
            drop(lock(&self.shared.reservation).take());
            let listener = self.rebind().await?;
            // Set the state first so the first accepted connection sees it.
            self.shared.state.send_replace(state);
            *lock(&self.shared.accept) =
                Some(tokio::spawn(accept_loop(listener, self.shared.clone())));
        } else {
            self.shared.state.send_replace(state);
        }
        Ok(())
    }

    async fn rebind(&self) -> io::Result<TcpListener> {
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match bind(self.addr) {
                Ok(l) => return Ok(l),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    tokio::time::sleep(REBIND_PAUSE).await;
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("proxy: binding {} again: {e}", self.addr),
                    ));
                }
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.shared.accept).take() {
            task.abort();
        }
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for task in conns.into_values() {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                tracing::debug!(error = %e, "etcdutil::testing::Proxy: accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        shared.open.send_modify(|n| *n += 1);
        let guard = ConnGuard {
            shared: shared.clone(),
            id,
        };
        // Hold the map while spawning so the task cannot unregister itself
        // before it is registered.
        let mut conns = lock(&shared.conns);
        let task = tokio::spawn(serve(client, guard));
        conns.insert(id, task);
    }
}

/// Waits until the proxy forwards; `false` if the proxy is gone.
async fn forwarding(state: &mut watch::Receiver<ProxyState>) -> bool {
    state
        .wait_for(|s| *s == ProxyState::Forwarding)
        .await
        .is_ok()
}

/// Serves one client connection: connects to the target once forwarding,
/// then copies both ways until both sides closed (or either failed).
async fn serve(client: TcpStream, guard: ConnGuard) {
    let mut state = guard.shared.state.subscribe();
    // A blackhole accepts but does not reach the target yet.
    if !forwarding(&mut state).await {
        return;
    }
    let upstream = match TcpStream::connect(guard.shared.target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(target_addr = %guard.shared.target, error = %e, "etcdutil::testing::Proxy: cannot reach target");
            return; // dropping `client` closes it
        }
    };
    let _ = upstream.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (upstream_r, upstream_w) = upstream.into_split();
    let up = pipe(client_r, upstream_w, state.clone());
    let down = pipe(upstream_r, client_w, state);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                Err(_) => break,
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => down_done = true,
                Err(_) => break,
            },
        }
    }
    drop(guard);
}

/// Copies `from` to `to` while the proxy forwards; on EOF, half-closes `to`.
async fn pipe(
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    mut state: watch::Receiver<ProxyState>,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = read(&from, &mut buf).await?;
        // Hold what was read (at most one buffer; then the kernel buffers
        // fill and the sender blocks) until forwarding.
        if !forwarding(&mut state).await {
            return Err(io::Error::other("proxy shut down"));
        }
        if n == 0 {
            // Dropping the write half shuts it down: the peer reads EOF.
            drop(to);
            return Ok(());
        }
        write_all(&to, &buf[..n]).await?;
    }
}

/// Reads some bytes (0 at EOF), waiting for readiness.
async fn read(from: &OwnedReadHalf, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        from.readable().await?;
        match from.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Writes all of `buf`, waiting for readiness.
async fn write_all(to: &OwnedWriteHalf, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        to.writable().await?;
        match to.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
