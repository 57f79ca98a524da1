//! The candidacy core: every decision that makes `is_leader()` true or false.
//!
//! [`Candidacy`] takes each input as a value (the session's lease, the
//! observer's reports, the candidacy Txn's answer, the Resign's answer,
//! `concede`, `close`, a timer), with the time now passed in, and queues
//! [`Action`]s for its driver (the election task in `election/candidacy.rs`,
//! or the simulator) to execute. It never awaits, reads a clock, spawns or
//! locks. [`Candidacy::is_leader`] is the one place the answer lives; the
//! driver copies it to the handle's flag after every input, before it runs
//! any action, so a step-down is visible before anything goes to etcd.
//!
//! # When do we lead?
//!
//! Only in [`Phase::InRace`] or [`Phase::Leading`], and only while:
//!
//! 1. the session holds the lease our key stands on (its loss moves us to
//!    `NoLease` in the session's own call, before etcd can expire it);
//! 2. the newest observer report shows our key, on that lease, as the oldest
//!    candidate; a report older than one already acted on is ignored;
//! 3. no candidate of the Go package (`/elections/<name><lease hex>`)
//!    entered before our key (its `blockers` are gone).
//!
//! # Transitions
//!
//! One method per input. The rows below are read by a unit test, which puts
//! a core in each row's phase, applies the input and checks the next phase,
//! whether we lead, and the actions, in order.
//!
//! | phase | input | next phase | actions |
//! |---|---|---|---|
//! | `NoLease` | `on_lease` | `AwaitingWatch` | |
//! | `NoLease` | `on_lease(watching)` | `Entering` | `SendTxn` |
//! | `AwaitingWatch` | `on_watching` | `Entering` | `SendTxn` |
//! | `AwaitingWatch` | `on_lease(lost)` | `NoLease` | `Emit` |
//! | `Entering` | `on_txn_answered(ours)` | `Leading` | `Led Emit` |
//! | `Entering` | `on_txn_answered(behind)` | `InRace` | `Emit` |
//! | `Entering` | `on_txn_answered(go older)` | `InRace` | `WatchBlockers Emit` |
//! | `Entering` | `on_txn_failed` | `Backoff` | `Emit` |
//! | `Entering` | `on_txn_failed(renewed)` | `Entering` | `SendTxn` |
//! | `Entering` | `on_lease(lost)` | `NoLease` | `Emit` |
//! | `Entering` | `on_report(other)` | `Entering` | |
//! | `Entering(server side)` | `on_report(other)` | `Entering` | `Emit` |
//! | `Entering(server side)` | `on_report(ours)` | `Entering` | |
//! | `Entering(server side)` | `on_txn_answered(ours)` | `Leading` | `Led Emit` |
//! | `Backoff` | `on_timer(due)` | `Entering` | `SendTxn` |
//! | `Backoff` | `on_timer(early)` | `Backoff` | |
//! | `InRace` | `on_report(ours)` | `Leading` | `Led LeaderChanged Emit` |
//! | `InRace` | `on_report(other)` | `InRace` | |
//! | `InRace` | `on_report(other, new data)` | `InRace` | `Emit` |
//! | `InRace` | `on_report(younger)` | `Entering` | `SendTxn LeaderChanged Emit` |
//! | `InRace` | `on_report(none)` | `Entering` | `Emit SendTxn` |
//! | `InRace(go older)` | `on_report(ours)` | `InRace` | |
//! | `InRace(go older)` | `on_blockers_gone` | `Leading` | `Led LeaderChanged Emit` |
//! | `Leading` | `on_report(stale)` | `Leading` | |
//! | `Leading` | `on_report(other)` | `InRace` | `LeaderChanged Emit` |
//! | `Leading` | `on_report(none)` | `Entering` | `Emit SendTxn` |
//! | `Leading` | `on_lease(lost)` | `NoLease` | `Emit` |
//! | `Leading` | `on_concede` | `Conceding` | `Emit Resign` |
//! | `Leading` | `on_close` | `Closed` | `Emit` |
//! | `Conceding` | `on_resign_answered` | `Entering` | `SendTxn` |
//! | `Conceding` | `on_resign_failed` | `NoLease` | `ResetSession` |
//! | `Conceding(shared)` | `on_resign_failed` | `Conceding` | |
//! | `Conceding(shared)` | `on_timer(due)` | `Conceding` | `Resign` |
//! | `Conceding` | `on_report(ours)` | `Conceding` | |
//! | `InRace` | `on_concede` | `InRace` | |
//! | `Closed` | `on_lease` | `Closed` | |
//!
//! `Leading` is the only phase in which [`Candidacy::is_leader`] is true.
//! With the server-side engine (`(server side)`), etcd's Campaign stands
//! for the candidacy Txn: it answers only once our key leads, so another
//! leader is announced while it is out rather than held back until it
//! answers (our own key still is, until the answer says where we stand).
//! On a session shared with other elections (`(shared)`), a failed Resign is
//! tried again every [`RETRY`] until it answers or the lease is lost: giving
//! the lease up would take every other election on it down too.
//! An event that repeats the last one (same leader, same data, same
//! `is_leader`) is not emitted again; `Led` and `LeaderChanged` feed metrics.
//!
//! The observer (see `observe`) starts with the election, and the candidacy
//! Txn is sent only once its watch exists: our key's write then cannot race
//! the watch's creation, so etcd has the watch in sync when a handover comes
//! (a watch that etcd creates while the store moves is only caught up by its
//! 100 ms sync loop).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::election::observe::{Leader, Report};
use crate::error::Error;
use crate::event::ElectionEvent;
use crate::proto::v3electionpb::LeaderKey;
use crate::sabotage::Sabotage;

/// Retry a failed candidacy Txn (or a failed watch) after this long.
pub const RETRY: Duration = Duration::from_millis(500);

/// Where a candidacy stands. Each phase carries what it needs, and the
/// lease lives only here.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// The session holds no lease: nothing to stand on.
    NoLease,
    /// A lease, but the observer's watch is not open yet.
    AwaitingWatch {
        /// The session's lease.
        lease: i64,
    },
    /// Waiting until `until` to send the candidacy Txn again.
    Backoff {
        /// The session's lease.
        lease: i64,
        /// When to send it.
        until: Instant,
    },
    /// Our put-if-absent Txn is on its way.
    Entering {
        /// The lease our key goes on.
        lease: i64,
    },
    /// Our key, created at `our_rev`, is in etcd behind another leader or
    /// behind Go candidates that entered before it (`blockers`, oldest first).
    InRace {
        /// The lease our key is on.
        lease: i64,
        /// Our key's create revision.
        our_rev: i64,
        /// Go-package candidates older than our key.
        blockers: Vec<Leader>,
        /// When our key entered the race, until it first leads (for the
        /// time-to-lead metric).
        since: Option<Instant>,
    },
    /// Our key leads: `is_leader()` is true.
    Leading {
        /// Our term; `term.lease` is the session's lease, `term.rev` the fencing token.
        term: LeaderKey,
    },
    /// `concede`: stepped down, our Resign on its way (or, on a shared
    /// session, to be tried again at `retry_at`).
    Conceding {
        /// The term we resign.
        term: LeaderKey,
        /// When to try the Resign again after it failed.
        retry_at: Option<Instant>,
    },
    /// `close`: stepped down for good.
    Closed,
}

impl Phase {
    /// The session's lease, as far as this candidacy knows.
    pub fn lease(&self) -> Option<i64> {
        match self {
            Phase::NoLease | Phase::Closed => None,
            Phase::AwaitingWatch { lease }
            | Phase::Backoff { lease, .. }
            | Phase::Entering { lease }
            | Phase::InRace { lease, .. } => Some(*lease),
            Phase::Leading { term } | Phase::Conceding { term, .. } => Some(term.lease),
        }
    }

    /// Our key's create revision, while it is in the race.
    fn our_rev(&self) -> Option<i64> {
        match self {
            Phase::InRace { our_rev, .. } => Some(*our_rev),
            Phase::Leading { term } => Some(term.rev),
            _ => None,
        }
    }
}

/// A candidate's key on `lease` in the election whose key prefix is
/// `name`, as etcd's Campaign writes it: `<name>/<lease in hex>`.
pub fn candidate_key(name: &str, lease: i64) -> String {
    format!("{name}/{lease:x}")
}

/// What the candidacy Txn found: our key is in etcd (created at `our_rev`),
/// behind (or as) `leader` and the Go candidates in `go_older`, as of `as_of_rev`.
#[derive(Clone, Debug, PartialEq)]
pub struct Entered {
    /// The oldest candidate key (ours or another).
    pub leader: Option<Leader>,
    /// Our key's create revision.
    pub our_rev: i64,
    /// Go-package candidates created before our key, oldest first.
    pub go_older: Vec<Leader>,
    /// The revision etcd answered at.
    pub as_of_rev: i64,
}

/// What the core asks its driver to do, in order.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send the candidacy Txn (put our key on `lease` if absent, and read
    /// the leader, our key and the Go candidates); answer with
    /// [`on_txn_answered`](Candidacy::on_txn_answered) or
    /// [`on_txn_failed`](Candidacy::on_txn_failed).
    SendTxn {
        /// The lease our key goes on.
        lease: i64,
    },
    /// Watch `keys` (there as of `as_of_rev`) until every one is deleted,
    /// then call [`on_blockers_gone`](Candidacy::on_blockers_gone).
    /// Stop once [`Candidacy::awaits_blockers`] turns false.
    WatchBlockers {
        /// The Go candidates' keys.
        keys: Vec<String>,
        /// The revision they were read at.
        as_of_rev: i64,
    },
    /// Resign `term`; answer with [`on_resign_answered`](Candidacy::on_resign_answered)
    /// or [`on_resign_failed`](Candidacy::on_resign_failed).
    Resign(LeaderKey),
    /// Give the session's lease up and take a new one: our key may still hold
    /// the office, and we no longer take it for ours.
    ResetSession,
    /// Tell the subscribers.
    Emit(ElectionEvent),
    /// The leader's key changed (for the metric).
    LeaderChanged,
    /// We lead for the first time since our key entered the race at `since`
    /// (for the metric).
    Led {
        /// When our key entered the race.
        since: Instant,
    },
}

/// The newest knowledge of the election: the leader as of `as_of_rev`.
#[derive(Clone, Debug, Default)]
struct View {
    leader: Option<Leader>,
    as_of_rev: i64,
    /// Whether any leader was announced yet. Until we are in the race,
    /// another leader is held back, so the first outcome (what
    /// `new_election` waits for) means that we are a candidate behind it.
    announced: bool,
}

/// The decisions of one candidacy in one election (see the module docs).
#[derive(Debug)]
pub struct Candidacy {
    /// The election's key prefix, `/elections/<name>`.
    name: String,
    phase: Phase,
    /// Whether the observer's watch exists.
    watching: bool,
    view: View,
    /// The last (is_leader, key, data) emitted, to report only changes.
    last: Option<(bool, String, String)>,
    actions: VecDeque<Action>,
    /// Whether the session is shared with other elections.
    shared_session: bool,
    /// Whether etcd's server-side Campaign enters us: its answer comes only
    /// once we lead, so other leaders are announced while it is out.
    server_side: bool,
    sabotage: Sabotage,
}

impl Candidacy {
    /// A candidacy in the election whose key prefix is `name`, with no lease yet.
    pub fn new(name: String) -> Candidacy {
        Candidacy::with_sabotage(name, Sabotage::None)
    }

    /// A candidacy on a session that other elections share: its failures
    /// never give the session's lease up.
    pub fn on_shared_session(mut self) -> Candidacy {
        self.shared_session = true;
        self
    }

    /// A candidacy entered by etcd's server-side Campaign, which answers
    /// only once our key leads: while it is out, another leader is
    /// announced at once (so `new_election`'s first outcome comes), where the
    /// client-side Txn's answer would say first where we stand.
    pub fn server_side(mut self) -> Candidacy {
        self.server_side = true;
        self
    }

    /// As [`new`](Self::new), broken on purpose as `sabotage` says.
    pub fn with_sabotage(name: String, sabotage: Sabotage) -> Candidacy {
        Candidacy {
            name,
            phase: Phase::NoLease,
            watching: false,
            view: View::default(),
            last: None,
            actions: VecDeque::new(),
            shared_session: false,
            server_side: false,
            sabotage,
        }
    }

    /// Whether we lead: the one answer to `is_leader()`.
    pub fn is_leader(&self) -> bool {
        matches!(self.phase, Phase::Leading { .. })
    }

    /// Our term, while we lead.
    pub fn term(&self) -> Option<&LeaderKey> {
        match &self.phase {
            Phase::Leading { term } => Some(term),
            _ => None,
        }
    }

    /// Where the candidacy stands.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Whether a candidacy Txn should be in flight (a driver drops one that is
    /// no longer wanted).
    pub fn entering(&self) -> bool {
        matches!(self.phase, Phase::Entering { .. })
    }

    /// Whether the Go candidates of [`Action::WatchBlockers`] are still awaited.
    pub fn awaits_blockers(&self) -> bool {
        matches!(&self.phase, Phase::InRace { blockers, .. } if !blockers.is_empty())
    }

    /// When [`on_timer`](Self::on_timer) is due next.
    pub fn next_timer(&self) -> Option<Instant> {
        match self.phase {
            Phase::Backoff { until, .. } => Some(until),
            Phase::Conceding { retry_at, .. } => retry_at,
            _ => None,
        }
    }

    /// Our candidate's key on `lease`.
    pub fn our_key(&self, lease: i64) -> String {
        candidate_key(&self.name, lease)
    }

    /// The next action to execute, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.actions.pop_front();
        if action.is_none() {
            // An idle candidacy keeps no queue: 10,000 of them would keep
            // half a kilobyte each.
            self.actions = VecDeque::new();
        }
        action
    }

    /// The session gained lease `lease`, or lost its lease (`None`, with the
    /// cause if there was one; a reset has none).
    pub fn on_lease(&mut self, lease: Option<i64>, error: Option<Error>) {
        if self.phase == Phase::Closed {
            return;
        }
        match lease {
            None => {
                // A candidacy on the old lease is void.
                self.phase = Phase::NoLease;
                self.emit(ElectionEvent {
                    err: error,
                    ..ElectionEvent::default()
                });
            }
            Some(lease) => self.enter(lease),
        }
    }

    /// The observer's watch exists: every change from now on will be reported.
    pub fn on_watching(&mut self) {
        self.watching = true;
        if let Phase::AwaitingWatch { lease } = self.phase {
            self.enter(lease);
        }
    }

    /// The observer failed (it reopens its watch by itself).
    pub fn on_observer_failed(&mut self, error: Error) {
        self.emit_error(error);
    }

    /// The observer reported the leader, or that there is no candidate.
    pub fn on_report(&mut self, report: Report) {
        if self.phase == Phase::Closed || !self.take(report.leader, report.as_of_rev) {
            return;
        }
        self.settle();
    }

    /// The candidacy Txn sent for `lease` answered.
    pub fn on_txn_answered(&mut self, now: Instant, lease: i64, entered: Entered) {
        if self.phase != (Phase::Entering { lease }) {
            return;
        }
        let blockers = match self.sabotage {
            Sabotage::SkipGoCheck => Vec::new(),
            _ => entered.go_older,
        };
        if !blockers.is_empty() {
            self.push(Action::WatchBlockers {
                keys: blockers.iter().map(|go| go.key.clone()).collect(),
                as_of_rev: entered.as_of_rev,
            });
        }
        self.phase = Phase::InRace {
            lease,
            our_rev: entered.our_rev,
            blockers,
            since: Some(now),
        };
        // What the observer reported while the Txn was out was held back;
        // the newer of it and the Txn's read counts.
        self.take(entered.leader, entered.as_of_rev);
        self.settle();
    }

    /// The candidacy Txn sent for `lease` failed; `renewed` if only the token
    /// had expired and is renewed (then it goes again at once, unreported).
    pub fn on_txn_failed(&mut self, now: Instant, lease: i64, error: Error, renewed: bool) {
        if self.phase != (Phase::Entering { lease }) {
            return;
        }
        if renewed {
            return self.enter(lease);
        }
        self.emit_error(error);
        self.phase = Phase::Backoff {
            lease,
            until: now + RETRY,
        };
    }

    /// The Go candidates older than our key are gone.
    pub fn on_blockers_gone(&mut self) {
        if let Phase::InRace { blockers, .. } = &mut self.phase {
            blockers.clear();
            self.settle();
        }
    }

    /// Time passed: the end of a backoff, or a Resign to try again.
    pub fn on_timer(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Backoff { lease, until } if now >= *until => {
                let lease = *lease;
                self.enter(lease);
            }
            Phase::Conceding { term, retry_at } if retry_at.is_some_and(|at| now >= at) => {
                *retry_at = None;
                let term = term.clone();
                self.push(Action::Resign(term));
            }
            _ => {}
        }
    }

    /// `concede`: if we lead, step down and resign (then enter again, behind
    /// the others); true if we led.
    pub fn on_concede(&mut self) -> bool {
        let Phase::Leading { term } = &self.phase else {
            return false;
        };
        let term = term.clone();
        self.phase = Phase::Conceding {
            term: term.clone(),
            retry_at: None,
        };
        self.emit(ElectionEvent::default());
        self.push(Action::Resign(term));
        true
    }

    /// Our Resign answered at `revision`: enter again, behind the others.
    pub fn on_resign_answered(&mut self, revision: i64) {
        if let Phase::Conceding { term, .. } = &self.phase {
            let lease = term.lease;
            // Reports from before the Resign would show our old key.
            self.view.as_of_rev = self.view.as_of_rev.max(revision);
            self.enter(lease);
        }
    }

    /// Our Resign failed: our key may still hold the office, and we no longer
    /// take it for ours. Give up the lease, so the key goes and we start over;
    /// on a shared session, try the Resign again after [`RETRY`] instead.
    pub fn on_resign_failed(&mut self, now: Instant) {
        let Phase::Conceding { retry_at, .. } = &mut self.phase else {
            return;
        };
        if self.shared_session {
            *retry_at = Some(now + RETRY);
        } else {
            self.phase = Phase::NoLease;
            self.push(Action::ResetSession);
        }
    }

    /// `close`: step down for good; returns the term to resign, if we led.
    pub fn on_close(&mut self) -> Option<LeaderKey> {
        let term = self.term().cloned();
        self.phase = Phase::Closed;
        // The closing event goes out whatever was reported before.
        self.last = None;
        self.emit(ElectionEvent::default());
        term
    }

    /// Records the newest knowledge; false if `leader` (as of `as_of_rev`)
    /// is older than what we acted on already.
    fn take(&mut self, leader: Option<Leader>, as_of_rev: i64) -> bool {
        if as_of_rev < self.view.as_of_rev && self.sabotage != Sabotage::AcceptStaleReport {
            return false;
        }
        self.view.as_of_rev = as_of_rev;
        self.view.leader = leader;
        true
    }

    /// Acts on the newest knowledge.
    fn settle(&mut self) {
        let Some(our_rev) = self.phase.our_rev() else {
            // Not in the race: announce another leader, but hold back ours,
            // and any before the first, until the Txn says where we stand.
            let held_back = match &self.view.leader {
                Some(leader) => self.is_ours(leader) || !(self.view.announced || self.server_side),
                None => true,
            };
            if !held_back {
                self.decide();
            }
            return;
        };
        self.view.announced = true;
        match self.view.leader.as_ref().map(|leader| leader.rev) {
            // No candidate at all, so ours is gone too (deleted by someone
            // else): step down and enter again.
            None => {
                let lease = self.phase.lease().expect("in the race");
                self.phase = Phase::Entering { lease };
                self.emit(ElectionEvent::default());
                self.push(Action::SendTxn { lease });
            }
            // A younger key leads, so ours is gone: enter again.
            Some(rev) if rev > our_rev => {
                let lease = self.phase.lease().expect("in the race");
                self.enter(lease);
                self.decide();
            }
            Some(_) => self.decide(),
        }
    }

    /// Leads if we may (see the module docs); reports the leader either way:
    /// the oldest of the observed leader and the Go candidates we defer to.
    fn decide(&mut self) {
        let Some(observed) = self.view.leader.clone() else {
            return;
        };
        let ours = self.is_ours(&observed);
        let shown = match &self.phase {
            Phase::InRace { blockers, .. } => match blockers.first() {
                Some(go) if go.rev < observed.rev => go.clone(),
                _ => observed.clone(),
            },
            _ => observed.clone(),
        };
        match &self.phase {
            Phase::InRace {
                blockers, since, ..
            } if ours && blockers.is_empty() => {
                if let Some(since) = *since {
                    self.push(Action::Led { since });
                }
                self.phase = Phase::Leading {
                    term: LeaderKey {
                        name: self.name.clone().into(),
                        key: observed.key.clone().into(),
                        rev: observed.rev,
                        lease: observed.lease,
                    },
                };
            }
            Phase::Leading { term } if !ours => {
                self.phase = Phase::InRace {
                    lease: term.lease,
                    our_rev: term.rev,
                    blockers: Vec::new(),
                    since: None,
                };
            }
            _ => {}
        }
        if self
            .last
            .as_ref()
            .is_some_and(|(_, key, _)| *key != shown.key)
        {
            self.push(Action::LeaderChanged);
        }
        self.emit(ElectionEvent {
            is_leader: self.is_leader(),
            leader_key: shown.key,
            leader_data: shown.data,
            ..ElectionEvent::default()
        });
    }

    /// Whether `leader` is our key, on the lease we stand on now.
    fn is_ours(&self, leader: &Leader) -> bool {
        self.phase
            .lease()
            .is_some_and(|lease| leader.lease == lease && leader.key == self.our_key(lease))
    }

    /// Enters the race with `lease` if the observer is watching; else waits for it.
    fn enter(&mut self, lease: i64) {
        if self.watching {
            self.phase = Phase::Entering { lease };
            self.push(Action::SendTxn { lease });
        } else {
            self.phase = Phase::AwaitingWatch { lease };
        }
    }

    fn emit_error(&mut self, error: Error) {
        let mut event = ElectionEvent {
            err: Some(error),
            is_leader: self.is_leader(),
            ..ElectionEvent::default()
        };
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
        if event.err.is_none() && self.last.as_ref() == Some(&now) {
            return;
        }
        self.last = Some(now);
        self.push(Action::Emit(event));
    }

    fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transition_table::{names, rows};

    const NAME: &str = "/elections/jobs";
    const L: i64 = 0xa1;
    const OTHER: i64 = 0xb2;

    fn leader(lease: i64, rev: i64, as_of_rev: i64) -> Leader {
        Leader {
            key: format!("{NAME}/{lease:x}"),
            data: format!("candidate {lease:x}"),
            rev,
            lease,
            as_of_rev,
        }
    }

    fn go(rev: i64) -> Leader {
        Leader {
            key: format!("{NAME}{:x}", 0xc3),
            data: "go".into(),
            rev,
            lease: 0xc3,
            as_of_rev: 10,
        }
    }

    fn entered(leader: Leader, go_older: Vec<Leader>) -> Entered {
        Entered {
            leader: Some(leader),
            our_rev: 10,
            go_older,
            as_of_rev: 10,
        }
    }

    fn name_of(phase: &Phase) -> &'static str {
        match phase {
            Phase::NoLease => "NoLease",
            Phase::AwaitingWatch { .. } => "AwaitingWatch",
            Phase::Backoff { .. } => "Backoff",
            Phase::Entering { .. } => "Entering",
            Phase::InRace { .. } => "InRace",
            Phase::Leading { .. } => "Leading",
            Phase::Conceding { .. } => "Conceding",
            Phase::Closed => "Closed",
        }
    }

    fn drain(core: &mut Candidacy) -> Vec<String> {
        names(std::iter::from_fn(|| core.poll_action()))
    }

    fn error() -> Error {
        Error::StreamEnded { stream: "test" }
    }

    /// A core in the table's `phase`, made by the inputs that lead there.
    fn in_phase(phase: &str, t0: Instant) -> Candidacy {
        let mut core = Candidacy::new(NAME.into());
        let entering = |core: &mut Candidacy| {
            core.on_watching();
            core.on_lease(Some(L), None);
        };
        match phase {
            "NoLease" => {}
            "AwaitingWatch" => core.on_lease(Some(L), None),
            "Entering" => entering(&mut core),
            "Entering(server side)" => {
                core = core.server_side();
                entering(&mut core);
            }
            "Backoff" => {
                entering(&mut core);
                core.on_txn_failed(t0, L, error(), false);
            }
            "InRace" => {
                entering(&mut core);
                core.on_txn_answered(t0, L, entered(leader(OTHER, 5, 10), vec![]));
            }
            "InRace(go older)" => {
                entering(&mut core);
                core.on_txn_answered(t0, L, entered(leader(L, 10, 10), vec![go(7)]));
            }
            "Leading" => {
                entering(&mut core);
                core.on_txn_answered(t0, L, entered(leader(L, 10, 10), vec![]));
            }
            "Conceding" | "Conceding(shared)" => {
                if phase == "Conceding(shared)" {
                    core = core.on_shared_session();
                }
                entering(&mut core);
                core.on_txn_answered(t0, L, entered(leader(L, 10, 10), vec![]));
                assert!(core.on_concede());
                if phase == "Conceding(shared)" {
                    core.on_resign_failed(t0);
                }
            }
            "Closed" => {
                core.on_close();
            }
            other => panic!("no phase {other}"),
        }
        drain(&mut core);
        let base = phase.split('(').next().expect("a name");
        assert_eq!(name_of(core.phase()), base, "setting up {phase}");
        core
    }

    fn apply(core: &mut Candidacy, input: &str, t0: Instant) {
        let report = |leader: Option<Leader>, as_of_rev| Report { leader, as_of_rev };
        match input {
            "on_lease" => core.on_lease(Some(L), None),
            "on_lease(watching)" => {
                core.on_watching();
                core.on_lease(Some(L), None);
            }
            "on_lease(lost)" => core.on_lease(None, Some(error())),
            "on_watching" => core.on_watching(),
            "on_txn_answered(ours)" => {
                core.on_txn_answered(t0, L, entered(leader(L, 10, 10), vec![]))
            }
            "on_txn_answered(behind)" => {
                core.on_txn_answered(t0, L, entered(leader(OTHER, 5, 10), vec![]))
            }
            "on_txn_answered(go older)" => {
                core.on_txn_answered(t0, L, entered(leader(L, 10, 10), vec![go(7)]))
            }
            "on_txn_failed" => core.on_txn_failed(t0, L, error(), false),
            "on_txn_failed(renewed)" => core.on_txn_failed(t0, L, error(), true),
            "on_timer(due)" => core.on_timer(t0 + RETRY),
            "on_timer(early)" => core.on_timer(t0 + Duration::from_millis(1)),
            "on_report(ours)" => core.on_report(report(Some(leader(L, 10, 20)), 20)),
            "on_report(other)" => core.on_report(report(Some(leader(OTHER, 5, 20)), 20)),
            "on_report(younger)" => core.on_report(report(Some(leader(0xd4, 15, 20)), 20)),
            "on_report(other, new data)" => {
                let mut other = leader(OTHER, 5, 20);
                other.data = "proclaimed".into();
                core.on_report(report(Some(other), 20))
            }
            "on_report(none)" => core.on_report(report(None, 20)),
            "on_report(stale)" => core.on_report(report(Some(leader(OTHER, 5, 3)), 3)),
            "on_blockers_gone" => core.on_blockers_gone(),
            "on_concede" => {
                core.on_concede();
            }
            "on_close" => {
                core.on_close();
            }
            "on_resign_answered" => core.on_resign_answered(30),
            "on_resign_failed" => core.on_resign_failed(t0),
            other => panic!("no input {other}"),
        }
    }

    #[test]
    fn every_row_of_the_transition_table_is_what_the_code_does() {
        let rows = rows(include_str!("core.rs"));
        assert!(rows.len() >= 29, "the table has {} rows", rows.len());
        let mut wrong = Vec::new();
        for [phase, input, next, actions] in rows {
            let t0 = Instant::now();
            let mut core = in_phase(&phase, t0);
            apply(&mut core, &input, t0);
            let got_actions = drain(&mut core).join(" ");
            let got_next = name_of(core.phase());
            if core.is_leader() != (got_next == "Leading") {
                wrong.push(format!("{phase} + {input}: is_leader() is not `Leading`"));
            }
            if got_next != next || got_actions != actions {
                wrong.push(format!(
                    "{phase} + {input}: table says {next} [{actions}], code does {got_next} [{got_actions}]"
                ));
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }

    fn leading(t0: Instant) -> Candidacy {
        in_phase("Leading", t0)
    }

    #[test]
    fn a_watch_event_that_overtakes_the_txn_answer_is_held_back() {
        let t0 = Instant::now();
        let mut core = in_phase("Entering", t0);
        // The watch shows our key as the oldest before the Txn answers...
        core.on_report(Report {
            leader: Some(leader(L, 10, 10)),
            as_of_rev: 10,
        });
        assert!(!core.is_leader());
        assert!(drain(&mut core).is_empty(), "nothing announced yet");
        // ...and the Txn says a Go candidate entered first: we do not lead.
        core.on_txn_answered(t0, L, entered(leader(L, 10, 10), vec![go(7)]));
        assert!(!core.is_leader());
        core.on_blockers_gone();
        assert!(core.is_leader());
    }

    #[test]
    fn an_answer_lost_after_etcd_applied_the_txn_is_mended_by_the_retry() {
        let t0 = Instant::now();
        let mut core = in_phase("Entering", t0);
        core.on_txn_failed(t0, L, error(), false);
        assert_eq!(drain(&mut core), ["Emit"]);
        core.on_timer(t0 + RETRY);
        assert_eq!(drain(&mut core), ["SendTxn"]);
        // The retry finds our key there already (the failure branch): its
        // create revision is the first Txn's, and it leads.
        let mut found = entered(leader(L, 8, 12), vec![]);
        found.our_rev = 8;
        found.as_of_rev = 12;
        core.on_txn_answered(t0, L, found);
        assert!(core.is_leader());
        assert_eq!(core.term().map(|t| t.rev), Some(8));
    }

    #[test]
    fn a_lease_lost_while_a_concede_is_in_flight_stays_lost() {
        let t0 = Instant::now();
        let mut core = in_phase("Conceding", t0);
        core.on_lease(None, Some(error()));
        assert_eq!(core.phase(), &Phase::NoLease);
        // The Resign's answer comes after: no Txn on the lost lease.
        core.on_resign_answered(30);
        core.on_resign_failed(t0);
        assert_eq!(core.phase(), &Phase::NoLease);
        assert_eq!(drain(&mut core), ["Emit"]);
    }

    #[test]
    fn a_report_from_before_our_resign_does_not_make_us_lead_again() {
        let t0 = Instant::now();
        let mut core = leading(t0);
        assert!(core.on_concede());
        core.on_resign_answered(30);
        // Back in the race behind another candidate's key (rev 25).
        let mut behind = entered(leader(OTHER, 25, 31), vec![]);
        behind.our_rev = 31;
        behind.as_of_rev = 31;
        core.on_txn_answered(t0, L, behind);
        assert!(!core.is_leader());
        // A report from before the Resign, still showing our old key.
        let mut stale = leader(L, 10, 20);
        stale.data = "proclaimed before".into();
        core.on_report(Report {
            leader: Some(stale.clone()),
            as_of_rev: 20,
        });
        assert!(!core.is_leader(), "a stale report made us lead");
        // The broken core accepts it: what the simulator's control catches.
        let mut broken = Candidacy::with_sabotage(NAME.into(), Sabotage::AcceptStaleReport);
        broken.on_watching();
        broken.on_lease(Some(L), None);
        broken.on_txn_answered(t0, L, entered(leader(L, 10, 10), vec![]));
        broken.on_concede();
        broken.on_resign_answered(30);
        let mut behind = entered(leader(OTHER, 25, 31), vec![]);
        behind.our_rev = 31;
        behind.as_of_rev = 31;
        broken.on_txn_answered(t0, L, behind);
        broken.on_report(Report {
            leader: Some(stale),
            as_of_rev: 20,
        });
        assert!(broken.is_leader());
    }

    #[test]
    fn a_failed_resign_gives_the_lease_up_and_starts_over() {
        let t0 = Instant::now();
        let mut core = in_phase("Conceding", t0);
        core.on_resign_failed(t0);
        assert_eq!(drain(&mut core), ["ResetSession"]);
        // The session says the lease is gone, then brings a new one.
        core.on_lease(None, None);
        core.on_lease(Some(L + 1), None);
        assert_eq!(core.phase(), &Phase::Entering { lease: L + 1 });
    }

    #[test]
    fn a_txn_answer_for_an_old_lease_is_ignored() {
        let t0 = Instant::now();
        let mut core = in_phase("Entering", t0);
        core.on_lease(None, Some(error()));
        core.on_lease(Some(L + 1), None);
        drain(&mut core);
        core.on_txn_answered(t0, L, entered(leader(L, 10, 10), vec![]));
        assert!(!core.is_leader());
        assert_eq!(core.phase(), &Phase::Entering { lease: L + 1 });
    }

    #[test]
    fn skipping_the_go_check_leads_in_front_of_an_older_go_candidate() {
        let t0 = Instant::now();
        let mut broken = Candidacy::with_sabotage(NAME.into(), Sabotage::SkipGoCheck);
        broken.on_watching();
        broken.on_lease(Some(L), None);
        broken.on_txn_answered(t0, L, entered(leader(L, 10, 10), vec![go(7)]));
        assert!(broken.is_leader());
    }
}
