//! One candidacy in one election: the task behind an [`Election`](crate::Election) handle.
//!
//! The task is a state machine. Its [`Phase`] says where the candidacy
//! stands; each input has one method that moves it:
//!
//! | phase | input | next phase |
//! |---|---|---|
//! | any | lease lost ([`on_lease`](Task::on_lease), `NO_LEASE`) | `NoLease` (the session stepped us down already) |
//! | any | lease gained (`on_lease`) | `Entering` |
//! | `Entering` | candidacy Txn answered ([`on_step`](Task::on_step)) | `InRace`, then [`decide`](Task::decide) |
//! | `Entering` | candidacy Txn failed (`on_step`) | `Entering` again, after 500 ms (at once after a token renewal) |
//! | `InRace`, `Leading` | observer report ([`on_report`](Task::on_report)) | `decide`: `Leading` or `InRace`; `Entering` if our key is gone |
//! | `InRace` | the older Go candidates are gone ([`on_blockers_gone`](Task::on_blockers_gone)) | `decide` |
//! | `Leading` | `concede` ([`on_command`](Task::on_command)) | `Conceding`, then `Entering` (behind the others) or, if the Resign failed, `NoLease` (the lease is reset) |
//! | any | `close` (`on_command`) | `Closing`, the end |
//!
//! `decide` leads only in `InRace` or `Leading`, and only while the newest
//! observer report shows our key (on our current lease) as the leader, no
//! report older than one acted on counts, the session takes the lease for
//! alive, and no Go-package candidate older than our key stands. Stepping
//! down never waits for etcd: `is_leader()` is cleared first.
//!
//! The observer (see `observe`) starts with the task, and the candidacy Txn
//! is sent only once its watch exists (it is created while the lease is
//! granted): our key's write then cannot race the watch's creation, so etcd
//! has the watch in sync when a handover comes (a watch that etcd creates
//! while the store moves is only caught up by its 100 ms sync loop).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::client::Client;
use crate::client::transport::Attempt;
use crate::client::txn::{created_at, oldest_first, oldest_in, prefix_range, put_op, range_op};
use crate::election::observe::{Leader, Observed, until_deleted};
use crate::error::{Error, Result};
use crate::event::{ElectionEvent, EventObserver};
use crate::proto::etcdserverpb::{
    PutRequest, RangeRequest, RangeResponse, TxnRequest, response_op,
};
use crate::proto::mvccpb::KeyValue;
use crate::proto::v3electionpb::{LeaderKey, ResignRequest};
use crate::session::{NO_LEASE, Session, close_budget};
use crate::telemetry;

/// What the handle and the session's observer share with the election task.
pub(crate) struct Shared {
    /// The election's key prefix, for events and metrics.
    name: String,
    /// Read without a lock by `is_leader`.
    pub(crate) is_leader: AtomicBool,
    /// Our term while we lead; written together with `is_leader`.
    pub(crate) state: Mutex<State>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<ElectionEvent>>>,
    observer: Option<EventObserver>,
}

#[derive(Default)]
pub(crate) struct State {
    /// The session's current lease, or NO_LEASE.
    pub(crate) lease: i64,
    /// Our term, while we lead.
    pub(crate) term: Option<LeaderKey>,
}

impl Shared {
    pub(crate) fn new(name: String, observer: Option<EventObserver>) -> Shared {
        Shared {
            name,
            is_leader: AtomicBool::new(false),
            state: Mutex::new(State {
                lease: NO_LEASE,
                term: None,
            }),
            subscribers: Mutex::default(),
            observer,
        }
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

    /// Leads with `term`; true if we did not lead before.
    pub(crate) fn lead(&self, state: &mut State, term: LeaderKey) -> bool {
        let gained = !self.is_leader.swap(true, Ordering::SeqCst);
        if gained {
            let key = String::from_utf8_lossy(&term.key);
            tracing::info!(target: telemetry::TARGET, election = %self.name, %key, rev = term.rev, "leadership gained");
            telemetry::is_leader(&self.name, true);
        }
        state.term = Some(term);
        gained
    }

    /// Steps down at once, before anything is sent to etcd.
    pub(crate) fn step_down(&self, state: &mut State) {
        let term = state.term.take();
        if self.is_leader.swap(false, Ordering::SeqCst) {
            let key = term
                .as_ref()
                .map(|t| String::from_utf8_lossy(&t.key).into_owned());
            let rev = term.as_ref().map(|t| t.rev);
            tracing::info!(target: telemetry::TARGET, election = %self.name, key = key.as_deref(), rev, "leadership lost");
            telemetry::is_leader(&self.name, false);
        }
    }

    pub(crate) fn emit(&self, event: ElectionEvent) {
        if let Some(observer) = &self.observer {
            observer(event.clone());
        }
        self.subscribers
            .lock()
            .expect("subscribers lock")
            .retain(|subscriber| subscriber.send(event.clone()).is_ok());
    }
}

/// What the handle asks of the election task.
pub(crate) enum Command {
    Concede(oneshot::Sender<Result<bool>>),
    /// Close, finishing by this instant.
    Close(Instant),
}

/// Retry a failed candidacy Txn or watch after this long.
pub(crate) const RETRY: Duration = Duration::from_millis(500);

/// Where a candidacy stands.
enum Phase {
    /// The session holds no lease: nothing to stand on.
    NoLease,
    /// Our put-if-absent Txn is on its way (after a pause when retrying).
    Entering(Step),
    /// Our key, created at `our_rev`, is in etcd behind another leader (or
    /// behind a Go candidate that entered before it).
    InRace { our_rev: i64 },
    /// Our key leads: `is_leader()` is true, the term is in [`Shared`].
    Leading { our_rev: i64 },
    /// `concede`: stepped down, our Resign on its way.
    Conceding,
    /// `close`: stepped down for good; Resign and Revoke on their way.
    Closing,
}

impl Phase {
    /// Our key's create revision, while it is in etcd (as far as we know).
    fn our_rev(&self) -> Option<i64> {
        match self {
            Phase::InRace { our_rev } | Phase::Leading { our_rev } => Some(*our_rev),
            _ => None,
        }
    }
}

/// What the candidacy Txn found: our key is in etcd (created at `our_rev`),
/// behind (or as) `leader` and the Go candidates in `go_older`, as of `as_of_rev`.
struct Entered {
    leader: Option<Leader>,
    our_rev: i64,
    go_older: Vec<Leader>,
    as_of_rev: i64,
}

/// The candidacy Txn in flight, and how its call was sent (for `Client::recover`).
type Step = Pin<Box<dyn Future<Output = (Attempt, Result<Entered>)> + Send>>;

/// What the task hears from: the session, the observer, the handle.
pub(crate) struct Inputs {
    pub(crate) leases: mpsc::UnboundedReceiver<(i64, Option<Error>)>,
    pub(crate) reports: mpsc::UnboundedReceiver<Result<Observed>>,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
}

pub(crate) struct Task {
    client: Client,
    name: String,
    candidate: String,
    ttl: Duration,
    shared: Arc<Shared>,
    session: Session,
    phase: Phase,
    /// The lease our candidacy stands on, or NO_LEASE.
    lease: i64,
    /// Whether the observer's watch exists.
    observing: bool,
    /// The newest etcd revision our view of the election is current as of:
    /// an observer report from before it (say, still showing the key we just
    /// resigned) is stale and ignored.
    as_of_rev: i64,
    /// The newest leader reported (by the observer or the candidacy Txn).
    observed: Option<Leader>,
    /// Whether any leader was announced yet. Until we are in the race,
    /// another leader is held back, so the first outcome (what
    /// `new_election` waits for) means that we are a candidate behind it.
    announced: bool,
    held_back: Option<Leader>,
    /// Candidates of the Go package that entered before our key, oldest
    /// first: we defer to them.
    blockers: Vec<Leader>,
    /// Resolves once every blocker is deleted.
    blockers_gone: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The last (is_leader, key, data) emitted, to report only changes.
    last: Option<(bool, String, String)>,
    /// When our key last entered the race, until we lead (for metrics).
    entered_at: Option<Instant>,
}

impl Task {
    pub(crate) fn new(
        client: &Client,
        name: String,
        candidate: String,
        ttl: Duration,
        shared: Arc<Shared>,
        session: Session,
    ) -> Task {
        Task {
            client: client.clone(),
            name,
            candidate,
            ttl,
            shared,
            session,
            phase: Phase::NoLease,
            lease: NO_LEASE,
            observing: false,
            as_of_rev: 0,
            observed: None,
            announced: false,
            held_back: None,
            blockers: Vec::new(),
            blockers_gone: None,
            last: None,
            entered_at: None,
        }
    }

    /// Runs until closed: one input at a time, commands first.
    pub(crate) async fn run(mut self, mut inputs: Inputs) {
        loop {
            let entering = matches!(self.phase, Phase::Entering(_));
            tokio::select! {
                biased;
                command = inputs.commands.recv() => {
                    if let Some(deadline) = self.on_command(command).await {
                        self.close(deadline).await;
                        return;
                    }
                }
                Some((lease, error)) = inputs.leases.recv() => self.on_lease(lease, error),
                Some(report) = inputs.reports.recv() => self.on_report(report),
                () = async { self.blockers_gone.as_mut().expect("guarded").await }, if self.blockers_gone.is_some() => {
                    self.on_blockers_gone();
                }
                (attempt, outcome) = async {
                    match &mut self.phase {
                        Phase::Entering(step) => step.await,
                        _ => unreachable!("guarded"),
                    }
                }, if entering => self.on_step(attempt, outcome).await,
            }
        }
    }

    /// A command from the handle; `Some(deadline)` to close by.
    async fn on_command(&mut self, command: Option<Command>) -> Option<Instant> {
        match command {
            Some(Command::Concede(reply)) => {
                let _ = reply.send(self.concede().await);
                None
            }
            Some(Command::Close(deadline)) => Some(deadline),
            // The handle is gone without a close: close in the background.
            None => Some(Instant::now() + close_budget(self.ttl.as_secs() as i64)),
        }
    }

    /// The session gained a lease or lost it.
    fn on_lease(&mut self, lease: i64, error: Option<Error>) {
        self.lease = lease;
        // A candidacy on the old lease is void; dropping the step cancels it.
        self.blockers.clear();
        self.blockers_gone = None;
        if lease == NO_LEASE {
            self.phase = Phase::NoLease;
            // We stepped down in the session's observer already; say so, with
            // the cause if there was one (a reset has none).
            self.emit(ElectionEvent {
                err: error,
                ..ElectionEvent::default()
            });
        } else {
            self.enter(Duration::ZERO);
        }
    }

    /// The candidacy Txn answered, or failed.
    async fn on_step(&mut self, attempt: Attempt, outcome: Result<Entered>) {
        match outcome {
            Ok(entered) => {
                self.phase = Phase::InRace {
                    our_rev: entered.our_rev,
                };
                self.entered_at = Some(Instant::now());
                if !entered.go_older.is_empty() {
                    let keys = entered
                        .go_older
                        .iter()
                        .map(|go| go.key.clone().into_bytes())
                        .collect();
                    let gone = until_deleted(self.client.clone(), keys, entered.as_of_rev, RETRY);
                    self.blockers_gone = Some(Box::pin(gone));
                }
                self.blockers = entered.go_older;
                for leader in [self.held_back.take(), entered.leader]
                    .into_iter()
                    .flatten()
                {
                    self.on_leader(leader);
                }
            }
            Err(error) => {
                let renewed = self.client.recover(&error, &attempt).await;
                if !renewed {
                    self.emit_error(error);
                }
                self.enter(if renewed { Duration::ZERO } else { RETRY });
            }
        }
    }

    /// The observer's watch exists, or it reported the leader (or that there
    /// is no candidate), or a failure.
    fn on_report(&mut self, observed: Result<Observed>) {
        let report = match observed {
            Ok(Observed::Report(report)) => report,
            Ok(Observed::Watching) => {
                let first = !self.observing;
                self.observing = true;
                if first && matches!(self.phase, Phase::NoLease) {
                    // The lease came first: enter now that the watch exists.
                    self.enter(Duration::ZERO);
                }
                return;
            }
            Err(error) => return self.emit_error(error),
        };
        match report.leader {
            Some(leader) => self.on_leader(leader),
            None if report.as_of_rev >= self.as_of_rev => {
                self.as_of_rev = report.as_of_rev;
                if self.phase.our_rev().is_some() {
                    // No candidate at all, so ours is gone too (deleted by
                    // someone else): step down and enter again.
                    self.observed = None;
                    self.step_down();
                    self.emit(ElectionEvent::default());
                    self.enter(Duration::ZERO);
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
        let Some(our_rev) = self.phase.our_rev() else {
            if self.is_ours(&leader) || !self.announced {
                // Not in the race yet: the candidacy Txn says where we stand
                // (and whether a Go candidate came first) before we decide.
                self.held_back = Some(leader);
                return;
            }
            self.observed = Some(leader);
            return self.decide();
        };
        self.announced = true;
        self.observed = Some(leader);
        if self.observed_rev() > our_rev {
            // A younger key leads, so ours is gone: enter again.
            self.step_down();
            self.enter(Duration::ZERO);
        }
        self.decide();
    }

    /// The Go candidates older than our key are gone.
    fn on_blockers_gone(&mut self) {
        self.blockers_gone = None;
        self.blockers.clear();
        self.decide();
    }

    /// Leads if we may (see the module docs); reports the leader either way:
    /// the oldest of the observed leader and the Go candidates we defer to.
    fn decide(&mut self) {
        let Some(observed) = self.observed.clone() else {
            return;
        };
        let ours = self.is_ours(&observed);
        let leader = match self.blockers.first() {
            Some(go) if go.rev < observed.rev => go.clone(),
            _ => observed,
        };
        let is_leader = match self.phase {
            Phase::InRace { our_rev } | Phase::Leading { our_rev }
                if ours && self.blockers.is_empty() =>
            {
                let mut state = self.shared.state.lock().expect("state lock");
                // The session may have lost the lease since this report was sent.
                let alive = state.lease == leader.lease;
                if alive {
                    let term = LeaderKey {
                        name: self.name.clone().into(),
                        key: leader.key.clone().into(),
                        rev: leader.rev,
                        lease: leader.lease,
                    };
                    if self.shared.lead(&mut state, term)
                        && let Some(entered) = self.entered_at.take()
                    {
                        telemetry::time_to_lead(&self.name, entered.elapsed());
                    }
                    self.phase = Phase::Leading { our_rev };
                } else {
                    self.shared.step_down(&mut state);
                }
                alive
            }
            _ => {
                self.step_down();
                false
            }
        };
        if self
            .last
            .as_ref()
            .is_some_and(|(_, key, _)| *key != leader.key)
        {
            telemetry::leader_changed(&self.name);
        }
        self.emit(ElectionEvent {
            is_leader,
            leader_key: leader.key,
            leader_data: leader.data,
            ..ElectionEvent::default()
        });
    }

    /// The leader's create revision as last observed.
    fn observed_rev(&self) -> i64 {
        self.observed.as_ref().map_or(0, |leader| leader.rev)
    }

    /// Whether `leader` is our key, on our current lease.
    fn is_ours(&self, leader: &Leader) -> bool {
        self.lease != NO_LEASE
            && leader.lease == self.lease
            && leader.key == self.our_key(self.lease)
    }

    /// Our candidate's key for `lease`, as etcd's Campaign writes it.
    fn our_key(&self, lease: i64) -> String {
        format!("{}/{:x}", self.name, lease)
    }

    /// Enters the race (after `delay`) if we hold a lease and the observer
    /// is watching; else waits in `NoLease` for them.
    fn enter(&mut self, delay: Duration) {
        self.phase = if self.lease != NO_LEASE && self.observing {
            Phase::Entering(self.candidacy_txn(delay))
        } else {
            Phase::NoLease
        };
    }

    /// Puts our key if it is not there, as the first step of etcd's Campaign
    /// does, so that we know when we are in the race; and in the same Txn
    /// reads who leads (the oldest key), our key's create revision and the
    /// Go package's candidates, so the first outcome costs no more.
    fn candidacy_txn(&self, delay: Duration) -> Step {
        let client = self.client.clone();
        let name = self.name.clone();
        let our_key = self.our_key(self.lease).into_bytes();
        let put = PutRequest {
            key: our_key.clone().into(),
            value: self.candidate.clone().into(),
            lease: self.lease,
            ..Default::default()
        };
        let reads = vec![
            oldest_in(prefix_range(&format!("{name}/")), 1),
            range_op(RangeRequest {
                key: our_key.clone().into(),
                ..Default::default()
            }),
            oldest_in(go_candidates(&name), GO_PAGE),
        ];
        let txn = TxnRequest {
            compare: vec![created_at(our_key, 0)],
            success: [vec![put_op(put)], reads.clone()].concat(),
            failure: reads,
        };
        Box::pin(async move {
            if !delay.is_zero() {
                // (Even a zero sleep waits for the timer's next 1 ms tick.)
                tokio::time::sleep(delay).await;
            }
            let attempt = client.attempt();
            let outcome = async {
                let response = client.kv().txn(txn).await?.into_inner();
                let as_of_rev = response.header.map_or(0, |h| h.revision);
                let [oldest, ours, go] = last_ranges(response.responses)?;
                let our_rev = ours.kvs.first().map_or(as_of_rev, |kv| kv.create_revision);
                let go_older = go_candidates_before(&client, &name, go, our_rev, as_of_rev).await?;
                Ok(Entered {
                    leader: oldest.kvs.first().map(|kv| Leader::new(kv, as_of_rev)),
                    our_rev,
                    go_older: go_older
                        .iter()
                        .map(|kv| Leader::new(kv, as_of_rev))
                        .collect(),
                    as_of_rev,
                })
            };
            (attempt, outcome.await)
        })
    }

    /// Steps down now; returns the term we held, if any.
    fn step_down(&mut self) -> Option<LeaderKey> {
        if let Phase::Leading { our_rev } = self.phase {
            self.phase = Phase::InRace { our_rev };
        }
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
        self.phase = Phase::Conceding;
        self.emit(ElectionEvent::default());
        match resign(&self.client, term, self.ttl / 2).await {
            Ok(revision) => {
                // Reports from before the Resign would show our old key.
                self.as_of_rev = self.as_of_rev.max(revision);
                self.enter(Duration::ZERO); // behind the others
                Ok(true)
            }
            Err(error) => {
                // Our key may still hold the office, and we no longer take it
                // for ours: give up the lease, so the key goes and we start over.
                self.phase = Phase::NoLease;
                self.session.reset();
                Err(error)
            }
        }
    }

    async fn close(mut self, deadline: Instant) {
        let term = self.step_down();
        self.phase = Phase::Closing;
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
            key: key.into(),
            range_end: range_end.into(),
            revision: as_of_rev,
            min_create_revision: last_rev + 1,
            max_create_revision: our_rev - 1,
            ..oldest_first(GO_PAGE)
        };
        page = client.kv().range(request).await?.into_inner();
    }
}

/// Ends a term: deletes the leader key if its create revision is still the
/// term's. Returns the revision etcd answered at.
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

#[cfg(test)]
mod tests {
    use super::*;

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
