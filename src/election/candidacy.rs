//! The election's driver: the task behind an [`Election`](crate::Election)
//! handle, and the glue between etcd's messages and the candidacy core.
//!
//! Every decision is the core's (`election/core.rs`). The task feeds it one
//! input at a time (a command from the handle, the session's lease, an
//! observer report, the candidacy Txn's or the Resign's answer, a timer),
//! copies `is_leader()` to the handle's flag, then executes the actions the
//! core queued: send the Txn, watch the Go candidates, resign, reset the
//! session, emit events. The session's observer feeds the core the lease's
//! loss in its own call, under the same lock, so the step-down does not wait
//! for this task.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::client::Client;
use crate::client::transport::Attempt;
use crate::client::txn::{created_at, oldest_first, oldest_in, prefix_range, put_op, range_op};
use crate::election::Engine;
use crate::election::core::{Action, Candidacy, Entered, candidate_key};
use crate::election::leadership::Leadership;
use crate::election::observe::{Leader, Observed, run_observe, until_deleted};
use crate::election::server_side;
use crate::error::{Error, Result};
use crate::event::{ElectionEvent, EventObserver};
use crate::lost::LostSender;
use crate::proto::etcdserverpb::{
    PutRequest, RangeRequest, RangeResponse, TxnRequest, TxnResponse, response_op,
};
use crate::proto::mvccpb::KeyValue;
use crate::proto::v3electionpb::{LeaderKey, ResignRequest};
use crate::session::core::safety_margin;
use crate::session::{Attachment, Session};
use crate::telemetry;

pub(crate) use crate::election::core::RETRY;

/// What the handle, the session's observer and the election task share.
pub(crate) struct Shared {
    /// The election's key prefix, for events and metrics.
    name: String,
    /// The core's `is_leader()`, copied after every input; read without a lock.
    is_leader: AtomicBool,
    core: Mutex<Guarded>,
    /// Wakes the task: the session's observer queued actions.
    wake: Notify,
    /// Wakes those waiting for a term (`Election::leadership`).
    published: Notify,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<ElectionEvent>>>,
    observer: Option<EventObserver>,
    /// What the handle asked of the task, in order: a queue and the wake-up
    /// rather than a channel, which would cost every election a kilobyte.
    requests: Mutex<Requests>,
}

#[derive(Default)]
struct Requests {
    queue: VecDeque<Request>,
    /// The task has ended: nobody will take a request.
    finished: bool,
}

/// What the handle asks of the election task.
pub(crate) enum Request {
    Concede(oneshot::Sender<Result<bool>>),
    /// Close, finishing by `by`. `resign`: false when the lease is revoked
    /// right after (the session closes), whose revoke deletes the key in
    /// the same commit a Resign would have taken.
    Close {
        by: Instant,
        resign: bool,
    },
}

/// The core, and the term last published (for the step-down's log line).
struct Guarded {
    core: Candidacy,
    published: Option<LeaderKey>,
    /// The term's loss signal, fired as `is_leader` turns false.
    lost: Option<LostSender>,
    /// The term as handed out, while we lead.
    leadership: Option<Leadership>,
    /// How long after a step-down someone else may lead at the earliest,
    /// should the step-down come from the lease's loss now being reported.
    lease_grace: Duration,
    /// When someone else may lead at the earliest, after our last term.
    next_leader_earliest: Option<Instant>,
}

impl Shared {
    pub(crate) fn new(name: String, core: Candidacy, observer: Option<EventObserver>) -> Shared {
        Shared {
            core: Mutex::new(Guarded {
                core,
                published: None,
                lost: None,
                leadership: None,
                lease_grace: Duration::ZERO,
                next_leader_earliest: None,
            }),
            name,
            is_leader: AtomicBool::new(false),
            wake: Notify::new(),
            published: Notify::new(),
            subscribers: Mutex::default(),
            observer,
            requests: Mutex::default(),
        }
    }

    /// Queues `request` for the task; false if the task has ended.
    pub(crate) fn request(&self, request: Request) -> bool {
        let mut requests = self.requests.lock().expect("requests lock");
        if requests.finished {
            return false;
        }
        requests.queue.push_back(request);
        self.wake.notify_one();
        true
    }

    fn next_request(&self) -> Option<Request> {
        self.requests
            .lock()
            .expect("requests lock")
            .queue
            .pop_front()
    }

    /// The task ends: requests from now on are refused, and those queued
    /// are dropped (a `concede` waiting on one answers `false`).
    fn finish(&self) {
        let mut requests = self.requests.lock().expect("requests lock");
        requests.finished = true;
        requests.queue.clear();
        drop(requests);
        self.published.notify_waiters();
    }

    /// Feeds an observer's report to the core. Called inside the task (its
    /// observer is polled there): the wake-up makes the task execute the
    /// actions it queued.
    fn observed(&self, report: Result<Observed>) {
        self.input(|core| match report {
            Ok(Observed::Watching) => core.on_watching(),
            Ok(Observed::Report(report)) => core.on_report(report),
            Err(error) => core.on_observer_failed(error),
        });
        self.wake.notify_one();
    }

    /// Whether we lead now, as the core last said.
    pub(crate) fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::SeqCst)
    }

    /// Our term, while we lead.
    pub(crate) fn term(&self) -> Option<LeaderKey> {
        self.lock().core.term().cloned()
    }

    /// Gives the core one input, then publishes `is_leader()` before anything
    /// else can happen.
    pub(crate) fn input<R>(&self, input: impl FnOnce(&mut Candidacy) -> R) -> R {
        let mut guarded = self.lock();
        let result = input(&mut guarded.core);
        self.publish(&mut guarded);
        result
    }

    /// The session's news of the lease, in the session's own call: the
    /// task executes the actions the core queued.
    pub(crate) fn on_lease(&self, lease: Option<i64>, error: Option<Error>, ttl: Duration) {
        let mut guarded = self.lock();
        // A lease etcd said is gone, or one we gave up (its revoke may land
        // at once), can hold nothing any more; one whose keepalives went
        // unanswered lasts in etcd at least the margin its deadline keeps.
        guarded.lease_grace = match &error {
            None | Some(Error::LeaseExpired { .. } | Error::LeaseNotFound(_)) => Duration::ZERO,
            Some(_) => safety_margin(ttl),
        };
        guarded.core.on_lease(lease, error);
        self.publish(&mut guarded);
        guarded.lease_grace = Duration::ZERO;
        drop(guarded);
        self.wake.notify_one();
    }

    /// Our term as a value, while we lead.
    pub(crate) fn leadership(&self) -> Option<Leadership> {
        self.lock().leadership.clone()
    }

    /// When someone else may lead at the earliest, after our last term.
    pub(crate) fn next_leader_earliest(&self) -> Option<Instant> {
        self.lock().next_leader_earliest
    }

    /// Waits until the task has ended (closed).
    pub(crate) async fn wait_finished(&self) {
        loop {
            let published = self.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            if self.requests.lock().expect("requests lock").finished {
                return;
            }
            published.await;
        }
    }

    /// Waits until we lead; `Err(Closed)` once the election has closed.
    pub(crate) async fn wait_for_leadership(&self) -> Result<Leadership> {
        loop {
            let published = self.published.notified();
            tokio::pin!(published);
            // Registered before the checks, so a term published in between
            // is not missed.
            published.as_mut().enable();
            if let Some(leadership) = self.leadership() {
                return Ok(leadership);
            }
            if self.requests.lock().expect("requests lock").finished {
                return Err(Error::Closed);
            }
            published.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Guarded> {
        self.core.lock().expect("candidacy lock")
    }

    fn publish(&self, guarded: &mut Guarded) {
        let term = guarded.core.term();
        if term == guarded.published.as_ref() {
            return;
        }
        let leads = term.is_some();
        self.is_leader.store(leads, Ordering::SeqCst);
        // In the same call: the term's holders learn of its end the instant
        // `is_leader()` says so.
        if let Some(lost) = guarded.lost.take() {
            lost.lose();
            guarded.leadership = None;
            guarded.next_leader_earliest = Some(Instant::now() + guarded.lease_grace);
        }
        if let Some(term) = term {
            let (sender, lost) = LostSender::new();
            guarded.lost = Some(sender);
            guarded.leadership = Some(Leadership::new(term, lost));
            guarded.next_leader_earliest = None;
        }
        self.published.notify_waiters();
        let term = guarded.core.term();
        let shown = term.or(guarded.published.as_ref());
        let key = shown.map(|t| String::from_utf8_lossy(&t.key).into_owned());
        let rev = shown.map(|t| t.rev);
        if leads {
            tracing::info!(target: telemetry::TARGET, election = %self.name, key = key.as_deref(), rev, "leadership gained");
        } else {
            tracing::info!(target: telemetry::TARGET, election = %self.name, key = key.as_deref(), rev, "leadership lost");
        }
        if leads != guarded.published.is_some() {
            telemetry::is_leader(&self.name, leads);
        }
        guarded.published = term.cloned();
    }

    /// A receiver of every event from now on.
    pub(crate) fn subscribe(&self) -> mpsc::UnboundedReceiver<ElectionEvent> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .expect("subscribers lock")
            .push(sender);
        receiver
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

/// The candidacy Txn in flight: the lease it is for, how its call was sent
/// (for `Client::recover`), and what it found.
type Step = Pin<Box<dyn Future<Output = (i64, Attempt, Result<Entered>)> + Send>>;

/// A Resign in flight for a `concede`, and the caller waiting for it.
struct Conceding {
    /// The term it resigns.
    term: LeaderKey,
    resign: Pin<Box<dyn Future<Output = Result<i64>> + Send>>,
    reply: Option<oneshot::Sender<Result<bool>>>,
}

pub(crate) struct Task {
    client: Client,
    engine: Engine,
    /// The lease of a server-side Campaign in flight (see `close`).
    campaigning: Option<i64>,
    name: String,
    candidate: String,
    ttl: Duration,
    shared: Arc<Shared>,
    /// The session, when the election has one of its own.
    own_session: Option<Session>,
    /// Our place on the session's lease, until we close.
    attachment: Option<Attachment>,
    /// Who leads, followed with one watch; polled by this task, it feeds the
    /// core in its own poll.
    observer: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The I/O the core asked for, in flight.
    step: Option<Step>,
    blockers: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Boxed: rare, and inline it would make every election's task larger.
    conceding: Option<Box<Conceding>>,
    /// A `concede` caller, until the core's Resign action goes out.
    concede_reply: Option<oneshot::Sender<Result<bool>>>,
}

impl Task {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: &Client,
        engine: Engine,
        name: String,
        candidate: String,
        ttl: Duration,
        shared: Arc<Shared>,
        own_session: Option<Session>,
        attachment: Attachment,
    ) -> Task {
        // The observer first: the candidacy waits for its watch.
        let feed = shared.clone();
        let sink = move |report| {
            feed.observed(report);
            true
        };
        let observer: Pin<Box<dyn Future<Output = ()> + Send>> = match engine {
            Engine::ClientSide => Box::pin(run_observe(client.clone(), name.clone(), sink, RETRY)),
            Engine::ServerSide => Box::pin(server_side::run_observe(
                client.clone(),
                name.clone(),
                sink,
                RETRY,
            )),
        };
        Task {
            client: client.clone(),
            engine,
            campaigning: None,
            name,
            candidate,
            ttl,
            shared,
            own_session,
            attachment: Some(attachment),
            observer,
            step: None,
            blockers: None,
            conceding: None,
            concede_reply: None,
        }
    }

    /// Runs until closed: one input at a time, the handle's requests first.
    pub(crate) async fn run(mut self) {
        loop {
            self.execute();
            match self.shared.next_request() {
                Some(Request::Concede(reply)) => {
                    self.concede(reply);
                    continue;
                }
                // Boxed: closing is once, and inline it would make every
                // election's task as large as the close's calls.
                Some(Request::Close { by, resign }) => {
                    Box::pin(self.close(by, resign)).await;
                    return;
                }
                None => {}
            }
            let timer = self.shared.lock().core.next_timer();
            let now = tokio::select! {
                biased;
                () = self.shared.wake.notified() => continue,
                // Never ends: its sink always listens.
                () = self.observer.as_mut() => {
                    self.observer = Box::pin(std::future::pending());
                    continue;
                }
                () = async { self.blockers.as_mut().expect("guarded").await }, if self.blockers.is_some() => {
                    self.blockers = None;
                    self.shared.input(Candidacy::on_blockers_gone);
                    continue;
                }
                (lease, attempt, outcome) = async { self.step.as_mut().expect("guarded").await }, if self.step.is_some() => {
                    self.step = None;
                    self.campaigning = None;
                    let now = Instant::now();
                    match outcome {
                        Ok(entered) => self.shared.input(|core| core.on_txn_answered(now, lease, entered)),
                        Err(error) => {
                            // Boxed: rare, and inline it would make every
                            // election's task as large as a token renewal's call.
                            let renewed = Box::pin(self.client.recover(&error, &attempt)).await;
                            self.shared.input(|core| core.on_txn_failed(Instant::now(), lease, error, renewed));
                        }
                    }
                    continue;
                }
                outcome = async { self.conceding.as_mut().expect("guarded").resign.as_mut().await }, if self.conceding.is_some() => {
                    let reply = self.conceding.take().and_then(|c| c.reply);
                    let answer = match outcome {
                        Ok(revision) => {
                            self.shared.input(|core| core.on_resign_answered(revision));
                            Ok(true)
                        }
                        Err(error) => {
                            self.shared.input(|core| core.on_resign_failed(Instant::now()));
                            Err(error)
                        }
                    };
                    if let Some(reply) = reply {
                        let _ = reply.send(answer);
                    }
                    continue;
                }
                () = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => Instant::now(),
            };
            self.shared.input(|core| core.on_timer(now));
        }
    }

    /// Executes the actions the core queued, in order; then drops the I/O it
    /// no longer wants (a Txn on a lost lease, a watch of Go candidates).
    fn execute(&mut self) {
        loop {
            let Some(action) = self.shared.lock().core.poll_action() else {
                break;
            };
            match action {
                Action::SendTxn { lease } => self.step = Some(self.candidacy_step(lease)),
                Action::WatchBlockers { keys, as_of_rev } => {
                    let keys = keys.into_iter().map(String::into_bytes).collect();
                    let gone = until_deleted(self.client.clone(), keys, as_of_rev, RETRY);
                    self.blockers = Some(Box::pin(gone));
                }
                Action::Resign(term) => {
                    let resign = resign(self.client.clone(), term.clone(), self.ttl / 2);
                    self.conceding = Some(Box::new(Conceding {
                        term,
                        resign: Box::pin(resign),
                        reply: self.concede_reply.take(),
                    }));
                }
                // Asked for only when the session is ours (see the core).
                Action::ResetSession => {
                    if let Some(session) = &self.own_session {
                        session.reset();
                    }
                }
                Action::Emit(event) => self.shared.emit(event),
                Action::LeaderChanged => telemetry::leader_changed(&self.name),
                Action::Led { since } => telemetry::time_to_lead(&self.name, since.elapsed()),
            }
        }
        let guarded = self.shared.lock();
        if !guarded.core.entering() {
            // A server-side Campaign is cancelled here too: etcd's does
            // not end by itself when the lease is lost.
            self.step = None;
        }
        if !guarded.core.awaits_blockers() {
            self.blockers = None;
        }
    }

    /// `concede`: the core steps down and asks for the Resign; its answer
    /// goes to `reply`.
    fn concede(&mut self, reply: oneshot::Sender<Result<bool>>) {
        if self.shared.input(Candidacy::on_concede) {
            self.concede_reply = Some(reply);
        } else {
            let _ = reply.send(Ok(false));
        }
    }

    /// Steps down, resigns unless a revoke of the lease follows (the
    /// session's, or our own session's close), and closes our own session.
    async fn close(mut self, deadline: Instant, resign_first: bool) {
        let term = self.shared.input(Candidacy::on_close);
        // The closing event; anything in flight is dropped, but a concede
        // caller is answered once the close has taken our key away.
        self.execute();
        let (conceding_term, conceded) = match self.conceding.take() {
            Some(conceding) => (Some(conceding.term), conceding.reply),
            None => (None, None),
        };
        let conceded = conceded.or(self.concede_reply.take());
        // A Resign dropped in flight may not have reached etcd: send it again.
        let term = term.or(conceding_term);
        self.observer = Box::pin(std::future::pending());
        // When the lease is revoked next (our own session's close, or the
        // session closing us), the revoke deletes our key: one commit, not
        // two. Otherwise (an election on a shared session closed alone) the
        // Resign does, within half the TTL.
        let revoked = !resign_first || self.own_session.is_some();
        if let (Some(term), false) = (term, revoked) {
            let limit = (self.ttl / 2).min(deadline.saturating_duration_since(Instant::now()));
            let _ = resign(self.client.clone(), term, limit).await;
        }
        // A Campaign dropped in flight on a lease that stays: its key, if
        // etcd put it, is ours to delete.
        if let (Some(lease), false) = (self.campaigning.take(), revoked) {
            let key = candidate_key(&self.name, lease);
            let limit = (self.ttl / 2).min(deadline.saturating_duration_since(Instant::now()));
            let _ = tokio::time::timeout(limit, server_side::withdraw(&self.client, key)).await;
        }
        // Off the session's lease first: a session closes the elections
        // on it, and this one is closing.
        self.attachment = None;
        if let Some(session) = &self.own_session {
            session.close_by(deadline).await;
        }
        if let Some(reply) = conceded {
            let _ = reply.send(Ok(true));
        }
        self.shared.emit(ElectionEvent {
            is_done: true,
            ..ElectionEvent::default()
        });
        // Last: `close()` returns once this is set, after `is_done` went out.
        self.shared.finish();
    }

    /// The candidacy Txn for `lease`, with the pages of Go candidates it
    /// needs; or, with the server-side engine, etcd's Campaign.
    fn candidacy_step(&mut self, lease: i64) -> Step {
        let client = self.client.clone();
        let name = self.name.clone();
        if self.engine == Engine::ServerSide {
            self.campaigning = Some(lease);
            let candidate = self.candidate.clone();
            return Box::pin(async move {
                let attempt = client.attempt();
                // No turn taken: a Campaign waits until we lead.
                let outcome = server_side::campaign(&client, &name, lease, &candidate).await;
                (lease, attempt, outcome)
            });
        }
        let txn = candidacy_txn(&name, lease, &self.candidate);
        Box::pin(async move {
            let attempt = client.attempt();
            // The turn first, then the call's large future: 10,000
            // elections entering at once wait in a few hundred bytes each.
            let _permit = client.call_permit().await;
            let outcome = Box::pin(async {
                let response = client.kv().txn(txn).await?.into_inner();
                let (mut entered, mut next) = parse_candidacy(&name, response)?;
                while let Some(read) = next {
                    let page = client.kv().range(read).await?.into_inner();
                    next = go_page(&name, page, &mut entered);
                }
                Ok(entered)
            });
            (lease, attempt, outcome.await)
        })
    }
}

/// The candidacy Txn: puts our key on `lease` if it is not there, as the
/// first step of etcd's Campaign does, so that we know when we are in the
/// race; and in the same Txn reads who leads (the oldest key), our key's
/// create revision and the Go package's candidates, so the first outcome
/// costs no more.
pub fn candidacy_txn(name: &str, lease: i64, candidate: &str) -> TxnRequest {
    let our_key = candidate_key(name, lease).into_bytes();
    let put = PutRequest {
        key: our_key.clone().into(),
        value: candidate.to_owned().into(),
        lease,
        ..Default::default()
    };
    let reads = vec![
        oldest_in(prefix_range(&format!("{name}/")), 1),
        range_op(RangeRequest {
            key: our_key.clone().into(),
            ..Default::default()
        }),
        oldest_in(go_candidates(name), GO_PAGE),
    ];
    TxnRequest {
        compare: vec![created_at(our_key, 0)],
        success: [vec![put_op(put)], reads.clone()].concat(),
        failure: reads,
    }
}

/// What the candidacy Txn found, from its answer; with the read of the next
/// page of Go candidates when the first was full of older keys.
pub(crate) fn parse_candidacy(
    name: &str,
    response: TxnResponse,
) -> Result<(Entered, Option<RangeRequest>)> {
    let as_of_rev = response.header.map_or(0, |h| h.revision);
    let [oldest, ours, go] = last_ranges(response.responses)?;
    let our_rev = ours.kvs.first().map_or(as_of_rev, |kv| kv.create_revision);
    let mut entered = Entered {
        leader: oldest.kvs.first().map(|kv| Leader::new(kv, as_of_rev)),
        our_rev,
        go_older: Vec::new(),
        as_of_rev,
    };
    let next = go_page(name, go, &mut entered);
    Ok((entered, next))
}

/// What the candidacy Txn found, from its answer alone: the simulator's
/// glue, whose elections never fill a page of Go candidates.
pub fn entered(name: &str, response: TxnResponse) -> Result<Entered> {
    parse_candidacy(name, response).map(|(entered, _)| entered)
}

/// The last three answers of the candidacy Txn, which are its reads.
fn last_ranges(
    responses: Vec<crate::proto::etcdserverpb::ResponseOp>,
) -> Result<[RangeResponse; 3]> {
    let unexpected = |what: &str| Error::UnexpectedResponse { what: what.into() };
    let ranges: Vec<RangeResponse> = responses
        .into_iter()
        .rev()
        .take(3)
        .map(|r| match r.response {
            Some(response_op::Response::ResponseRange(range)) => Ok(range),
            _ => Err(unexpected(
                "the candidacy Txn answered a read with no range",
            )),
        })
        .collect::<Result<_>>()?;
    let [go, ours, oldest]: [RangeResponse; 3] = ranges
        .try_into()
        .map_err(|_| unexpected("the candidacy Txn answered fewer reads than asked"))?;
    Ok([oldest, ours, go])
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
pub fn is_go_candidate(name: &str, kv: &KeyValue) -> bool {
    kv.lease > 0
        && kv.key.strip_prefix(name.as_bytes()) == Some(format!("{:x}", kv.lease).as_bytes())
}

/// How many keys of the Go range one read brings.
const GO_PAGE: i64 = 16;

/// Adds the Go candidates created before our key from `page`, a page of
/// the Go range read as of `entered.as_of_rev`; returns the read of the
/// next page if this one was full of older keys (keys of other elections
/// whose names extend ours). With no Go candidate, there is no next page.
pub(crate) fn go_page(
    name: &str,
    page: RangeResponse,
    entered: &mut Entered,
) -> Option<RangeRequest> {
    let our_rev = entered.our_rev;
    let last_rev = page.kvs.last().map_or(0, |kv| kv.create_revision);
    entered.go_older.extend(
        page.kvs
            .iter()
            .filter(|kv| kv.create_revision < our_rev && is_go_candidate(name, kv))
            .map(|kv| Leader::new(kv, entered.as_of_rev)),
    );
    if !page.more || last_rev + 1 >= our_rev {
        return None;
    }
    Some(go_read(name, entered.as_of_rev, last_rev + 1, our_rev))
}

/// A page of the Go candidates created from `min_rev` on, before our key
/// (created at `our_rev`), as of revision `as_of_rev`.
pub(crate) fn go_read(name: &str, as_of_rev: i64, min_rev: i64, our_rev: i64) -> RangeRequest {
    let (key, range_end) = go_candidates(name);
    RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        revision: as_of_rev,
        min_create_revision: min_rev,
        max_create_revision: our_rev - 1,
        ..oldest_first(GO_PAGE)
    }
}

/// Ends a term: deletes the leader key if its create revision is still the
/// term's. Returns the revision etcd answered at.
async fn resign(client: Client, term: LeaderKey, limit: Duration) -> Result<i64> {
    // No turn to wait for: a handover must not queue behind entries.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An election is a few kilobytes (10,000 fit in 64 MiB): its observer
    /// is polled in its task, and rare, large futures (closing, a token
    /// renewal, the observer's first read) are boxed.
    #[test]
    fn an_election_task_stays_small() {
        struct Nothing;
        impl crate::client::Closable for Nothing {
            fn close_by(&self, _: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
                Box::pin(async {})
            }
            fn ttl(&self) -> i64 {
                5
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = Client::connect_lazy(crate::Config::default()).unwrap();
            let session = Session::start(&client, crate::SessionConfig::default()).unwrap();
            let name = "/elections/x".to_owned();
            let core = Candidacy::new(name.clone());
            let shared = Arc::new(Shared::new(name.clone(), core, None));
            let attachment = session
                .attach(Arc::new(|_, _| {}), Arc::new(Nothing))
                .unwrap();
            let task = Task::new(
                &client,
                Engine::ClientSide,
                name,
                "c".into(),
                Duration::from_secs(5),
                shared,
                None,
                attachment,
            );
            let observer = std::mem::size_of_val(&*task.observer);
            let run = std::mem::size_of_val(&task.run());
            assert!(run <= 1024, "an election's task is {run} bytes");
            assert!(
                observer <= 768,
                "an election's observer is {observer} bytes"
            );
        });
    }

    #[test]
    fn go_candidates_are_the_prefix_then_their_own_lease_in_hex() {
        let kv = |key: &str, lease: i64| KeyValue {
            key: key.to_owned().into(),
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
}
