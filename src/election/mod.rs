//! Leader election on etcd, with the keys and rules of etcd's Election service.
//!
//! A candidate is a key `/elections/<election>/<lease id in hex>` attached to
//! its [`Session`]'s lease; the leader is the live key with the lowest create
//! revision, and that revision is the leader's fencing token
//! ([`LeaderKey::rev`]). These are the keys and the rules of etcd's own
//! `concurrency` recipe and of its server-side `Campaign`, so `etcdctl elect`
//! and any other etcd client can join or watch the same election.
//!
//! We enter the race with etcd's Campaign's first step done by hand (a
//! put-if-absent Txn, which also reads the leader), follow the candidates
//! with a Watch of our own (the `observe` module; it says why not etcd's
//! `Observe`), and end a term with etcd's `Resign`; `Proclaim` and `Leader`
//! are etcd's RPCs too.
//!
//! # Who decides that we lead
//!
//! The observer, which reports every change of leader (and of the leader's
//! data) in revision order. We lead while the observed leader is our key,
//! with our session's current lease, that lease is alive by the session's
//! deadline rule, and no candidate of the Go package entered before our key
//! (see "Mixed fleets" below). A report older than one already acted on is
//! ignored. Stepping down never waits for etcd: the lease's loss, `concede`
//! and `close` clear [`Election::is_leader`] before anything is sent, so a
//! new leader cannot be elected while we still believe we lead.
//!
//! # Mixed fleets with the Go package
//!
//! `github.com/mailgun/holster/v4/etcdutil` writes its candidate as
//! `/elections/<name><lease hex>` (no `/`) and takes the oldest key under
//! the prefix `/elections/<name>` for the leader, ours included. So a Go
//! candidate that enters after ours defers to ours by its own rule; one that
//! entered before ours is read in the same Txn that enters ours, and we do
//! not lead until its key is gone (we watch it).

pub(crate) mod candidacy;
pub(crate) mod core;
pub(crate) mod leadership;
pub(crate) mod observe;
pub(crate) mod server_side;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::client::{Client, Closable};
use crate::election::candidacy::{RETRY, Request, Shared, Task};
use crate::election::core::Candidacy;
use crate::election::observe::{Leader, Observed, Report, run_observe};
use crate::error::{Error, Result};
use crate::event::{ElectionEvent, EventObserver};
use crate::proto::etcdserverpb::{TxnRequest, TxnResponse};
use crate::proto::v3electionpb::{LeaderKey, LeaderRequest, ProclaimRequest};
use crate::session::{NO_LEASE, Session, SessionConfig, checked_ttl, close_budget};

/// Where elections live in etcd's key space.
///
/// ```
/// assert_eq!(etcdutil::election_key("jobs").unwrap(), format!("{}/jobs", etcdutil::ELECTION_PREFIX));
/// ```
pub const ELECTION_PREFIX: &str = "/elections";

/// The TTL used when [`ElectionConfig::ttl`] is 0, in seconds.
///
/// ```
/// assert_eq!(etcdutil::ElectionConfig::default().ttl, etcdutil::DEFAULT_ELECTION_TTL);
/// ```
pub const DEFAULT_ELECTION_TTL: i64 = 5;

/// How to run an [`Election`].
///
/// ```
/// let config = etcdutil::ElectionConfig {
///     election: "billing-jobs".into(),
///     candidate: "worker-1".into(),
///     ..Default::default()
/// };
/// ```
#[derive(Clone)]
pub struct ElectionConfig {
    /// Told of every event; optional, [`Election::subscribe`] sees them too.
    pub event_observer: Option<EventObserver>,
    /// The election's name; on the wire `/elections/<election>`. Default `null`.
    pub election: String,
    /// Our candidate's name, the leader data while we lead. Default: the host name.
    pub candidate: String,
    /// Lease TTL in seconds: how long a vanished leader keeps the office. Default 5.
    pub ttl: i64,
    /// How the election campaigns and follows: our own Txn and Watch (the
    /// default), or etcd's server-side Campaign and Observe.
    pub engine: Engine,
}

/// How an election enters the race and follows its candidates. Both are
/// driven by the same core, so `is_leader()` follows the same rules; the
/// keys are the same, so candidates of either engine (and `etcdctl elect`)
/// share an election.
///
/// ```
/// use etcdutil::{ElectionConfig, Engine};
/// let config = ElectionConfig { engine: Engine::ServerSide, ..Default::default() };
/// assert_ne!(config.engine, Engine::default());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// A put-if-absent Txn of ours enters, and one Watch of ours follows
    /// (on the client's shared Watch stream). Safe with auth.
    #[default]
    ClientSide,
    /// etcd's `Campaign` enters and etcd's `Observe` follows: the wire shows
    /// the Election service and the lease calls (and one read of the Go
    /// package's candidates per term). Refused on a client with a user and
    /// password (etcd issue 17502: etcd's shared internal watch fails for
    /// every caller once the first caller's token expires); with client
    /// certificates, safe only if all candidates share one identity.
    ServerSide,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            event_observer: None,
            election: "null".into(),
            candidate: host_name(),
            ttl: DEFAULT_ELECTION_TTL,
            engine: Engine::default(),
        }
    }
}

impl std::fmt::Debug for ElectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElectionConfig")
            .field("election", &self.election)
            .field("candidate", &self.candidate)
            .field("ttl", &self.ttl)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// This machine's name from gethostname(2), else "localhost".
fn host_name() -> String {
    #[cfg(unix)]
    let name = {
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is writable for the `buf.len() - 1` bytes passed; its
        // last byte stays 0, so the name ends in a NUL even if truncated.
        let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) } == 0;
        let name = std::ffi::CStr::from_bytes_until_nul(&buf).ok();
        name.filter(|_| ok)
            .map(|name| name.to_string_lossy().into_owned())
    };
    #[cfg(not(unix))]
    let name: Option<String> = None;
    name.map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The election's key prefix on the wire: `/elections/<name>`, path-joined
/// (so `"/jobs"`, `"jobs"` and `"jobs/"` are one election).
///
/// ```
/// assert_eq!(etcdutil::election_key("/jobs/").unwrap(), "/elections/jobs");
/// assert!(etcdutil::election_key(" ").is_err());
/// ```
pub fn election_key(election: &str) -> Result<String> {
    let invalid = |expected| Error::InvalidArgument {
        name: "ElectionConfig.election",
        value: format!("{election:?}"),
        expected,
    };
    if election.contains('\0') {
        return Err(invalid("an election name without NUL bytes"));
    }
    let parts: Vec<&str> = election
        .trim()
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        return Err(invalid("a non-empty election name"));
    }
    Ok(format!("{ELECTION_PREFIX}/{}", parts.join("/")))
}

/// The current leader of `election`, or `None` if nobody leads.
///
/// ```no_run
/// # async fn run(client: etcdutil::Client) -> etcdutil::Result<()> {
/// if let Some(leader) = etcdutil::leader(&client, "billing-jobs").await? {
///     println!("{} leads since revision {}", leader.data, leader.rev);
/// }
/// # Ok(()) }
/// ```
pub async fn leader(client: &Client, election: &str) -> Result<Option<Leader>> {
    leader_of(client, election_key(election)?).await
}

/// The leader of the election whose key prefix is `name`.
async fn leader_of(client: &Client, name: String) -> Result<Option<Leader>> {
    let name = name.into_bytes();
    match client
        .election()
        .leader(LeaderRequest { name: name.into() })
        .await
    {
        Ok(response) => {
            let response = response.into_inner();
            let as_of_rev = response.header.map_or(0, |h| h.revision);
            Ok(response.kv.map(|kv| Leader::new(&kv, as_of_rev)))
        }
        Err(status) => match Error::from(status) {
            Error::ElectionNoLeader(_) => Ok(None),
            error => Err(error),
        },
    }
}

/// A stream of leader changes of `election`, without campaigning: the current
/// leader first (once there is one), then every new leader and every
/// Proclaim. A failed watch is reported as an `Err` item and reopened; the
/// stream ends when dropped. Served by one Watch of our own (see the
/// `observe` module docs for why not etcd's `Observe` RPC).
///
/// ```no_run
/// use tokio_stream::StreamExt;
/// # async fn run(client: etcdutil::Client) -> etcdutil::Result<()> {
/// let mut leaders = etcdutil::observe(&client, "billing-jobs")?;
/// while let Some(leader) = leaders.next().await {
///     println!("{:?}", leader?);
/// }
/// # Ok(()) }
/// ```
pub fn observe(client: &Client, election: &str) -> Result<UnboundedReceiverStream<Result<Leader>>> {
    observe_with(client, election, Engine::ClientSide)
}

/// As [`observe`](fn@observe), followed by the `engine` given: with
/// [`Engine::ServerSide`], through etcd's own `Observe` RPC (refused on a
/// client with a user and password, see [`Engine`]).
///
/// ```no_run
/// use tokio_stream::StreamExt;
/// # async fn run(client: etcdutil::Client) -> etcdutil::Result<()> {
/// let mut leaders = etcdutil::observe_with(&client, "billing-jobs", etcdutil::Engine::ServerSide)?;
/// if let Some(leader) = leaders.next().await {
///     println!("{:?}", leader?);
/// }
/// # Ok(()) }
/// ```
pub fn observe_with(
    client: &Client,
    election: &str,
    engine: Engine,
) -> Result<UnboundedReceiverStream<Result<Leader>>> {
    let name = election_key(election)?;
    if engine == Engine::ServerSide {
        server_side::check(client)?;
    }
    let (sender, receiver) = mpsc::unbounded_channel();
    let closed = sender.clone();
    // Only leaders: a moment with no candidate is not reported here.
    let sink = move |report| {
        let item = match report {
            Ok(Observed::Watching | Observed::Report(Report { leader: None, .. })) => return true,
            Ok(Observed::Report(Report {
                leader: Some(leader),
                ..
            })) => Ok(leader),
            Err(error) => Err(error),
        };
        sender.send(item).is_ok()
    };
    let observer: Pin<Box<dyn Future<Output = ()> + Send>> = match engine {
        Engine::ClientSide => Box::pin(run_observe(client.clone(), name, sink, RETRY)),
        Engine::ServerSide => Box::pin(server_side::run_observe(client.clone(), name, sink, RETRY)),
    };
    tokio::spawn(async move {
        tokio::select! {
            () = closed.closed() => {}
            () = observer => {}
        }
    });
    Ok(UnboundedReceiverStream::new(receiver))
}

/// One candidate in one election.
///
/// ```no_run
/// use std::sync::Arc;
/// use etcdutil::{ElectionConfig, new_election};
/// # async fn run() -> etcdutil::Result<()> {
/// let client = etcdutil::new_client(None).await?;
/// let election = new_election(&client, ElectionConfig {
///     election: "billing-jobs".into(),
///     candidate: "worker-1".into(),
///     event_observer: Some(Arc::new(|event| println!("{event:?}"))),
///     ttl: 5,
///     ..Default::default()
/// })
/// .await?;
/// if election.is_leader() {
///     // do the leader's work
/// }
/// election.close().await;
/// # Ok(()) }
/// ```
pub struct Election {
    client: Client,
    name: String,
    shared: Arc<Shared>,
    closer: Arc<Closer>,
}

/// How to close an election's task: the handle's, its session's and
/// [`Client::close`]'s.
struct Closer {
    shared: Arc<Shared>,
    ttl: i64,
}

impl Closer {
    /// Asks the task to close by `deadline`; returns once it has (the task
    /// keeps to the deadline).
    async fn close_by(&self, deadline: Instant, resign: bool) {
        self.shared.request(Request::Close {
            by: deadline,
            resign,
        });
        self.shared.wait_finished().await;
    }
}

impl Closable for Closer {
    fn close_by(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Closer::close_by(self, deadline, true))
    }

    fn close_before_revoke(
        &self,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Closer::close_by(self, deadline, false))
    }

    fn ttl(&self) -> i64 {
        self.ttl
    }
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.name)
            .field("is_leader", &self.is_leader())
            .finish_non_exhaustive()
    }
}

/// Joins the election and waits for its first outcome: we lead, someone else
/// leads, or an error (then the candidacy is withdrawn and the error returned).
///
/// Bound the wait with `tokio::time::timeout`; dropping the future withdraws
/// the candidacy (no key is left behind).
///
/// ```no_run
/// # async fn run(client: etcdutil::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let config = etcdutil::ElectionConfig { election: "jobs".into(), ..Default::default() };
/// let election = tokio::time::timeout(
///     std::time::Duration::from_secs(10),
///     etcdutil::new_election(&client, config),
/// )
/// .await??;
/// # Ok(()) }
/// ```
pub async fn new_election(client: &Client, config: ElectionConfig) -> Result<Election> {
    first_outcome(Election::start(client, config, true)?).await
}

/// Joins the election and returns at once; the outcome arrives as events.
///
/// Fails only on a bad configuration (election name, TTL). Must be called
/// within a tokio runtime.
///
/// ```no_run
/// # async fn run(client: etcdutil::Client) -> etcdutil::Result<()> {
/// let election = etcdutil::new_election_async(&client, etcdutil::ElectionConfig {
///     election: "jobs".into(),
///     event_observer: Some(std::sync::Arc::new(|e| if e.is_leader { println!("leading") })),
///     ..Default::default()
/// })?;
/// # Ok(()) }
/// ```
pub fn new_election_async(client: &Client, config: ElectionConfig) -> Result<Election> {
    Election::start(client, config, false).map(|(election, _)| election)
}

/// Joins the election standing on `session`'s lease, as etcd's Go
/// `concurrency.NewElection(session, ..)` does, and waits for its first
/// outcome, as [`new_election`] does.
///
/// Any number of elections can share one session: one lease and one
/// keepalive serve them all, and entering costs one commit (the lease is
/// there already). They also share its fate: when the session loses its
/// lease, every election on it steps down at once, before etcd can expire
/// the lease, and campaigns again on the next one. `config.ttl` is not used:
/// the session's TTL is. Closing the election resigns it and leaves the
/// session's lease alone; closing the session steps its elections down
/// first, then revokes the lease, which deletes all their keys in one commit.
///
/// ```no_run
/// use etcdutil::{ElectionConfig, Session, SessionConfig, new_election_on};
/// # async fn run(client: etcdutil::Client) -> etcdutil::Result<()> {
/// let session = Session::new(&client, SessionConfig { ttl: 10, ..Default::default() })?;
/// let mut shards = Vec::new();
/// for shard in 0..64 {
///     let config = ElectionConfig { election: format!("shard-{shard}"), ..Default::default() };
///     shards.push(new_election_on(&session, config).await?);
/// }
/// session.close().await; // steps every shard down, then revokes the lease
/// # Ok(()) }
/// ```
pub async fn new_election_on(session: &Session, config: ElectionConfig) -> Result<Election> {
    first_outcome(Election::start_on(session, config, true)?).await
}

/// [`new_election_on`] that returns at once; the outcome arrives as events.
///
/// ```no_run
/// # async fn run(session: &etcdutil::Session) -> etcdutil::Result<()> {
/// let config = etcdutil::ElectionConfig { election: "shard-7".into(), ..Default::default() };
/// let election = etcdutil::new_election_on_async(session, config)?;
/// # Ok(()) }
/// ```
pub fn new_election_on_async(session: &Session, config: ElectionConfig) -> Result<Election> {
    Election::start_on(session, config, false).map(|(election, _)| election)
}

/// Waits for the first outcome: we lead, someone else leads, or an error
/// (then the candidacy is withdrawn and the error returned).
async fn first_outcome(started: (Election, Option<Events>)) -> Result<Election> {
    let (election, events) = started;
    let mut events = events.expect("subscribed before the start");
    while let Some(event) = events.recv().await {
        if let Some(error) = event.err {
            election.close().await;
            return Err(error);
        }
        if event.is_leader || !event.leader_key.is_empty() {
            return Ok(election);
        }
    }
    Err(Error::StreamEnded {
        stream: "election events",
    })
}

/// An election's events, from its start.
type Events = mpsc::UnboundedReceiver<ElectionEvent>;

/// What an election stands on: a session of its own, or a caller's.
enum Ground<'a> {
    Own(Session),
    Shared(&'a Session),
}

impl Ground<'_> {
    fn session(&self) -> &Session {
        match self {
            Ground::Own(session) => session,
            Ground::Shared(session) => session,
        }
    }
}

impl Election {
    /// Starts an election; with `first_events`, also a receiver of its
    /// events subscribed before its task runs, so that none is missed.
    fn start(
        client: &Client,
        config: ElectionConfig,
        first_events: bool,
    ) -> Result<(Election, Option<Events>)> {
        let name = election_key(&config.election)?;
        let ttl = checked_ttl("ElectionConfig.ttl", config.ttl, DEFAULT_ELECTION_TTL)?;
        // Before the session: a refused election leaves nothing in etcd.
        if config.engine == Engine::ServerSide {
            server_side::check(client)?;
        }
        let session = Session::start(
            client,
            SessionConfig {
                ttl,
                ..Default::default()
            },
        )?;
        Election::stand(Ground::Own(session), name, config, first_events)
    }

    fn start_on(
        session: &Session,
        config: ElectionConfig,
        first_events: bool,
    ) -> Result<(Election, Option<Events>)> {
        let name = election_key(&config.election)?;
        // Not used (the session's TTL is), but a bad value is still refused.
        checked_ttl("ElectionConfig.ttl", config.ttl, DEFAULT_ELECTION_TTL)?;
        if config.engine == Engine::ServerSide {
            server_side::check(session.client())?;
        }
        Election::stand(Ground::Shared(session), name, config, first_events)
    }

    fn stand(
        ground: Ground<'_>,
        name: String,
        config: ElectionConfig,
        first_events: bool,
    ) -> Result<(Election, Option<Events>)> {
        let session = ground.session();
        let client = session.client().clone();
        let ttl = session.ttl();
        let mut core = match ground {
            Ground::Own(_) => Candidacy::new(name.clone()),
            Ground::Shared(_) => Candidacy::new(name.clone()).on_shared_session(),
        };
        if config.engine == Engine::ServerSide {
            core = core.server_side();
        }
        let shared = Arc::new(Shared::new(name.clone(), core, config.event_observer));
        let closer = Arc::new(Closer {
            shared: shared.clone(),
            ttl,
        });
        // On a shared session, the session closes us: Client::close closes
        // the session, which steps its elections down before its revoke
        // deletes all their keys in one commit.
        let registration = match ground {
            Ground::Own(_) => Some(client.register(closer.clone())?),
            Ground::Shared(_) => None,
        };
        let listener = shared.clone();
        let lease_ttl = Duration::from_secs(ttl as u64);
        // The core steps down here, in the session's own call, before etcd
        // can expire the lease.
        let attachment = session.attach(
            Arc::new(move |lease, error| {
                let lease = (lease != NO_LEASE).then_some(lease);
                listener.on_lease(lease, error, lease_ttl);
            }),
            closer.clone(),
        )?;
        let own_session = match ground {
            Ground::Own(session) => Some(session),
            Ground::Shared(_) => None,
        };
        let task = Task::new(
            &client,
            config.engine,
            name.clone(),
            config.candidate,
            Duration::from_secs(ttl as u64),
            shared.clone(),
            own_session,
            attachment,
        );
        // Before the task runs: on another worker thread, its first events
        // could otherwise come before `new_election` listens for them.
        let events = first_events.then(|| shared.subscribe());
        tokio::spawn(async move {
            task.run().await;
            drop(registration);
        });
        let election = Election {
            client,
            name,
            shared,
            closer,
        };
        Ok((election, events))
    }

    /// The election's key prefix, `/elections/<name>`.
    ///
    /// ```no_run
    /// # fn f(e: &etcdutil::Election) { assert!(e.name().starts_with("/elections/")); }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether we lead now. Lock-free; false as soon as the session takes the
    /// lease for lost, before etcd can expire it.
    ///
    /// ```no_run
    /// # fn f(e: &etcdutil::Election) { if e.is_leader() { /* lead */ } }
    /// ```
    pub fn is_leader(&self) -> bool {
        self.shared.is_leader()
    }

    /// Our term while we lead: etcd's LeaderKey `{name, key, rev, lease}`,
    /// where `rev` is the fencing token.
    ///
    /// ```no_run
    /// # fn f(e: &etcdutil::Election) {
    /// if let Some(term) = e.leader_key() { println!("fencing token {}", term.rev); }
    /// # }
    /// ```
    pub fn leader_key(&self) -> Option<LeaderKey> {
        self.shared.term()
    }

    /// A receiver of every event from now on, in order.
    ///
    /// ```no_run
    /// # async fn f(e: &etcdutil::Election) {
    /// let mut events = e.subscribe();
    /// while let Some(event) = events.recv().await {
    ///     if event.is_done { break }
    /// }
    /// # }
    /// ```
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<ElectionEvent> {
        self.shared.subscribe()
    }

    /// If we lead: resign and campaign again behind the other candidates, so a
    /// waiting one takes over at once; `Ok(true)`. If not: `Ok(false)`, nothing changes.
    ///
    /// ```no_run
    /// # async fn f(e: &etcdutil::Election) -> etcdutil::Result<()> {
    /// if e.concede().await? { println!("handed over"); }
    /// # Ok(()) }
    /// ```
    pub async fn concede(&self) -> Result<bool> {
        let (reply, answer) = oneshot::channel();
        if !self.shared.request(Request::Concede(reply)) {
            return Ok(false);
        }
        answer.await.unwrap_or(Ok(false))
    }

    /// Sets the leader's data, seen by every candidate and observer. Only while
    /// we lead; otherwise [`Error::NotLeader`].
    ///
    /// ```no_run
    /// # async fn f(e: &etcdutil::Election) -> etcdutil::Result<()> {
    /// e.proclaim("serving on 10.0.0.7:8080").await?;
    /// # Ok(()) }
    /// ```
    pub async fn proclaim(&self, data: impl Into<String>) -> Result<()> {
        let leader = self.leader_key().ok_or(Error::NotLeader)?;
        let request = ProclaimRequest {
            leader: Some(leader),
            value: data.into().into(),
        };
        self.client.election().proclaim(request).await?;
        Ok(())
    }

    /// The current leader, asked of etcd, or `None` if nobody leads.
    ///
    /// ```no_run
    /// # async fn f(e: &etcdutil::Election) -> etcdutil::Result<()> {
    /// let leader = e.leader().await?;
    /// # Ok(()) }
    /// ```
    pub async fn leader(&self) -> Result<Option<Leader>> {
        leader_of(&self.client, self.name.clone()).await
    }

    /// Runs `txn` only while we still lead: it is nested in a transaction that
    /// compares our key's create revision with our term's `rev` (the fencing
    /// token), so a leader that lost office can never write. Returns the
    /// inner transaction's response, or [`Error::NotLeader`].
    ///
    /// ```no_run
    /// use etcdutil::proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest, request_op};
    /// # async fn f(e: &etcdutil::Election) -> etcdutil::Result<()> {
    /// let put = PutRequest { key: "/jobs/owner".into(), value: "me".into(), ..Default::default() };
    /// e.txn_if_leader(TxnRequest {
    ///     success: vec![RequestOp { request: Some(request_op::Request::RequestPut(put)) }],
    ///     ..Default::default()
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn txn_if_leader(&self, txn: TxnRequest) -> Result<TxnResponse> {
        let term = self.leader_key().ok_or(Error::NotLeader)?;
        crate::client::txn::fenced(&self.client, term.key.to_vec(), term.rev, txn)
            .await?
            .ok_or(Error::NotLeader)
    }

    /// Steps down, takes our key out of etcd, and emits `{is_leader: false}`
    /// then `{is_done: true}`, the last event. With a session of its own, the
    /// revoke of its lease deletes the key (the commit a Resign would take);
    /// on a shared session, a Resign does, and the lease stays.
    ///
    /// Returns only once `{is_done: true}` was emitted, within TTL + 1 s even
    /// if etcd is unreachable.
    /// When etcd is reachable, neither our key nor our lease is left in etcd
    /// when it returns. Idempotent: a second call waits for the first.
    ///
    /// ```no_run
    /// # async fn f(e: etcdutil::Election) { e.close().await; }
    /// ```
    pub async fn close(&self) {
        let deadline = Instant::now() + close_budget(self.closer.ttl);
        self.closer.close_by(deadline, true).await;
    }
}

impl Drop for Election {
    /// Closes in the background, as [`close`](Self::close) does.
    fn drop(&mut self) {
        let deadline = Instant::now() + close_budget(self.closer.ttl);
        self.shared.request(Request::Close {
            by: deadline,
            resign: true,
        });
    }
}

/// What [`Election`] and [`AlwaysLeaderMock`] have in common, for code that
/// takes either as `Arc<dyn LeaderElector>`.
///
/// ```
/// use std::sync::Arc;
/// use etcdutil::{AlwaysLeaderMock, LeaderElector};
/// let elector: Arc<dyn LeaderElector> = Arc::new(AlwaysLeaderMock);
/// assert!(elector.is_leader());
/// ```
pub trait LeaderElector: Send + Sync {
    /// Whether we lead now.
    fn is_leader(&self) -> bool;
    /// Hands leadership over if we lead; true if we did.
    fn concede(&self) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + '_>>;
    /// Leaves the election.
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

impl LeaderElector for Election {
    fn is_leader(&self) -> bool {
        Election::is_leader(self)
    }
    fn concede(&self) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + '_>> {
        Box::pin(Election::concede(self))
    }
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Election::close(self))
    }
}

/// A [`LeaderElector`] that always leads, for tests of code that needs one.
///
/// ```
/// use etcdutil::{AlwaysLeaderMock, LeaderElector};
/// # tokio_test_block(async {
/// let mock = AlwaysLeaderMock;
/// assert!(mock.is_leader());
/// assert!(mock.concede().await.unwrap());
/// mock.close().await;
/// assert!(mock.is_leader());
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysLeaderMock;

impl LeaderElector for AlwaysLeaderMock {
    fn is_leader(&self) -> bool {
        true
    }
    fn concede(&self) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + '_>> {
        Box::pin(async { Ok(true) })
    }
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_names_are_path_joined() {
        assert_eq!(election_key("jobs").unwrap(), "/elections/jobs");
        assert_eq!(election_key("/jobs").unwrap(), "/elections/jobs");
        assert_eq!(election_key("jobs/").unwrap(), "/elections/jobs");
        assert_eq!(election_key("a//b").unwrap(), "/elections/a/b");
    }

    #[test]
    fn bad_election_names() {
        assert_eq!(
            election_key("a\0b").unwrap_err().to_string(),
            "ElectionConfig.election=\"a\\0b\" is not an election name without NUL bytes"
        );
        assert_eq!(
            election_key(" / ").unwrap_err().to_string(),
            "ElectionConfig.election=\" / \" is not a non-empty election name"
        );
    }
}
