//! The connection to etcd and the raw gRPC clients it hands out.

pub(crate) mod config;
pub(crate) mod parse;
pub(crate) mod tls;
pub(crate) mod transport;
pub(crate) mod txn;
pub(crate) mod watches;
pub(crate) mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::client::config::Config;
use crate::client::transport::{Attempt, Transport};
use crate::client::watches::Watches;
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
};
use crate::proto::v3electionpb::election_client::ElectionClient;
use crate::proto::v3lockpb::lock_client::LockClient;
use crate::session::keepalive::KeepAlive;

/// Creates a [`Client`] from `cfg`, its blanks filled from the `ETCD3_*`
/// environment variables (see [`new_config`](crate::new_config)).
///
/// Like the Go package's `NewClient`, it does not wait for etcd: it checks the
/// configuration and returns, and each call then connects within the dial
/// timeout (see [`Client::connect_lazy`]). A service may so start before etcd,
/// and its sessions and elections join in once etcd is up. Only a bad
/// configuration fails here; use [`Client::connect`] to also prove at start
/// that the endpoints are etcd.
///
/// ```no_run
/// # async fn run() -> etcdutil::Result<()> {
/// // ETCD3_ENDPOINT=10.0.0.1:2379,10.0.0.2:2379 or the default 127.0.0.1:2379
/// let client = etcdutil::new_client(None).await?;
/// # Ok(()) }
/// ```
pub async fn new_client(cfg: Option<Config>) -> Result<Client> {
    Client::connect_lazy(config::new_config(cfg)?)
}

/// A connection to etcd: cheap to clone, every method takes `&self`.
///
/// It hands out etcd's raw gRPC clients ([`kv`](Client::kv),
/// [`lease`](Client::lease), [`election`](Client::election), ...), which all
/// share one HTTP/2 connection and carry the auth token and the wire log.
///
/// ```no_run
/// # async fn run() -> etcdutil::Result<()> {
/// let client = etcdutil::new_client(None).await?;
/// let for_a_task = client.clone(); // shares the connection
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    transport: Transport,
    keepalive: KeepAlive,
    watches: Watches,
    /// Lease grants and revokes in flight at once (see `session::grant`
    /// and `session::revoke`).
    lease_calls: tokio::sync::Semaphore,
    /// Elections' candidacy Txns and first reads in flight at once (see
    /// [`Client::call_permit`]).
    election_calls: tokio::sync::Semaphore,
    /// Set by [`Client::close`]: no new session or election.
    closing: AtomicBool,
    /// Every session and election made from this client and not yet ended.
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next: u64,
    handles: HashMap<u64, Arc<dyn Closable>>,
}

/// A session or election that [`Client::close`] closes.
pub(crate) trait Closable: Send + Sync {
    /// Closes as its own `close()` does, finishing by `deadline`.
    fn close_by(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Closes as its session is about to revoke the lease it stands on: an
    /// election steps down but does not resign, as the revoke deletes its
    /// key anyway.
    fn close_before_revoke(
        &self,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.close_by(deadline)
    }
    /// Its lease TTL, which bounds its close.
    fn ttl(&self) -> i64;
}

/// The registration of a [`Closable`]; its owner ends it when it has closed.
pub(crate) struct Registration {
    client: Client,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self.client.inner.open.lock().expect("open lock");
        open.handles.remove(&self.id);
    }
}

/// A checked config and what the transport is built from.
struct Setup {
    config: Config,
    uris: Vec<http::Uri>,
    tls: Option<Arc<rustls::ClientConfig>>,
    dial_timeout: std::time::Duration,
    credentials: Option<(String, String)>,
}

impl Setup {
    fn new(config: Config) -> Result<Setup> {
        let config = config::new_config_with_env(Some(config), |_| None)?;
        if config.debug {
            wire::enable_stderr();
        }
        let uris = config::endpoint_uris(&config)?;
        let dial_timeout = config.dial_timeout.unwrap_or(config::DEFAULT_DIAL_TIMEOUT);
        let tls = config
            .tls
            .as_ref()
            .map(tls::client_config)
            .transpose()?
            .map(Arc::new);
        let credentials = config
            .username
            .clone()
            .map(|user| (user, config.password.clone().unwrap_or_default()));
        Ok(Setup {
            config,
            uris,
            tls,
            dial_timeout,
            credentials,
        })
    }
}

/// How long closing a session or election may take: its TTL, and 1 s for
/// what etcd is asked to do, less room for the caller to be told.
pub(crate) fn close_budget(ttl: i64) -> std::time::Duration {
    std::time::Duration::from_secs(ttl.max(1) as u64) + std::time::Duration::from_millis(800)
}

/// How many LeaseGrants and LeaseRevokes one client has in flight at once:
/// 10,000 sessions made, or closed, at once would otherwise fill etcd's
/// proposal queue, and it answers "too many requests" past that.
const LEASE_CALLS_IN_FLIGHT: usize = 64;

/// How many elections' calls one client has in flight at once. Each call in
/// flight holds its own encode and decode buffers (kilobytes): 10,000
/// elections entering at once would hold tens of MiB that the allocator
/// keeps long after. Past about a hundred, etcd batches them into its
/// commits no faster.
const ELECTION_CALLS_IN_FLIGHT: usize = 128;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the first of `config.endpoints` that answers within the dial
    /// timeout, checks that it is etcd (it answers a Status request), and
    /// authenticates if a user name is set: a wrong address or password fails
    /// here, at start. Blank fields get their defaults; the environment is not
    /// read (use [`new_client`] for that).
    ///
    /// ```no_run
    /// use etcdutil::{Client, Config};
    /// # async fn run() -> etcdutil::Result<()> {
    /// let client = Client::connect(Config {
    ///     endpoints: vec!["127.0.0.1:2379".into()],
    ///     ..Default::default()
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: Config) -> Result<Client> {
        let setup = Setup::new(config)?;
        let started = tokio::time::Instant::now();
        let transport = Transport::connect(
            setup.uris.clone(),
            setup.tls.clone(),
            setup.dial_timeout,
            setup.credentials.clone(),
        )
        .await?;
        // With credentials: a token now, so wrong ones fail here, not later;
        // within what is left of the dial timeout.
        let left = setup.dial_timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, transport.renew_token(None)).await {
            Ok(renewed) => renewed?,
            Err(_) => {
                return Err(Error::Connect {
                    endpoints: crate::client::transport::endpoint_list(&setup.uris),
                    timeout: setup.dial_timeout,
                    source: None,
                });
            }
        };
        Ok(Client::with_transport(setup.config, transport))
    }

    /// A client that connects to etcd on its first call, not now: it can be
    /// made while etcd is down. Each call waits up to the dial timeout for a
    /// connection (trying every endpoint) and fails with an error if none
    /// answers; sessions and elections retry until etcd is up. Fails only on
    /// a bad configuration. Must be called within a tokio runtime.
    ///
    /// ```no_run
    /// use etcdutil::{Client, Config};
    /// # async fn run() -> etcdutil::Result<()> {
    /// let client = Client::connect_lazy(Config {
    ///     endpoints: vec!["127.0.0.1:2379".into()],
    ///     ..Default::default()
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn connect_lazy(config: Config) -> Result<Client> {
        let setup = Setup::new(config)?;
        let transport =
            Transport::lazy(setup.uris, setup.tls, setup.dial_timeout, setup.credentials);
        Ok(Client::with_transport(setup.config, transport))
    }

    fn with_transport(config: Config, transport: Transport) -> Client {
        let keepalive = KeepAlive::start(transport.clone());
        let watches = Watches::start(transport.clone());
        Client {
            inner: Arc::new(Inner {
                config,
                transport,
                keepalive,
                watches,
                lease_calls: tokio::sync::Semaphore::new(LEASE_CALLS_IN_FLIGHT),
                election_calls: tokio::sync::Semaphore::new(ELECTION_CALLS_IN_FLIGHT),
                closing: AtomicBool::new(false),
                open: Mutex::default(),
            }),
        }
    }

    /// Registers a session or election for [`close`](Self::close); fails
    /// once the client is closing.
    pub(crate) fn register(&self, handle: Arc<dyn Closable>) -> Result<Registration> {
        let mut open = self.inner.open.lock().expect("open lock");
        // Checked under the lock, so close() sees every handle registered before it.
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let id = open.next;
        open.next += 1;
        open.handles.insert(id, handle);
        Ok(Registration {
            client: self.clone(),
            id,
        })
    }

    /// Closes every [`Session`](crate::Session) and
    /// [`Election`](crate::Election) made from this client, concurrently,
    /// each as its own `close()` would (a session steps its elections down,
    /// then revokes, which deletes their keys), and returns once all
    /// are done: within the largest TTL + 1 s. Afterwards new sessions,
    /// elections and calls fail with [`Error::Closed`]. Calling it again
    /// waits for what is still closing.
    ///
    /// Call it before `main` returns: dropping a handle only closes it in a
    /// background task, which a runtime shutting down never runs, and the
    /// leader's key would then hold the office for a whole TTL.
    ///
    /// ```no_run
    /// # async fn run() -> etcdutil::Result<()> {
    /// let client = etcdutil::new_client(None).await?;
    /// let election = etcdutil::new_election_async(&client, etcdutil::ElectionConfig::default())?;
    /// tokio::signal::ctrl_c().await.ok();
    /// client.close().await; // steps down, revokes, and emits is_done
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) {
        let handles: Vec<Arc<dyn Closable>> = {
            let open = self.inner.open.lock().expect("open lock");
            self.inner.closing.store(true, Ordering::SeqCst);
            open.handles.values().cloned().collect()
        };
        let mut closing = tokio::task::JoinSet::new();
        for handle in handles {
            let deadline = Instant::now() + close_budget(handle.ttl());
            closing.spawn(async move { handle.close_by(deadline).await });
        }
        while closing.join_next().await.is_some() {}
        self.inner.transport.close();
    }

    /// Whether [`close`](Self::close) was called.
    ///
    /// ```no_run
    /// # fn f(client: &etcdutil::Client) { if client.is_closed() { return; } }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.inner.closing.load(Ordering::SeqCst)
    }

    /// A turn to grant or revoke a lease.
    pub(crate) async fn lease_permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.inner
            .lease_calls
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// A turn for an election's call (a candidacy Txn, the observer's first
    /// watch and read). Resigns take none: a handover never waits for one.
    pub(crate) async fn call_permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.inner
            .election_calls
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// The Watch stream shared by every watch of this client.
    pub(crate) fn watches(&self) -> &Watches {
        &self.inner.watches
    }

    /// The keepalive stream shared by all sessions of this client.
    pub(crate) fn keepalive(&self) -> &KeepAlive {
        &self.inner.keepalive
    }

    /// The config this client was made with, blanks filled.
    ///
    /// ```no_run
    /// # fn f(client: &etcdutil::Client) {
    /// println!("talking to {:?}", client.config().endpoints);
    /// # }
    /// ```
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// What a call or stream is about to be sent with (member, token), to
    /// hand to [`recover`](Self::recover) if it fails.
    pub(crate) fn attempt(&self) -> Attempt {
        self.inner.transport.attempt()
    }

    /// Resolves once calls have moved off the member `attempt` went to.
    pub(crate) async fn moved_away(&self, attempt: &Attempt) {
        attempt.moved_away(&self.inner.transport).await
    }

    /// Does what `error`, from a call or stream sent as `attempt`, asks for:
    /// a new token (true: retry at once) or the next member.
    pub(crate) async fn recover(&self, error: &Error, attempt: &Attempt) -> bool {
        self.inner.transport.recover(error, attempt).await
    }

    /// The shared HTTP/2 channel, for generated clients this type has no method for.
    ///
    /// ```no_run
    /// use etcdutil::proto::etcdserverpb::kv_client::KvClient;
    /// # fn f(client: &etcdutil::Client) {
    /// let kv = KvClient::new(client.transport()).max_decoding_message_size(64 << 20);
    /// # }
    /// ```
    pub fn transport(&self) -> Transport {
        self.inner.transport.clone()
    }

    /// etcd's KV service: Range, Put, DeleteRange, Txn, Compact.
    ///
    /// ```no_run
    /// use etcdutil::proto::etcdserverpb::PutRequest;
    /// # async fn run(client: etcdutil::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// client.kv().put(PutRequest { key: "k".into(), value: "v".into(), ..Default::default() }).await?;
    /// # Ok(()) }
    /// ```
    pub fn kv(&self) -> KvClient<Transport> {
        KvClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }

    /// etcd's Lease service: Grant, Revoke, KeepAlive, TimeToLive, Leases.
    ///
    /// ```no_run
    /// use etcdutil::proto::etcdserverpb::LeaseGrantRequest;
    /// # async fn run(client: etcdutil::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let lease = client.lease().lease_grant(LeaseGrantRequest { ttl: 10, id: 0 }).await?;
    /// # Ok(()) }
    /// ```
    pub fn lease(&self) -> LeaseClient<Transport> {
        LeaseClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }

    /// etcd's Watch service.
    ///
    /// ```no_run
    /// # async fn run(client: etcdutil::Client) {
    /// let mut watch = client.watch();
    /// # }
    /// ```
    pub fn watch(&self) -> WatchClient<Transport> {
        WatchClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }

    /// etcd's server-side Election service: Campaign, Proclaim, Leader, Observe, Resign.
    ///
    /// ```no_run
    /// use etcdutil::proto::v3electionpb::LeaderRequest;
    /// # async fn run(client: etcdutil::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let leader = client.election().leader(LeaderRequest { name: "/elections/jobs".into() }).await?;
    /// # Ok(()) }
    /// ```
    pub fn election(&self) -> ElectionClient<Transport> {
        ElectionClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }

    /// etcd's server-side Lock service: Lock, Unlock. It waits in etcd for
    /// the lock named `name` with a caller's lease, by the recipe that
    /// [`Mutex`](crate::Mutex) follows, so each excludes the other.
    ///
    /// ```no_run
    /// use etcdutil::proto::v3lockpb::LockRequest;
    /// # async fn run(client: etcdutil::Client, lease: i64) -> Result<(), Box<dyn std::error::Error>> {
    /// let held = client.lock().lock(LockRequest { name: "jobs".into(), lease }).await?;
    /// println!("holding with key {:?}", held.into_inner().key);
    /// # Ok(()) }
    /// ```
    pub fn lock(&self) -> LockClient<Transport> {
        LockClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }

    /// etcd's Cluster service: member list and changes.
    ///
    /// ```no_run
    /// use etcdutil::proto::etcdserverpb::MemberListRequest;
    /// # async fn run(client: etcdutil::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let members = client.cluster().member_list(MemberListRequest::default()).await?;
    /// # Ok(()) }
    /// ```
    pub fn cluster(&self) -> ClusterClient<Transport> {
        ClusterClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }

    /// etcd's Maintenance service: Status, Alarm, Defragment, Snapshot, ...
    ///
    /// ```no_run
    /// use etcdutil::proto::etcdserverpb::StatusRequest;
    /// # async fn run(client: etcdutil::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let status = client.maintenance().status(StatusRequest::default()).await?;
    /// # Ok(()) }
    /// ```
    pub fn maintenance(&self) -> MaintenanceClient<Transport> {
        MaintenanceClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }

    /// etcd's Auth service: users, roles, enabling auth.
    ///
    /// ```no_run
    /// use etcdutil::proto::etcdserverpb::AuthUserListRequest;
    /// # async fn run(client: etcdutil::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let users = client.auth().user_list(AuthUserListRequest::default()).await?;
    /// # Ok(()) }
    /// ```
    pub fn auth(&self) -> AuthClient<Transport> {
        AuthClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }
}
