//! One etcd member process.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::certs::{TlsDir, TlsFiles};
use super::util::{free_loopback_addrs, private_temp_dir, remove_dir, unique_id};
use crate::{Config, TlsConfig};

/// Environment variable naming the etcd binary to run; `etcd` from `PATH`
/// when unset or empty.
///
/// ```no_run
/// // ETCD_BIN=/opt/etcd-3.5/etcd cargo test
/// let etcd_binary = std::env::var(etcdutil::testing::ETCD_BIN).unwrap_or_else(|_| "etcd".into());
/// ```
pub const ETCD_BIN: &str = "ETCD_BIN";

/// How many lines of etcd's output are kept for diagnostics.
const LOG_LINES: usize = 200;
/// Default time for a member (or a whole cluster) to become ready.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Fresh-port attempts when a port was taken between choosing and binding.
const START_ATTEMPTS: usize = 5;
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll period while waiting for readiness or exit.
const POLL: Duration = Duration::from_millis(20);
/// Pause between attempts to restart on ports that are (still) taken.
const REBIND_PAUSE: Duration = Duration::from_millis(200);

/// What etcd logs once it serves clients. 3.4's default capnslog and 3.5's
/// zap print the first; 3.4 with `--logger=zap` prints only the second (and
/// capnslog also prints the last two, after the first).
const READY_MARKERS: &[&str] = &[
    "ready to serve client requests",
    "serving client traffic",
    "serving insecure client requests",
    "serving client requests on",
];
/// What Go prints when a listener's port is taken.
const ADDR_IN_USE: &str = "address already in use";

/// Options for starting an [`Etcd`] member (or, with
/// [`Cluster::start_with`](super::Cluster::start_with), every member of a
/// cluster). Made by [`Etcd::builder`].
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use etcdutil::testing::Etcd;
///
/// let etcd = Etcd::builder()
///     .tls(true)
///     .client_cert_auth(true)
///     .auth_token_ttl(5)
///     .arg("--max-txn-ops=256")
///     .start()
///     .await?;
/// assert!(etcd.endpoint().starts_with("https://"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.start().await`"]
pub struct EtcdBuilder {
    tls: bool,
    client_cert_auth: bool,
    client_common_name: String,
    auth_token_ttl: Option<u64>,
    unsafe_no_fsync: bool,
    args: Vec<OsString>,
    binary: Option<PathBuf>,
    start_timeout: Duration,
}

impl Default for EtcdBuilder {
    fn default() -> Self {
        EtcdBuilder {
            tls: false,
            client_cert_auth: false,
            client_common_name: "etcdutil-test-client".to_owned(),
            auth_token_ttl: None,
            unsafe_no_fsync: false,
            args: Vec::new(),
            binary: None,
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }
}

impl EtcdBuilder {
    /// Serve clients over TLS (`https://`), with a CA, a server certificate
    /// and a client certificate generated for this member (see
    /// [`TlsFiles`]). Peer traffic stays plaintext.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::builder().tls(true).start().await?;
    /// let tls = etcd.config().tls.expect("TLS settings");
    /// assert_eq!(tls.ca_file.as_ref(), Some(&etcd.tls_files().unwrap().ca_cert));
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Require a client certificate signed by the generated CA
    /// (`--client-cert-auth --trusted-ca-file=...`). Needs
    /// [`tls(true)`](Self::tls): `start` fails with
    /// [`InvalidInput`](io::ErrorKind::InvalidInput) otherwise.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::builder()
    ///     .tls(true)
    ///     .client_cert_auth(true)
    ///     .start()
    ///     .await?;
    /// // `config()` carries the generated client certificate and key.
    /// assert!(etcd.config().tls.unwrap().cert_file.is_some());
    /// # Ok(()) }
    /// ```
    pub fn client_cert_auth(mut self, on: bool) -> Self {
        self.client_cert_auth = on;
        self
    }

    /// Common name of the generated client certificate (default
    /// `etcdutil-test-client`). With `--client-cert-auth` and auth enabled,
    /// etcd takes it as the user name of requests that carry no token.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::builder()
    ///     .tls(true)
    ///     .client_cert_auth(true)
    ///     .client_common_name("root")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn client_common_name(mut self, name: impl Into<String>) -> Self {
        self.client_common_name = name.into();
        self
    }

    /// `--auth-token-ttl=<secs>`: how long etcd's simple auth tokens live.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::builder().auth_token_ttl(2).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn auth_token_ttl(mut self, secs: u64) -> Self {
        self.auth_token_ttl = Some(secs);
        self
    }

    /// `--unsafe-no-fsync`: faster writes, no durability on a crash of the
    /// machine (a killed process loses nothing). Off by default.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::builder().unsafe_no_fsync(true).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn unsafe_no_fsync(mut self, on: bool) -> Self {
        self.unsafe_no_fsync = on;
        self
    }

    /// One more command-line argument for etcd, appended after the
    /// harness's own flags, e.g. `"--max-request-bytes=2097152"`.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::builder()
    ///     .arg("--heartbeat-interval=50")
    ///     .arg("--election-timeout=500")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// The etcd binary to run, instead of `$ETCD_BIN` or `etcd` from `PATH`.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::builder()
    ///     .binary("/opt/etcd-v3.5.17/etcd")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// How long starting (and each [`Etcd::restart`]) may take before it
    /// fails; 20 s by default.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use std::time::Duration;
    /// let etcd = etcdutil::testing::Etcd::builder()
    ///     .start_timeout(Duration::from_secs(60))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Starts the member and waits until it serves clients.
    ///
    /// Picks free loopback ports; if etcd cannot bind them (another process
    /// took one in the meantime), retries with new ports a few times.
    /// Errors carry the tail of etcd's log.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::builder().start().await?;
    /// println!("etcd at {}", etcd.endpoint());
    /// # Ok(()) }
    /// ```
    pub async fn start(self) -> io::Result<Etcd> {
        let mut members = self.start_members(1, |_| "etcd".to_owned()).await?;
        Ok(members.pop().expect("one member"))
    }

    pub(crate) fn validate(&self) -> io::Result<()> {
        if self.client_cert_auth && !self.tls {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "client_cert_auth(true) needs tls(true)",
            ));
        }
        Ok(())
    }

    pub(crate) fn make_tls(&self) -> io::Result<Option<Arc<TlsDir>>> {
        Ok(if self.tls {
            Some(Arc::new(TlsDir::generate(&self.client_common_name)?))
        } else {
            None
        })
    }

    /// Starts `n` members forming one cluster, retrying on fresh ports when
    /// a port was taken. All processes run concurrently; waits for all.
    pub(crate) async fn start_members(
        &self,
        n: usize,
        name: impl Fn(usize) -> String,
    ) -> io::Result<Vec<Etcd>> {
        self.validate()?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a cluster needs at least one member",
            ));
        }
        let tls = self.make_tls()?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let addrs = free_loopback_addrs(2 * n)?;
            let token = format!("etcdutil-{}", unique_id());
            let names: Vec<String> = (0..n).map(&name).collect();
            let initial_cluster = names
                .iter()
                .zip(addrs.chunks(2))
                .map(|(name, a)| format!("{name}=http://{}", a[1]))
                .collect::<Vec<_>>()
                .join(",");
            let mut members = Vec::with_capacity(n);
            for (name, a) in names.into_iter().zip(addrs.chunks(2)) {
                members.push(Etcd::new(
                    self,
                    name,
                    a[0],
                    a[1],
                    &initial_cluster,
                    &token,
                    tls.clone(),
                )?);
            }
            for m in &mut members {
                m.spawn()?;
            }
            let deadline = Instant::now() + self.start_timeout;
            match wait_ready(&mut members, deadline).await {
                Ok(()) => return Ok(members),
                Err(f) if f.port_taken => {
                    tracing::debug!(error = %f.error, "etcdutil::testing: port taken, retrying with new ports");
                    last = Some(f.error);
                    // `members` dropped here: processes killed, dirs removed.
                }
                Err(f) => return Err(f.error),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("etcd did not start")))
    }
}

/// etcd's output, kept for diagnostics, plus what was seen in it.
#[derive(Debug, Default)]
struct Output {
    lines: Mutex<VecDeque<String>>,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, VecDeque<String>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: String) {
        let mut lines = self.lock();
        if lines.len() == LOG_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn tail(&self) -> String {
        let lines = self.lock();
        if lines.is_empty() {
            return "(etcd printed nothing)".to_owned();
        }
        lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What the output readers of one process saw.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    ready: bool,
    port_taken: bool,
    streams_closed: u8,
}

/// A running etcd process.
#[derive(Debug)]
struct Proc {
    child: Child,
    progress: Arc<Mutex<Progress>>,
}

impl Proc {
    fn progress(&self) -> Progress {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads one of etcd's output streams line by line until EOF (so the pipe
/// never fills up and blocks etcd), keeping the lines and noting readiness.
fn drain(stream: impl Read, member: String, output: Arc<Output>, progress: Arc<Mutex<Progress>>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
        tracing::trace!(target: "etcdutil::testing::etcd", member = %member, "{line}");
        let ready = READY_MARKERS.iter().any(|m| line.contains(m));
        let port_taken = line.contains(ADDR_IN_USE);
        output.push(line);
        if ready || port_taken {
            let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
            p.ready |= ready;
            p.port_taken |= port_taken;
        }
    }
    progress
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .streams_closed += 1;
}

/// Why a member did not become ready.
pub(crate) struct StartFailure {
    /// A port was taken: retrying (with new ports, or later) may succeed.
    pub(crate) port_taken: bool,
    pub(crate) error: io::Error,
}

/// Waits until every member logged readiness and accepts TCP on its client
/// port, failing as soon as one exits, or at `deadline`.
pub(crate) async fn wait_ready(
    members: &mut [Etcd],
    deadline: Instant,
) -> Result<(), StartFailure> {
    loop {
        let mut all_ready = true;
        for m in members.iter_mut() {
            let Some(p) = m.proc.as_mut() else {
                return Err(StartFailure {
                    port_taken: false,
                    error: io::Error::other(format!("etcd member {} is not running", m.name)),
                });
            };
            if p.progress().ready {
                continue;
            }
            all_ready = false;
            let exited = p.child.try_wait().map_err(|e| StartFailure {
                port_taken: false,
                error: e,
            })?;
            if let Some(status) = exited {
                return Err(m.exited_early(status).await);
            }
        }
        if all_ready {
            break;
        }
        if Instant::now() >= deadline {
            let pending: Vec<&Etcd> = members
                .iter()
                .filter(|m| m.proc.as_ref().is_some_and(|p| !p.progress().ready))
                .collect();
            let mut msg = format!(
                "etcd did not become ready in time: members not ready: {}",
                pending
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for m in pending {
                msg.push_str(&format!("\n--- log of {} ---\n{}", m.name, m.output.tail()));
            }
            return Err(StartFailure {
                port_taken: false,
                error: io::Error::new(io::ErrorKind::TimedOut, msg),
            });
        }
        tokio::time::sleep(POLL).await;
    }
    for m in members.iter() {
        m.confirm_tcp(deadline)
            .await
            .map_err(|error| StartFailure {
                port_taken: false,
                error,
            })?;
    }
    Ok(())
}

/// One etcd member: a child process with its own loopback ports and data
/// directory.
///
/// Dropping it kills the process (SIGKILL) and removes its data directory.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use etcdutil::testing::Etcd;
///
/// let mut etcd = Etcd::start().await?;
/// let config = etcd.config(); // endpoints = [etcd.endpoint()]
/// // ... run the code under test against `config` ...
/// etcd.kill()?; // crash it
/// etcd.restart().await?; // same ports, same data
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Etcd {
    name: String,
    root: PathBuf,
    data_dir: PathBuf,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    tls: Option<Arc<TlsDir>>,
    binary: OsString,
    args: Vec<OsString>,
    start_timeout: Duration,
    output: Arc<Output>,
    proc: Option<Proc>,
    paused: bool,
}

impl Etcd {
    /// Starts a single plaintext member with default options and waits
    /// until it serves clients. Same as `Etcd::builder().start()`.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::start().await?;
    /// assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
    /// # Ok(()) }
    /// ```
    pub async fn start() -> io::Result<Etcd> {
        Etcd::builder().start().await
    }

    /// Options for a member: TLS, client certificate auth, extra flags.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::builder().tls(true).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> EtcdBuilder {
        EtcdBuilder::default()
    }

    fn new(
        opts: &EtcdBuilder,
        name: String,
        client_addr: SocketAddr,
        peer_addr: SocketAddr,
        initial_cluster: &str,
        token: &str,
        tls: Option<Arc<TlsDir>>,
    ) -> io::Result<Etcd> {
        let root = private_temp_dir("etcdutil-etcd")?;
        let data_dir = root.join("data");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://{client_addr}");
        let peer_url = format!("http://{peer_addr}");

        let mut args: Vec<OsString> = Vec::new();
        let mut flag = |k: &str, v: &OsStr| {
            let mut a = OsString::from(format!("--{k}="));
            a.push(v);
            args.push(a);
        };
        flag("name", name.as_ref());
        flag("data-dir", data_dir.as_os_str());
        flag("listen-client-urls", client_url.as_ref());
        flag("advertise-client-urls", client_url.as_ref());
        flag("listen-peer-urls", peer_url.as_ref());
        flag("initial-advertise-peer-urls", peer_url.as_ref());
        flag("initial-cluster", initial_cluster.as_ref());
        flag("initial-cluster-state", "new".as_ref());
        flag("initial-cluster-token", token.as_ref());
        if let Some(t) = &tls {
            flag("cert-file", t.files.server_cert.as_os_str());
            flag("key-file", t.files.server_key.as_os_str());
            if opts.client_cert_auth {
                flag("trusted-ca-file", t.files.ca_cert.as_os_str());
            }
        }
        if let Some(ttl) = opts.auth_token_ttl {
            flag("auth-token-ttl", ttl.to_string().as_ref());
        }
        if opts.client_cert_auth {
            args.push("--client-cert-auth".into());
        }
        if opts.unsafe_no_fsync {
            args.push("--unsafe-no-fsync".into());
        }
        args.extend(opts.args.iter().cloned());

        let binary = match &opts.binary {
            Some(b) => b.clone().into_os_string(),
            None => std::env::var_os(ETCD_BIN)
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| "etcd".into()),
        };
        Ok(Etcd {
            name,
            root,
            data_dir,
            client_addr,
            peer_addr,
            tls,
            binary,
            args,
            start_timeout: opts.start_timeout,
            output: Arc::default(),
            proc: None,
            paused: false,
        })
    }

    /// Starts the process (which must not be running) without waiting.
    fn spawn(&mut self) -> io::Result<()> {
        debug_assert!(self.proc.is_none());
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // etcd reads ETCD_<FLAG> variables and refuses to start when one
        // shadows a flag; keep the caller's environment out of it.
        for (k, _) in std::env::vars_os() {
            if let Some(k) = k.to_str()
                && k.starts_with("ETCD_")
                && k != "ETCD_UNSUPPORTED_ARCH"
            {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "starting etcd binary {:?}: {e} (set {ETCD_BIN} or put etcd on PATH)",
                    self.binary
                ),
            )
        })?;
        self.output.push(format!(
            "--- etcdutil::testing: started {:?} as pid {} ---",
            self.binary,
            child.id()
        ));
        let progress = Arc::new(Mutex::new(Progress::default()));
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stderr.take().expect("piped stderr")),
            Box::new(child.stdout.take().expect("piped stdout")),
        ];
        for (i, stream) in streams.into_iter().enumerate() {
            let (name, output, progress) =
                (self.name.clone(), self.output.clone(), progress.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("etcd-{}-{}", self.name, ["stderr", "stdout"][i]))
                .spawn(move || drain(stream, name, output, progress));
            if let Err(e) = spawned {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
        self.proc = Some(Proc { child, progress });
        self.paused = false;
        Ok(())
    }

    /// The process exited before it was ready: reap it and explain why.
    async fn exited_early(&mut self, status: ExitStatus) -> StartFailure {
        let proc = self.proc.take().expect("running");
        // Let the readers take in etcd's last words.
        let until = Instant::now() + Duration::from_secs(2);
        while proc.progress().streams_closed < 2 && Instant::now() < until {
            tokio::time::sleep(POLL).await;
        }
        let port_taken = proc.progress().port_taken;
        StartFailure {
            port_taken,
            error: io::Error::other(format!(
                "etcd member {} exited ({status}) before it was ready; last log lines:\n{}",
                self.name,
                self.output.tail()
            )),
        }
    }

    async fn confirm_tcp(&self, deadline: Instant) -> io::Result<()> {
        loop {
            let attempt =
                tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(self.client_addr))
                    .await;
            match attempt {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if Instant::now() < deadline => {
                    tracing::debug!(member = %self.name, error = %e, "etcdutil::testing: client port not accepting yet");
                    tokio::time::sleep(POLL).await;
                }
                Ok(Err(e)) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "etcd member {} logged readiness but {} refuses TCP: {e}; last log lines:\n{}",
                            self.name,
                            self.client_addr,
                            self.output.tail()
                        ),
                    ));
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "etcd member {}: connecting to {} timed out",
                            self.name, self.client_addr
                        ),
                    ));
                }
            }
        }
    }

    /// The member's name (`--name`): `etcd` for a single member, `member<i>`
    /// in a [`Cluster`](super::Cluster).
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::start().await?;
    /// assert_eq!(etcd.name(), "etcd");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client URL: `http://127.0.0.1:PORT`, or `https://...` with TLS.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::start().await?;
    /// assert_eq!(etcd.endpoint(), format!("http://{}", etcd.client_addr()));
    /// # Ok(()) }
    /// ```
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr)
    }

    /// The loopback address etcd serves clients on; it stays the same
    /// across [`restart`](Self::restart)s.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::start().await?;
    /// let proxy = etcdutil::testing::Proxy::start(etcd.client_addr()).await?;
    /// # Ok(()) }
    /// ```
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The loopback address etcd talks to its peers on (plaintext).
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::start().await?;
    /// assert_ne!(etcd.peer_addr(), etcd.client_addr());
    /// # Ok(()) }
    /// ```
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Settings to connect to this member: its endpoint, a 5 s dial
    /// timeout and, for a TLS member, the generated CA with the client
    /// certificate and key.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::start().await?;
    /// let config = etcd.config();
    /// assert_eq!(config.endpoints, vec![etcd.endpoint()]);
    /// # Ok(()) }
    /// ```
    pub fn config(&self) -> Config {
        config_for(vec![self.endpoint()], self.tls_files())
    }

    /// The generated certificates of a TLS member; `None` in plaintext.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::builder().tls(true).start().await?;
    /// let files = etcd.tls_files().unwrap();
    /// assert!(files.server_cert.exists());
    /// # Ok(()) }
    /// ```
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_deref().map(|t| &t.files)
    }

    /// etcd's `--data-dir`, inside a private temp directory removed on drop.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::start().await?;
    /// assert!(etcd.data_dir().join("member").exists());
    /// # Ok(()) }
    /// ```
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id, while the process runs (also while paused).
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let mut etcd = etcdutil::testing::Etcd::start().await?;
    /// assert!(etcd.pid().is_some());
    /// etcd.kill()?;
    /// assert_eq!(etcd.pid(), None);
    /// # Ok(()) }
    /// ```
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// Whether the process is running (it may have exited on its own).
    /// A paused process counts as running.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let mut etcd = etcdutil::testing::Etcd::start().await?;
    /// assert!(etcd.is_running());
    /// # Ok(()) }
    /// ```
    pub fn is_running(&mut self) -> bool {
        match self.proc.as_mut().map(|p| p.child.try_wait()) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) | Some(Err(_)) => {
                self.proc = None;
                self.paused = false;
                false
            }
            None => false,
        }
    }

    /// Whether the process is stopped by [`pause`](Self::pause).
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let mut etcd = etcdutil::testing::Etcd::start().await?;
    /// etcd.pause()?;
    /// assert!(etcd.is_paused());
    /// # Ok(()) }
    /// ```
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The last lines (up to 200) etcd printed, over all its runs.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let etcd = etcdutil::testing::Etcd::start().await?;
    /// eprintln!("{}", etcd.logs().join("\n"));
    /// # Ok(()) }
    /// ```
    pub fn logs(&self) -> Vec<String> {
        self.output.lock().iter().cloned().collect()
    }

    fn running_pid(&self) -> io::Result<libc::pid_t> {
        let pid = self.pid().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                format!("etcd member {} is not running", self.name),
            )
        })?;
        libc::pid_t::try_from(pid).map_err(io::Error::other)
    }

    fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        let pid = self.running_pid()?;
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet, so
        // it cannot have been recycled for another process.
        if unsafe { libc::kill(pid, sig) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Kills the process with SIGKILL (a crash: no graceful shutdown) and
    /// reaps it. Its ports close at once; the data dir stays for
    /// [`restart`](Self::restart). Does nothing if it is not running.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let mut etcd = etcdutil::testing::Etcd::start().await?;
    /// etcd.kill()?;
    /// assert!(std::net::TcpStream::connect(etcd.client_addr()).is_err());
    /// # Ok(()) }
    /// ```
    pub fn kill(&mut self) -> io::Result<()> {
        self.paused = false;
        let Some(mut p) = self.proc.take() else {
            return Ok(());
        };
        // SIGKILL also ends a stopped (paused) process.
        match p.child.kill() {
            Ok(()) => {}
            // Already exited; `wait` below reaps it.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
            Err(e) => {
                self.proc = Some(p);
                return Err(e);
            }
        }
        p.child.wait()?;
        Ok(())
    }

    /// Stops the process gracefully: SIGTERM (and SIGCONT if paused), then
    /// SIGKILL if it has not exited within 5 s. Does nothing if it is not
    /// running.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let mut etcd = etcdutil::testing::Etcd::start().await?;
    /// etcd.stop().await?;
    /// assert!(!etcd.is_running());
    /// # Ok(()) }
    /// ```
    pub async fn stop(&mut self) -> io::Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        self.signal(libc::SIGTERM)?;
        if self.paused {
            // A stopped process only acts on SIGTERM once continued.
            self.signal(libc::SIGCONT)?;
            self.paused = false;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let p = self.proc.as_mut().expect("running");
            if p.child.try_wait()?.is_some() {
                self.proc = None;
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(member = %self.name, "etcdutil::testing: etcd ignored SIGTERM, killing it");
                return self.kill();
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Freezes the process with SIGSTOP, returning once it is stopped: its
    /// sockets stay open (connects still succeed, the kernel queues them)
    /// but it answers nothing and sends no heartbeats, like a hung machine.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let mut etcd = etcdutil::testing::Etcd::start().await?;
    /// etcd.pause()?;
    /// // ... the code under test sees etcd hang ...
    /// etcd.resume()?;
    /// # Ok(()) }
    /// ```
    pub fn pause(&mut self) -> io::Result<()> {
        self.signal(libc::SIGSTOP)?;
        self.paused = true;
        // kill(2) only queues the signal: return once every thread of etcd
        // stopped (or it died), so it cannot answer one more request.
        let pid = self.running_pid()?;
        loop {
            // SAFETY: an all-zero siginfo_t is a valid out-parameter.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid(2) on our own unreaped child; WNOWAIT leaves its
            // state to be collected by `Child::wait` later.
            let r = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WSTOPPED | libc::WEXITED | libc::WNOWAIT,
                )
            };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Continues a process frozen by [`pause`](Self::pause) (SIGCONT).
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let mut etcd = etcdutil::testing::Etcd::start().await?;
    /// etcd.pause()?;
    /// etcd.resume()?;
    /// assert!(!etcd.is_paused());
    /// # Ok(()) }
    /// ```
    pub fn resume(&mut self) -> io::Result<()> {
        self.signal(libc::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    /// Starts the member again on the same ports, with the same data dir and
    /// flags, and waits until it serves clients. A member that is still
    /// running is [`stop`](Self::stop)ped first; use [`kill`](Self::kill)
    /// before for a crash.
    ///
    /// A member of a [`Cluster`](super::Cluster) rejoins it, but only
    /// becomes ready once a quorum runs: to restart a whole cluster use
    /// [`Cluster::restart_all`](super::Cluster::restart_all) (or
    /// [`respawn`](Self::respawn) each member, then
    /// [`wait_ready`](Self::wait_ready)).
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let mut etcd = etcdutil::testing::Etcd::start().await?;
    /// let addr = etcd.client_addr();
    /// etcd.kill()?;
    /// etcd.restart().await?;
    /// assert_eq!(etcd.client_addr(), addr);
    /// # Ok(()) }
    /// ```
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await?;
        let deadline = Instant::now() + self.start_timeout;
        loop {
            self.spawn()?;
            match wait_ready(std::slice::from_mut(self), deadline).await {
                Ok(()) => return Ok(()),
                // Our port is (still) held by someone else: wait for it.
                Err(f) if f.port_taken && Instant::now() + REBIND_PAUSE < deadline => {
                    tracing::debug!(member = %self.name, error = %f.error, "etcdutil::testing: port taken on restart, retrying");
                    self.kill()?;
                    tokio::time::sleep(REBIND_PAUSE).await;
                }
                Err(f) => {
                    self.kill()?;
                    return Err(f.error);
                }
            }
        }
    }

    /// Starts the stopped process again (same ports, data dir and flags)
    /// without waiting for it; see [`wait_ready`](Self::wait_ready). Fails
    /// if it is running.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let mut etcd = etcdutil::testing::Etcd::start().await?;
    /// etcd.kill()?;
    /// etcd.respawn()?;
    /// etcd.wait_ready().await?;
    /// # Ok(()) }
    /// ```
    pub fn respawn(&mut self) -> io::Result<()> {
        if self.is_running() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("etcd member {} is already running", self.name),
            ));
        }
        self.spawn()
    }

    /// Waits (up to the start timeout) until the running process serves
    /// clients: it logged readiness and accepts TCP. Errors if it exits
    /// first; the error carries the tail of its log.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let mut etcd = etcdutil::testing::Etcd::start().await?;
    /// etcd.kill()?;
    /// etcd.respawn()?;
    /// etcd.wait_ready().await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + self.start_timeout;
        wait_ready(std::slice::from_mut(self), deadline)
            .await
            .map_err(|f| f.error)
    }

    pub(crate) fn start_timeout(&self) -> Duration {
        self.start_timeout
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(member = %self.name, error = %e, "etcdutil::testing: could not kill etcd");
        }
        remove_dir(&self.root);
    }
}

/// A [`Config`] for `endpoints`, with the client TLS files if any.
pub(crate) fn config_for(endpoints: Vec<String>, tls: Option<&TlsFiles>) -> Config {
    Config {
        endpoints,
        dial_timeout: Some(Duration::from_secs(5)),
        tls: tls.map(|f| TlsConfig {
            ca_file: Some(f.ca_cert.clone()),
            cert_file: Some(f.client_cert.clone()),
            key_file: Some(f.client_key.clone()),
            skip_verify: false,
        }),
        ..Config::default()
    }
}
