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

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::observe::{Leader, Report, oldest_first, prefix_range, run_observe, until_deleted};
use crate::proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse, compare,
    request_op, response_op,
};
use crate::proto::mvccpb::KeyValue;
use crate::proto::v3electionpb::{LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest};
use crate::session::{NO_LEASE, Session, SessionConfig, checked_ttl, close_budget};
use crate::transport::Attempt;

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

/// Retry a failed candidacy Txn or watch after this long.
const RETRY: Duration = Duration::from_millis(500);

/// One change in an election, as seen by one candidate.
///
/// ```
/// let observer: etcdutil::EventObserver = std::sync::Arc::new(|event: etcdutil::ElectionEvent| {
///     match (event.is_done, event.is_leader) {
///         (true, _) => println!("election closed"),
///         (false, true) => println!("we lead"),
///         (false, false) => println!("{} leads ({})", event.leader_data, event.leader_key),
///     }
/// });
/// ```
#[derive(Clone, Debug, Default)]
pub struct ElectionEvent {
    /// True if our candidate is the leader.
    pub is_leader: bool,
    /// True on the very last event, after [`Election::close`].
    pub is_done: bool,
    /// The leader's key (`/elections/<name>/<lease hex>`), if known.
    pub leader_key: String,
    /// The leader's data: its candidate name, or what it proclaimed.
    pub leader_data: String,
    /// The error this event reports, if any.
    pub err: Option<Error>,
}

/// The Go package's old name for [`ElectionEvent`].
///
/// ```
/// #[allow(deprecated)]
/// let event: etcdutil::Event = etcdutil::ElectionEvent::default();
/// ```
#[deprecated(note = "use ElectionEvent")]
pub type Event = ElectionEvent;

/// Called with every [`ElectionEvent`], in order, never concurrently.
///
/// ```
/// let observer: etcdutil::EventObserver = std::sync::Arc::new(|event| println!("{event:?}"));
/// ```
pub type EventObserver = Arc<dyn Fn(ElectionEvent) + Send + Sync>;

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
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            event_observer: None,
            election: "null".into(),
            candidate: host_name(),
            ttl: DEFAULT_ELECTION_TTL,
        }
    }
}

impl std::fmt::Debug for ElectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElectionConfig")
            .field("election", &self.election)
            .field("candidate", &self.candidate)
            .field("ttl", &self.ttl)
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
    match client.election().leader(LeaderRequest { name }).await {
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
    let name = election_key(election)?;
    let (sender, receiver) = mpsc::unbounded_channel();
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    tokio::spawn(run_observe(client.clone(), name, report_tx, RETRY));
    // Only leaders: a moment with no candidate is not reported here.
    tokio::spawn(async move {
        loop {
            let report = tokio::select! {
                _ = sender.closed() => return,
                report = reports.recv() => report,
            };
            let item = match report {
                None => return,
                Some(Ok(Report { leader: None, .. })) => continue,
                Some(Ok(Report {
                    leader: Some(leader),
                    ..
                })) => Ok(leader),
                Some(Err(error)) => Err(error),
            };
            if sender.send(item).is_err() {
                return;
            }
        }
    });
    Ok(UnboundedReceiverStream::new(receiver))
}

/// What the handle and the session's observer share with the election task.
struct Shared {
    /// Read without a lock by `is_leader`.
    is_leader: AtomicBool,
    /// Our term while we lead; written together with `is_leader`.
    state: Mutex<State>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<ElectionEvent>>>,
    observer: Option<EventObserver>,
}

#[derive(Default)]
struct State {
    /// The session's current lease, or NO_LEASE.
    lease: i64,
    /// Our term, while we lead.
    term: Option<LeaderKey>,
}

impl Shared {
    /// Steps down at once, before anything is sent to etcd.
    fn step_down(&self, state: &mut State) {
        self.is_leader.store(false, Ordering::SeqCst);
        state.term = None;
    }

    fn emit(&self, event: ElectionEvent) {
        if let Some(observer) = &self.observer {
            observer(event.clone());
        }
        self.subscribers
            .lock()
            .expect("subscribers lock")
            .retain(|subscriber| subscriber.send(event.clone()).is_ok());
    }
}

enum Command {
    Concede(oneshot::Sender<Result<bool>>),
    /// Close, finishing by this instant.
    Close(Instant),
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
    ttl: Duration,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    done: watch::Receiver<bool>,
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
    let election = Election::start(client, config)?;
    let mut events = election.subscribe();
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
    Election::start(client, config)
}

impl Election {
    fn start(client: &Client, config: ElectionConfig) -> Result<Election> {
        let name = election_key(&config.election)?;
        let ttl = checked_ttl("ElectionConfig.ttl", config.ttl, DEFAULT_ELECTION_TTL)?;
        let shared = Arc::new(Shared {
            is_leader: AtomicBool::new(false),
            state: Mutex::new(State {
                lease: NO_LEASE,
                term: None,
            }),
            subscribers: Mutex::default(),
            observer: config.event_observer,
        });
        let (lease_tx, leases) = mpsc::unbounded_channel();
        let session_shared = shared.clone();
        let session = Session::new(
            client,
            SessionConfig {
                ttl,
                observer: Arc::new(move |lease, error| {
                    let mut state = session_shared.state.lock().expect("state lock");
                    if lease == NO_LEASE {
                        // Step down here, in the session's own call, before
                        // etcd can expire the lease.
                        session_shared.step_down(&mut state);
                    }
                    state.lease = lease;
                    let _ = lease_tx.send((lease, error));
                }),
            },
        )?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (observed_tx, observed) = mpsc::unbounded_channel();
        let (done_tx, done) = watch::channel(false);
        let task = Task {
            client: client.clone(),
            name: name.clone(),
            candidate: config.candidate,
            ttl: Duration::from_secs(ttl as u64),
            shared: shared.clone(),
            session,
            lease: NO_LEASE,
            campaign: None,
            as_of_rev: 0,
            last: None,
            our_rev: None,
            observe_to: Some(observed_tx),
            announced: false,
            held_back: None,
            observed: None,
            blockers: Vec::new(),
            blockers_gone: None,
        };
        tokio::spawn(async move {
            task.run(leases, observed, command_rx).await;
            let _ = done_tx.send(true);
        });
        Ok(Election {
            client: client.clone(),
            name,
            ttl: Duration::from_secs(ttl as u64),
            shared,
            commands,
            done,
        })
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
        self.shared.is_leader.load(Ordering::SeqCst)
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
        let state = self.shared.state.lock().expect("state lock");
        state.term.clone().filter(|_| self.is_leader())
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
        let (sender, receiver) = mpsc::unbounded_channel();
        self.shared
            .subscribers
            .lock()
            .expect("subscribers lock")
            .push(sender);
        receiver
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
        if self.commands.send(Command::Concede(reply)).is_err() {
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
            value: data.into().into_bytes(),
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
    /// let put = PutRequest { key: b"/jobs/owner".to_vec(), value: b"me".to_vec(), ..Default::default() };
    /// e.txn_if_leader(TxnRequest {
    ///     success: vec![RequestOp { request: Some(request_op::Request::RequestPut(put)) }],
    ///     ..Default::default()
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn txn_if_leader(&self, txn: TxnRequest) -> Result<TxnResponse> {
        let term = self.leader_key().ok_or(Error::NotLeader)?;
        let fenced = TxnRequest {
            compare: vec![created_at(term.key, term.rev)],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(txn)),
            }],
            failure: vec![],
        };
        let response = self.client.kv().txn(fenced).await?.into_inner();
        if !response.succeeded {
            return Err(Error::NotLeader);
        }
        match response
            .responses
            .into_iter()
            .next()
            .and_then(|r| r.response)
        {
            Some(response_op::Response::ResponseTxn(inner)) => Ok(inner),
            _ => Err(Error::UnexpectedResponse {
                what: "a nested Txn answered without its response".into(),
            }),
        }
    }

    /// Resigns if leading, withdraws the candidacy, revokes the lease and
    /// emits `{is_leader: false}` then `{is_done: true}`, the last event.
    ///
    /// Returns only once `{is_done: true}` was emitted, within TTL + 1 s even
    /// if etcd is unreachable (the Resign and the Revoke share that budget).
    /// When etcd is reachable, neither our key nor our lease is left in etcd
    /// when it returns. Idempotent: a second call waits for the first.
    ///
    /// ```no_run
    /// # async fn f(e: etcdutil::Election) { e.close().await; }
    /// ```
    pub async fn close(&self) {
        let deadline = Instant::now() + close_budget(self.ttl.as_secs() as i64);
        let _ = self.commands.send(Command::Close(deadline));
        let mut done = self.done.clone();
        // The task keeps to the deadline; an Err means it is gone already.
        let _ = done.wait_for(|done| *done).await;
    }
}

impl Drop for Election {
    /// Closes in the background: resigns, withdraws and revokes.
    fn drop(&mut self) {
        let deadline = Instant::now() + close_budget(self.ttl.as_secs() as i64);
        let _ = self.commands.send(Command::Close(deadline));
    }
}

/// How far a campaign got.
enum Step {
    /// Our key is in etcd: we are in the race, behind (or as) `leader`, and
    /// behind the Go package's candidates in `go_older`, as of `as_of_rev`.
    Entered {
        leader: Option<Leader>,
        our_rev: i64,
        go_older: Vec<Leader>,
        as_of_rev: i64,
    },
}

/// A step of a campaign, and how its call was sent (for `Transport::recover`).
type Campaign = Pin<Box<dyn Future<Output = (Attempt, Result<Step>)> + Send>>;

struct Task {
    client: Client,
    name: String,
    candidate: String,
    ttl: Duration,
    shared: Arc<Shared>,
    session: Session,
    /// The lease our candidacy stands on, or NO_LEASE.
    lease: i64,
    campaign: Option<Campaign>,
    /// The newest etcd revision our view of the election is current as of:
    /// an observer report from before it (say, still showing the key we just
    /// resigned) is stale and ignored.
    as_of_rev: i64,
    /// The last (is_leader, key, data) emitted, to report only changes.
    last: Option<(bool, String, String)>,
    /// Our key's create revision, while it is in etcd (as far as we know).
    our_rev: Option<i64>,
    /// Where the observer reports to, until it is started: once our key is
    /// in, so that its first report already counts us in the race.
    observe_to: Option<mpsc::UnboundedSender<Result<Report>>>,
    /// Whether any leader was reported yet. Until we are in the race, another
    /// leader is held back here, so the first outcome (what `new_election`
    /// waits for) means that we are a candidate behind that leader.
    announced: bool,
    held_back: Option<Leader>,
    /// The last leader Observe (or the entering Txn) reported, accepted.
    observed: Option<Leader>,
    /// Candidates of the Go package in this election (see [`go_candidates`])
    /// that entered before our key, oldest first: we defer to them.
    blockers: Vec<Leader>,
    /// Resolves once every blocker is deleted.
    blockers_gone: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Task {
    async fn run(
        mut self,
        mut leases: mpsc::UnboundedReceiver<(i64, Option<Error>)>,
        mut observed: mpsc::UnboundedReceiver<Result<Report>>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::Concede(reply)) => {
                        let _ = reply.send(self.concede().await);
                    }
                    Some(Command::Close(deadline)) => {
                        self.close(deadline).await;
                        return;
                    }
                    None => {
                        let deadline = Instant::now() + close_budget(self.ttl.as_secs() as i64);
                        self.close(deadline).await;
                        return;
                    }
                },
                Some((lease, error)) = leases.recv() => self.on_lease(lease, error),
                Some(report) = observed.recv() => match report {
                    Ok(report) => self.on_report(report),
                    Err(error) => self.emit_error(error),
                },
                () = async { self.blockers_gone.as_mut().expect("guarded").await }, if self.blockers_gone.is_some() => {
                    self.blockers_gone = None;
                    self.blockers.clear();
                    self.decide();
                }
                outcome = async { self.campaign.as_mut().expect("guarded").await }, if self.campaign.is_some() => {
                    self.campaign = None;
                    let (attempt, outcome) = outcome;
                    match outcome {
                        Ok(Step::Entered { leader, our_rev, go_older, as_of_rev }) => {
                            self.our_rev = Some(our_rev);
                            self.blockers_gone = (!go_older.is_empty()).then(|| {
                                let keys = go_older.iter().map(|go| go.key.clone().into_bytes()).collect();
                                Box::pin(until_deleted(self.client.clone(), keys, as_of_rev, RETRY)) as Pin<Box<_>>
                            });
                            self.blockers = go_older;
                            if let Some(observe_to) = self.observe_to.take() {
                                tokio::spawn(run_observe(self.client.clone(), self.name.clone(), observe_to, RETRY));
                            }
                            for leader in [self.held_back.take(), leader].into_iter().flatten() {
                                self.on_leader(leader);
                            }
                        }
                        Err(error) => {
                            let delay = if self.client.transport_ref().recover(&error, &attempt).await {
                                Duration::ZERO
                            } else {
                                self.emit_error(error);
                                RETRY
                            };
                            self.campaign = Some(self.enter_after(delay));
                        }
                    }
                }
            }
            self.keep_campaigning();
        }
    }

    /// Our candidate's key for `lease`, as etcd's Campaign writes it.
    fn our_key(&self, lease: i64) -> String {
        format!("{}/{:x}", self.name, lease)
    }

    fn on_lease(&mut self, lease: i64, error: Option<Error>) {
        self.lease = lease;
        // A campaign on the old lease is void; dropping it cancels the RPC.
        self.campaign = None;
        self.blockers.clear();
        self.blockers_gone = None;
        self.our_rev = None;
        if lease == NO_LEASE {
            // We stepped down in the session's observer already; say so, with
            // the cause if there was one (a reset has none).
            self.emit(ElectionEvent {
                err: error,
                ..ElectionEvent::default()
            });
        }
    }

    /// Whether `leader` is our key, on our current lease.
    fn is_ours(&self, leader: &Leader) -> bool {
        self.lease != NO_LEASE
            && leader.lease == self.lease
            && leader.key == self.our_key(self.lease)
    }

    fn on_report(&mut self, report: Report) {
        match report.leader {
            Some(leader) => self.on_leader(leader),
            None if report.as_of_rev >= self.as_of_rev => {
                // No candidate at all: our key is gone too (deleted by
                // someone else). Enter again; step down meanwhile.
                self.as_of_rev = report.as_of_rev;
                self.our_rev = None;
                if self.observed.take().is_some() {
                    let mut state = self.shared.state.lock().expect("state lock");
                    self.shared.step_down(&mut state);
                    drop(state);
                    self.emit(ElectionEvent::default());
                }
            }
            None => {}
        }
    }

    fn on_leader(&mut self, leader: Leader) {
        if leader.as_of_rev < self.as_of_rev {
            return;
        }
        self.as_of_rev = leader.as_of_rev;
        let ours = self.is_ours(&leader);
        if !self.announced && !ours && self.our_rev.is_none() {
            self.held_back = Some(leader);
            return;
        }
        self.announced = true;
        if self.our_rev.is_some_and(|our_rev| leader.rev > our_rev) {
            // A younger key leads: ours is gone. Enter again.
            self.our_rev = None;
        }
        self.observed = Some(leader);
        self.decide();
    }

    /// Leads if the observed leader is our key and no Go candidate entered
    /// before it; reports the leader otherwise (the oldest of the two).
    fn decide(&mut self) {
        let Some(observed) = self.observed.clone() else {
            return;
        };
        let ours = self.is_ours(&observed);
        let leader = match self.blockers.first() {
            Some(go) if go.rev < observed.rev => go.clone(),
            _ => observed,
        };
        let is_leader = {
            let mut state = self.shared.state.lock().expect("state lock");
            // The session may have lost the lease since this message was sent.
            if ours && self.blockers.is_empty() && state.lease == leader.lease {
                state.term = Some(LeaderKey {
                    name: self.name.clone().into_bytes(),
                    key: leader.key.clone().into_bytes(),
                    rev: leader.rev,
                    lease: leader.lease,
                });
                self.shared.is_leader.store(true, Ordering::SeqCst);
                true
            } else {
                self.shared.step_down(&mut state);
                false
            }
        };
        self.emit(ElectionEvent {
            is_leader,
            leader_key: leader.key,
            leader_data: leader.data,
            ..ElectionEvent::default()
        });
    }

    /// Enters the race whenever we hold a lease and our key is not in etcd.
    fn keep_campaigning(&mut self) {
        if self.lease != NO_LEASE && self.campaign.is_none() && self.our_rev.is_none() {
            self.campaign = Some(self.enter_after(Duration::ZERO));
        }
    }

    /// Puts our key if it is not there, as the first step of etcd's Campaign
    /// does, so that we know when we are in the race; and in the same Txn
    /// reads who leads (the oldest key), our key's create revision and the
    /// Go package's candidates, so the first outcome costs no more.
    fn enter_after(&self, delay: Duration) -> Campaign {
        let mut kv = self.client.kv();
        let name = self.name.clone();
        let our_key = self.our_key(self.lease).into_bytes();
        let absent = created_at(our_key.clone(), 0);
        let put = PutRequest {
            key: our_key.clone(),
            value: self.candidate.clone().into_bytes(),
            lease: self.lease,
            ..Default::default()
        };
        let reads = vec![
            oldest_in(prefix_range(&format!("{name}/")), 1),
            range_op(RangeRequest {
                key: our_key,
                ..Default::default()
            }),
            oldest_in(go_candidates(&name), GO_PAGE),
        ];
        let txn = TxnRequest {
            compare: vec![absent],
            success: [vec![request_op_put(put)], reads.clone()].concat(),
            failure: reads,
        };
        let client = self.client.clone();
        self.step_after(delay, async move {
            let response = kv.txn(txn).await?.into_inner();
            let as_of_rev = response.header.map_or(0, |h| h.revision);
            let mut ranges = response
                .responses
                .into_iter()
                .rev()
                .map(|r| match r.response {
                    Some(response_op::Response::ResponseRange(range)) => Ok(range),
                    _ => Err(Error::UnexpectedResponse {
                        what: "the candidacy Txn answered a read with no range".into(),
                    }),
                });
            let (go, ours, oldest) = match (ranges.next(), ranges.next(), ranges.next()) {
                (Some(go), Some(ours), Some(oldest)) => (go?, ours?, oldest?),
                _ => {
                    return Err(Error::UnexpectedResponse {
                        what: "the candidacy Txn answered fewer reads than asked".into(),
                    });
                }
            };
            let our_rev = ours.kvs.first().map_or(as_of_rev, |kv| kv.create_revision);
            let go_older = go_candidates_before(&client, &name, go, our_rev, as_of_rev).await?;
            Ok(Step::Entered {
                leader: oldest.kvs.first().map(|kv| Leader::new(kv, as_of_rev)),
                our_rev,
                go_older: go_older
                    .iter()
                    .map(|kv| Leader::new(kv, as_of_rev))
                    .collect(),
                as_of_rev,
            })
        })
    }

    /// Runs a campaign step's call after `delay`, noting how it was sent.
    fn step_after(
        &self,
        delay: Duration,
        call: impl Future<Output = Result<Step>> + Send + 'static,
    ) -> Campaign {
        let transport = self.client.transport();
        Box::pin(async move {
            if !delay.is_zero() {
                // (Even a zero sleep waits for the timer's next 1 ms tick.)
                tokio::time::sleep(delay).await;
            }
            let attempt = transport.attempt();
            (attempt, call.await)
        })
    }

    /// Steps down now; returns the term we held, if any.
    fn step_down(&mut self) -> Option<LeaderKey> {
        let mut state = self.shared.state.lock().expect("state lock");
        let term = state
            .term
            .clone()
            .filter(|_| self.shared.is_leader.load(Ordering::SeqCst));
        self.shared.step_down(&mut state);
        term
    }

    async fn concede(&mut self) -> Result<bool> {
        let Some(term) = self.step_down() else {
            return Ok(false);
        };
        self.emit(ElectionEvent::default());
        match resign(&self.client, term, self.ttl / 2).await {
            // Observe messages from before the Resign would show our old key.
            Ok(revision) => {
                self.as_of_rev = self.as_of_rev.max(revision);
                self.our_rev = None; // enter again, behind the others
            }
            Err(error) => {
                // Our key may still hold the office, and we no longer take it
                // for ours: give up the lease, so the key goes and we start over.
                self.session.reset();
                return Err(error);
            }
        }
        Ok(true)
    }

    async fn close(mut self, deadline: Instant) {
        let term = self.step_down();
        self.campaign = None;
        self.blockers_gone = None;
        // The closing pair goes out whatever was reported before.
        self.last = None;
        self.emit(ElectionEvent::default());
        if let Some(term) = term {
            // Best effort: the revoke below deletes the key anyway. Half the
            // TTL at most, so the revoke keeps some of the budget.
            let limit = (self.ttl / 2).min(deadline.saturating_duration_since(Instant::now()));
            let _ = resign(&self.client, term, limit).await;
        }
        self.session.close_by(deadline).await;
        self.emit(ElectionEvent {
            is_done: true,
            ..ElectionEvent::default()
        });
    }

    fn emit_error(&mut self, error: Error) {
        let mut event = ElectionEvent {
            err: Some(error),
            ..ElectionEvent::default()
        };
        event.is_leader = self.shared.is_leader.load(Ordering::SeqCst);
        if let Some((_, key, data)) = &self.last {
            event.leader_key = key.clone();
            event.leader_data = data.clone();
        }
        self.emit(event);
    }

    /// Emits `event` unless it repeats the last one; errors always go out.
    fn emit(&mut self, event: ElectionEvent) {
        let now = (
            event.is_leader,
            event.leader_key.clone(),
            event.leader_data.clone(),
        );
        if event.err.is_none() && !event.is_done && self.last.as_ref() == Some(&now) {
            return;
        }
        self.last = Some(now);
        self.shared.emit(event);
    }
}

/// A Txn compare: `key` was created at revision `rev` (0: does not exist).
fn created_at(key: Vec<u8>, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key,
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        range_end: vec![],
    }
}

/// The Go package (`holster/etcdutil`) writes its candidate key as
/// `/elections/<name><lease in hex>`, with no `/` in between, and takes the
/// oldest key under the prefix `/elections/<name>` for the leader, ours
/// included. Its candidates live in the key range from `<prefix>0` to
/// `<prefix>g` (hex digits start with 0-9 or a-f); which of those keys are
/// really candidates of this election is told by [`is_go_candidate`].
fn go_candidates(name: &str) -> (Vec<u8>, Vec<u8>) {
    (
        format!("{name}0").into_bytes(),
        format!("{name}g").into_bytes(),
    )
}

/// A Go candidate's key is the election's prefix followed by exactly the hex
/// of the lease it is attached to: so election `foo` never takes a key of
/// election `foobar` (`/elections/foobar/..`) or Go election `fooab`'s
/// (`/elections/fooab12..`, whose lease is `ab12..`, not `12..`) for its own.
fn is_go_candidate(name: &str, kv: &KeyValue) -> bool {
    kv.lease > 0
        && kv.key.strip_prefix(name.as_bytes()) == Some(format!("{:x}", kv.lease).as_bytes())
}

/// How many keys of the Go range one read brings.
const GO_PAGE: i64 = 16;

/// The Go candidates created before revision `our_rev`, oldest first, from
/// the first page `first` of the Go range read as of `as_of_rev`. Reads more
/// pages only if that one was full of older keys (keys of other elections
/// whose names extend ours): with no Go candidate, it costs no round trip.
async fn go_candidates_before(
    client: &Client,
    name: &str,
    first: RangeResponse,
    our_rev: i64,
    as_of_rev: i64,
) -> Result<Vec<KeyValue>> {
    let mut older = Vec::new();
    let mut page = first;
    loop {
        let last_rev = page.kvs.last().map_or(0, |kv| kv.create_revision);
        older.extend(
            page.kvs
                .into_iter()
                .filter(|kv| kv.create_revision < our_rev && is_go_candidate(name, kv)),
        );
        if !page.more || last_rev + 1 >= our_rev {
            return Ok(older);
        }
        let (key, range_end) = go_candidates(name);
        let request = RangeRequest {
            key,
            range_end,
            revision: as_of_rev,
            min_create_revision: last_rev + 1,
            max_create_revision: our_rev - 1,
            ..oldest_first(GO_PAGE)
        };
        page = client.kv().range(request).await?.into_inner();
    }
}

/// A Range of the keys from `range.0` up to `range.1`, oldest first, at most `limit`.
fn oldest_in(range: (Vec<u8>, Vec<u8>), limit: i64) -> RequestOp {
    let (key, range_end) = range;
    range_op(RangeRequest {
        key,
        range_end,
        ..oldest_first(limit)
    })
}

fn range_op(range: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(range)),
    }
}

fn request_op_put(put: PutRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put)),
    }
}

/// Ends a term: deletes the leader key if its create revision is still the term's.
/// Returns the revision etcd answered at.
async fn resign(client: &Client, term: LeaderKey, limit: Duration) -> Result<i64> {
    let mut election = client.election();
    let resign = election.resign(ResignRequest { leader: Some(term) });
    match tokio::time::timeout(limit, resign).await {
        Ok(result) => {
            let response = result?.into_inner();
            Ok(response.header.map_or(0, |h| h.revision))
        }
        Err(_) => Err(Error::Timeout {
            what: "Resign",
            after: limit,
        }),
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
    fn go_candidates_are_the_prefix_then_their_own_lease_in_hex() {
        let kv = |key: &str, lease: i64| KeyValue {
            key: key.as_bytes().to_vec(),
            lease,
            ..Default::default()
        };
        let foo = "/elections/foo";
        assert!(is_go_candidate(foo, &kv("/elections/fooab12", 0xab12)));
        // Another Go election's candidate: "fooab" with lease 0x12.
        assert!(!is_go_candidate(foo, &kv("/elections/fooab12", 0x12)));
        assert!(is_go_candidate(
            "/elections/fooab",
            &kv("/elections/fooab12", 0x12)
        ));
        // Ours, and election "foobar"'s: not Go candidates of "foo".
        assert!(!is_go_candidate(foo, &kv("/elections/foo/ab12", 0xab12)));
        assert!(!is_go_candidate(foo, &kv("/elections/foobar/ab12", 0xab12)));
        // A key without a lease is no candidate.
        assert!(!is_go_candidate(foo, &kv("/elections/foo0", 0)));
        let (start, end) = go_candidates(foo);
        assert!(start.as_slice() <= b"/elections/foo0".as_slice());
        assert!(b"/elections/foof".as_slice() < end.as_slice());
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
