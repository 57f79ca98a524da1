//! The simulated world: candidates (the crate's cores, through the drivers'
//! glue), their links to etcd with faults, and the model of etcd, all driven
//! by one seeded PRNG on one event queue, so a seed replays a run exactly.
//!
//! Time is etcd's clock (`Time`, from 0). Each candidate's monotonic clock
//! runs at its own rate, within ±500 ppm of etcd's; its cores only ever see
//! that clock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use etcdutil::Error;
use etcdutil::proto::etcdserverpb::{
    Compare, LeaseGrantResponse, LeaseKeepAliveResponse, PutRequest, RangeRequest, RequestOp,
    TxnRequest, TxnResponse, WatchCreateRequest, WatchResponse, compare, request_op,
};
use etcdutil::proto::mvccpb::KeyValue;
use etcdutil::proto::v3electionpb::{LeaderKey, ProclaimRequest, ResignRequest};
use etcdutil::testing::core::{
    Action, Candidacy, Follower, LeaseAction, LeaseCore, Report, Sabotage, candidacy_txn,
    deletes_watch, entered, is_go_candidate, left_of, renew_interval,
};
use tokio::time::Instant;
use tonic::Status;

use crate::etcd::{Etcd, Time};

/// splitmix64: small, fast and good enough to drive a simulation.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// A duration in `lo..hi`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi - lo).as_micros().max(1) as u64;
        lo + Duration::from_micros(self.below(span))
    }
}

/// What one run does.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    /// How long faults are injected, in simulated time.
    pub fault_time: Duration,
    pub sabotage: Sabotage,
    /// The process-pause scenario instead of random faults.
    pub pause: bool,
    /// Keep a full trace (for a replay); else only the last lines.
    pub trace: bool,
}

/// What one run found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub seed: u64,
    pub simulated: Duration,
    pub candidates: usize,
    pub members: usize,
    pub ttl: i64,
    pub faults: u64,
    pub leader_changes: u64,
    pub steps: u64,
    /// The smallest time left, on etcd's clock, between a leader's step-down
    /// and the moment etcd could expire its lease.
    pub min_margin: Option<Duration>,
    pub violation: Option<String>,
    /// The last trace lines (all of them with `Settings::trace`).
    pub trace: Vec<String>,
    /// A hash of the order of every step: distinct runs, distinct schedules.
    pub fingerprint: u64,
    /// Pause scenario: how long two candidates both believed they led.
    pub overlap: Duration,
    /// Pause scenario: fenced writes the paused leader tried, and how many etcd refused.
    pub fenced_writes: u32,
    pub fenced_refused: u32,
}

const ELECTION: &str = "/elections/sim";
/// The slowest hop a message takes.
const MAX_HOP: Duration = Duration::from_secs(1);
/// How long the model keeps lines of trace when not asked for all.
const TRACE_TAIL: usize = 60;

/// The state of a candidate's link to etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Up,
    /// Connections refused or reset at once.
    Cut,
    /// Nothing gets through, nothing fails.
    Blackhole,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Member {
    Up,
    Down,
    /// Up, but without a raft leader: refuses with "no leader".
    NoLeader,
}

/// A unary call in flight, and what its answer is for.
#[derive(Clone, Debug)]
enum Call {
    Grant {
        sent_at: Instant,
        revoke_by: Option<Instant>,
    },
    Txn {
        lease: i64,
    },
    Resign {
        closing: bool,
    },
    Revoke {
        id: i64,
        by: Instant,
    },
    /// The observer's read, at the watch's creation revision.
    Read {
        stream: u64,
        rev: i64,
    },
    /// Which Go blockers are left, as of one revision.
    BlockersLeft {
        keys: Vec<Vec<u8>>,
        generation: u64,
    },
    Proclaim,
    /// A write fenced by the term (`txn_if_leader`), from the paused leader.
    Fenced,
}

#[derive(Clone, Debug)]
enum Request {
    Grant { ttl: i64 },
    Txn(TxnRequest),
    Resign(ResignRequest),
    Revoke(i64),
    Range(RangeRequest),
    Proclaim(ProclaimRequest),
}

#[derive(Clone, Debug)]
enum Answer {
    Grant(LeaseGrantResponse),
    Txn(TxnResponse),
    Resign(i64),
    Revoke,
    Range(Vec<KeyValue>),
    Proclaim,
}

/// Which of a candidate's streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamKind {
    KeepAlive,
    Observer,
    Blockers,
}

#[derive(Debug)]
enum Ev {
    /// A unary request reaches etcd.
    Request {
        c: usize,
        conn: u64,
        call: u64,
        req: Request,
    },
    /// A unary answer (or failure) reaches the candidate.
    Reply {
        c: usize,
        conn: u64,
        call: u64,
        result: Result<Answer, Status>,
    },
    /// A call's own timeout (the grant's TTL, the resign's TTL / 2).
    CallTimeout {
        c: usize,
        call: u64,
    },
    KeepAliveRequest {
        c: usize,
        stream: u64,
        id: i64,
    },
    KeepAliveReply {
        c: usize,
        stream: u64,
        reply: LeaseKeepAliveResponse,
    },
    WatchRequest {
        c: usize,
        stream: u64,
        req: WatchCreateRequest,
    },
    WatchReply {
        c: usize,
        stream: u64,
        reply: WatchResponse,
    },
    /// A stream failed; the candidate hears it now.
    StreamFailed {
        c: usize,
        stream: u64,
        status: Status,
    },
    /// A candidate's timers may be due.
    Wake {
        c: usize,
    },
    /// The observer's retry after a failure.
    ObserverRetry {
        c: usize,
        generation: u64,
    },
    BlockersRetry {
        c: usize,
        generation: u64,
    },
    /// A revoke's next try.
    Revoke {
        c: usize,
        id: i64,
        by: Instant,
    },
    /// etcd's lease expiry loop (every 500 ms).
    Scan,
    /// The fault schedule's next step.
    Fault,
    Heal {
        what: Heal,
    },
    /// The process-pause scenario's end of the pause.
    Resume {
        c: usize,
    },
}

#[derive(Clone, Copy, Debug)]
enum Heal {
    Link(usize, u64),
    Member(usize, u64),
    Spike(usize, u64),
    Loss(usize, u64),
    Lag(usize, u64),
}

#[derive(Debug)]
struct Stream {
    kind: StreamKind,
    member: usize,
    /// Open at etcd (the watch id of a watch).
    watch_id: Option<i64>,
    /// When its last message was delivered each way: a stream keeps order.
    up_at: Time,
    down_at: Time,
}

/// The observer's state: the glue of `run_observe`, step by step.
#[derive(Debug)]
enum Observer {
    Off,
    Creating {
        stream: u64,
    },
    Reading {
        stream: u64,
        pending: Vec<WatchResponse>,
    },
    Following {
        stream: u64,
        follower: Follower,
    },
}

/// One candidate: the crate's two cores and the driver glue around them.
struct Candidate {
    /// Which incarnation of this slot (a rejoin is a new candidate).
    incarnation: u64,
    rate: f64,
    lease: LeaseCore,
    cand: Candidacy,
    member: usize,
    /// Bumped whenever the connection is replaced: older answers are lost.
    conn: u64,
    link: Link,
    link_gen: u64,
    spike: u32,
    spike_gen: u64,
    lossy: bool,
    loss_gen: u64,
    /// Extra delay on etcd's messages of one stream kind, unary calls left
    /// fast: etcd's watch delivery can trail its Txn answers (a slow
    /// watcher, the 100 ms sync loop), and a keepalive answer its renewal.
    lag: Option<(StreamKind, Duration)>,
    lag_gen: u64,
    token_expired: bool,
    /// The lease renewed on the shared keepalive stream, and when each
    /// unanswered request for it was sent.
    keepalive: Option<KeepAlive>,
    ka_stream: Option<u64>,
    observer: Observer,
    observer_gen: u64,
    renewed_last: bool,
    blockers: Option<Blockers>,
    blockers_gen: u64,
    calls: BTreeMap<u64, Call>,
    closing: Option<Closing>,
    closed: bool,
    /// Events held while the process is paused.
    paused: Option<Vec<Ev>>,
    /// What the handle's flag shows, and the term it held.
    leading: Option<LeaderKey>,
    /// The wake-up already scheduled for the cores' next timer.
    wake_at: Option<Time>,
    /// The one candidacy Txn whose answer counts: a new one replaces it,
    /// as the driver drops the old future.
    txn_call: Option<u64>,
}

#[derive(Debug)]
struct KeepAlive {
    id: i64,
    ttl: i64,
    next: Instant,
    in_flight: VecDeque<Instant>,
}

#[derive(Debug)]
struct Blockers {
    keys: Vec<Vec<u8>>,
    rev: i64,
    stream: Option<u64>,
}

#[derive(Debug)]
struct Closing {
    deadline: Instant,
    /// The Resign is out; the session closes after it.
    resigning: bool,
    revokes: u32,
}

pub struct World {
    settings: Settings,
    rng: Rng,
    etcd: Etcd,
    now: Time,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    events: HashMap<u64, Ev>,
    seq: u64,
    epoch: Instant,
    ttl: i64,
    members: Vec<Member>,
    member_gen: Vec<u64>,
    candidates: Vec<Candidate>,
    streams: BTreeMap<(usize, u64), Stream>,
    next_id: u64,
    /// Watch id at etcd -> (candidate, stream).
    watches: HashMap<i64, (usize, u64)>,
    go: Vec<(i64, Vec<u8>)>,
    outcome: Outcome,
    trace: VecDeque<String>,
    last_term: Option<(Vec<u8>, i64)>,
    faults_until: Time,
    /// Pause scenario: since when two candidates both believe they lead.
    overlap_since: Option<Time>,
    /// With a full trace: how many events of each kind ran.
    kinds: BTreeMap<String, u64>,
}

fn tonic_unavailable(what: &str) -> Status {
    Status::unavailable(what.to_string())
}

impl World {
    pub fn new(settings: Settings) -> World {
        let mut rng = Rng::new(settings.seed);
        let count = if settings.pause {
            3
        } else {
            3 + rng.below(3) as usize
        };
        let members = if rng.chance(0.5) { 3 } else { 1 };
        let ttl = 1 + rng.below(3) as i64;
        let epoch = Instant::now();
        let mut world = World {
            rng,
            etcd: {
                // Replays of history in one response, as etcd sends them.
                let mut etcd = Etcd::new(settings.seed);
                etcd.set_batch_replay(true);
                etcd
            },
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            seq: 0,
            epoch,
            ttl,
            members: vec![Member::Up; members],
            member_gen: vec![0; members],
            candidates: Vec::new(),
            streams: BTreeMap::new(),
            next_id: 1,
            watches: HashMap::new(),
            go: Vec::new(),
            outcome: Outcome {
                seed: settings.seed,
                candidates: count,
                members,
                ttl,
                ..Outcome::default()
            },
            trace: VecDeque::new(),
            last_term: None,
            faults_until: settings.fault_time,
            overlap_since: None,
            kinds: BTreeMap::new(),
            settings,
        };
        for c in 0..count {
            world.join(c);
        }
        world.schedule(Duration::from_millis(500), Ev::Scan);
        if !world.settings.pause {
            world.schedule(Duration::from_millis(200), Ev::Fault);
        }
        world
    }

    // ---- time ----

    /// Candidate `c`'s clock at etcd time `at`.
    fn local(&self, c: usize, at: Time) -> Instant {
        let rate = self.candidates[c].rate;
        self.epoch + Duration::from_secs_f64(at.as_secs_f64() * rate)
    }

    /// The etcd time at which candidate `c`'s clock shows `at`.
    fn etcd_time(&self, c: usize, at: Instant) -> Time {
        let local = at.saturating_duration_since(self.epoch);
        Duration::from_secs_f64(local.as_secs_f64() / self.candidates[c].rate)
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.schedule_at(self.now + after, ev);
    }

    fn schedule_at(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, ev);
    }

    /// One hop's latency for candidate `c`: mostly loopback-fast, sometimes
    /// slow, now and then very slow.
    fn latency(&mut self, c: usize) -> Duration {
        let roll = self.rng.below(100);
        let base = if roll < 85 {
            self.rng
                .between(Duration::from_micros(50), Duration::from_micros(800))
        } else if roll < 98 {
            self.rng
                .between(Duration::from_millis(1), Duration::from_millis(20))
        } else {
            self.rng
                .between(Duration::from_millis(50), Duration::from_millis(900))
        };
        // A spike slows every hop, up to a second: longer stalls would
        // break the connection (HTTP/2 pings), which the cuts model.
        (base * self.candidates[c].spike.max(1)).min(MAX_HOP)
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        let line = format!("{:>9.3}s {}", self.now.as_secs_f64(), line());
        self.trace.push_back(line);
        if !self.settings.trace && self.trace.len() > TRACE_TAIL {
            self.trace.pop_front();
        }
    }

    fn fingerprint(&mut self, value: u64) {
        let f = &mut self.outcome.fingerprint;
        *f = (*f ^ value).wrapping_mul(0x0000_0100_0000_01B3);
    }

    // ---- the run ----

    pub fn run(mut self) -> Outcome {
        let end_of_faults = self.faults_until;
        let mut healed = false;
        let mut closing = false;
        let mut close_started = Duration::ZERO;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            let ev = self.events.remove(&seq).expect("queued");
            self.now = at;
            self.outcome.steps += 1;
            self.fingerprint(seq ^ at.as_nanos() as u64);
            if !healed && at >= end_of_faults {
                healed = true;
                self.heal_all();
                self.log(|| "all faults healed".into());
            }
            if healed && !closing && at >= end_of_faults + self.settle_time() {
                if let Some(v) = self.one_leader() {
                    self.violate(v);
                }
                closing = true;
                close_started = at;
                self.close_all();
            }
            self.step(ev);
            if self.outcome.violation.is_some() {
                break;
            }
            if let Some(v) = self.check() {
                self.violate(v);
                break;
            }
            if closing && self.all_closed() {
                if let Some(v) = self.left_in_etcd(ELECTION) {
                    self.violate(v);
                }
                break;
            }
            if closing && at > close_started + Duration::from_secs(self.ttl as u64 * 3 + 5) {
                self.violate("closing did not finish within 3 TTL + 5 s".into());
                break;
            }
        }
        if self.outcome.violation.is_none() && !self.settings.pause {
            // Leases orphaned by lost answers expire on etcd's own clock.
            let until = self.now + Duration::from_secs(self.ttl as u64 + 1);
            while self.now < until {
                self.now += Duration::from_millis(500);
                self.etcd.expire(self.now);
            }
            let left = self.etcd.leases();
            if !left.is_empty() {
                self.violate(format!(
                    "leases left after every candidate closed: {left:x?}"
                ));
            }
        }
        self.outcome.simulated = self.now;
        if self.settings.trace {
            let kinds = format!("events by kind: {:?}", self.kinds);
            self.log(|| kinds);
        }
        self.outcome.trace = self.trace.into_iter().collect();
        self.outcome
    }

    /// TTL + 2 s, with the TTL etcd grants (at least its minimum).
    fn settle_time(&self) -> Duration {
        Duration::from_secs(self.ttl.max(crate::etcd::MIN_LEASE_TTL) as u64 + 2)
    }

    fn violate(&mut self, what: String) {
        self.log(|| format!("VIOLATION: {what}"));
        if self.outcome.violation.is_none() {
            self.outcome.violation = Some(what);
        }
    }

    fn step(&mut self, ev: Ev) {
        if self.settings.trace {
            let kind = format!("{ev:?}");
            let kind = kind.split([' ', '{']).next().unwrap_or_default().to_owned();
            *self.kinds.entry(kind).or_default() += 1;
        }
        if let Some(c) = ev_candidate(&ev)
            && let Some(held) = &mut self.candidates[c].paused
        {
            held.push(ev);
            return;
        }
        match ev {
            Ev::Request { c, conn, call, req } => self.on_request(c, conn, call, req),
            Ev::Reply {
                c,
                conn,
                call,
                result,
            } => {
                if self.candidates[c].conn == conn {
                    self.on_reply(c, call, result);
                }
            }
            Ev::CallTimeout { c, call } => self.on_call_timeout(c, call),
            Ev::KeepAliveRequest { c, stream, id } => self.on_keepalive_request(c, stream, id),
            Ev::KeepAliveReply { c, stream, reply } => self.on_keepalive_reply(c, stream, reply),
            Ev::WatchRequest { c, stream, req } => self.on_watch_request(c, stream, req),
            Ev::WatchReply { c, stream, reply } => self.on_watch_reply(c, stream, reply),
            Ev::StreamFailed { c, stream, status } => self.on_stream_failed(c, stream, status),
            Ev::Wake { c } => self.wake(c),
            Ev::ObserverRetry { c, generation } => {
                if self.candidates[c].observer_gen == generation && !self.candidates[c].closed {
                    self.open_observer(c);
                }
            }
            Ev::BlockersRetry { c, generation } => {
                if self.candidates[c].blockers_gen == generation {
                    self.check_blockers(c);
                }
            }
            Ev::Scan => {
                let expired = self.etcd.expire(self.now);
                if !expired.is_empty() {
                    self.log(|| format!("etcd expired leases {expired:x?}"));
                }
                self.flush_watches();
                // Go-package candidates keep their own leases alive.
                for (lease, _) in self.go.clone() {
                    self.etcd.lease_keepalive(self.now, lease);
                }
                self.schedule(Duration::from_millis(500), Ev::Scan);
            }
            Ev::Fault => {
                if self.now < self.faults_until {
                    self.fault();
                    let pause = self
                        .rng
                        .between(Duration::from_millis(50), Duration::from_millis(1000));
                    self.schedule(pause, Ev::Fault);
                }
            }
            Ev::Heal { what } => self.heal(what),
            Ev::Revoke { c, id, by } => {
                self.revoke(c, id, by);
                self.drive(c);
            }
            Ev::Resume { c } => self.resume(c),
        }
    }

    // ---- candidates ----

    fn join(&mut self, c: usize) {
        let ppm = self.rng.below(1001) as f64 - 500.0;
        let rate = 1.0 + ppm / 1e6;
        let incarnation = self.candidates.get(c).map_or(0, |old| old.incarnation + 1);
        let candidate = Candidate {
            incarnation,
            rate,
            lease: LeaseCore::with_sabotage(self.ttl, self.epoch, self.settings.sabotage),
            cand: Candidacy::with_sabotage(ELECTION.into(), self.settings.sabotage),
            member: self.rng.below(self.members.len() as u64) as usize,
            conn: self.next_id(),
            link: Link::Up,
            link_gen: 0,
            spike: 1,
            spike_gen: 0,
            lossy: false,
            loss_gen: 0,
            lag: None,
            lag_gen: 0,
            token_expired: false,
            keepalive: None,
            ka_stream: None,
            observer: Observer::Off,
            observer_gen: 0,
            renewed_last: false,
            blockers: None,
            blockers_gen: 0,
            calls: BTreeMap::new(),
            closing: None,
            closed: false,
            paused: None,
            leading: None,
            wake_at: None,
            txn_call: None,
        };
        if c < self.candidates.len() {
            self.candidates[c] = candidate;
        } else {
            self.candidates.push(candidate);
        }
        self.log(|| format!("c{c} joins ({ppm:+.0} ppm)"));
        // As `Election::start`: the observer first, then the session.
        self.open_observer(c);
        let now = self.local(c, self.now);
        self.candidates[c].lease.start(now);
        self.drive(c);
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// After every input: publish `is_leader`, then run the cores' actions,
    /// as the drivers do; then make sure the next timer is scheduled.
    fn drive(&mut self, c: usize) {
        loop {
            self.publish(c);
            if let Some(action) = self.candidates[c].lease.poll_action() {
                self.lease_action(c, action);
                continue;
            }
            if let Some(action) = self.candidates[c].cand.poll_action() {
                self.candidacy_action(c, action);
                continue;
            }
            break;
        }
        // As the driver: I/O the core no longer wants is dropped.
        if self.candidates[c].blockers.is_some() && !self.candidates[c].cand.awaits_blockers() {
            self.stop_blockers(c);
        }
        let cand = &self.candidates[c];
        let next = [
            cand.lease.next_timer(),
            cand.cand.next_timer(),
            cand.keepalive.as_ref().map(|k| k.next),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(next) = next {
            let at = self.etcd_time(c, next).max(self.now);
            if self.candidates[c]
                .wake_at
                .is_none_or(|pending| at < pending)
            {
                // Timers fire a little late, as a busy runtime's do.
                let late = self.rng.between(Duration::ZERO, Duration::from_millis(2));
                self.candidates[c].wake_at = Some(at);
                self.schedule_at(at + late, Ev::Wake { c });
            }
        }
    }

    /// The handle's flag follows the core; the invariants watch the changes.
    fn publish(&mut self, c: usize) {
        let term = self.candidates[c].cand.term().cloned();
        let before = self.candidates[c].leading.clone();
        if before.as_ref().map(|t| (&t.key, t.rev)) == term.as_ref().map(|t| (&t.key, t.rev)) {
            return;
        }
        if let Some(old) = &before {
            // A step-down: the lease must still live on etcd, with time to spare.
            let margin = self
                .etcd
                .lease_expires_at(old.lease)
                .and_then(|at| at.checked_sub(self.now));
            let key = String::from_utf8_lossy(&old.key).into_owned();
            match margin {
                Some(margin) if !margin.is_zero() => {
                    let min = &mut self.outcome.min_margin;
                    *min = Some(min.map_or(margin, |m| m.min(margin)));
                    self.log(|| {
                        format!(
                            "c{c} steps down from {key} ({margin:?} before etcd could expire it)"
                        )
                    });
                }
                _ => {
                    if !self.settings.pause {
                        self.violate(format!(
                            "c{c} stepped down from {key} only after etcd could expire its lease"
                        ));
                    }
                }
            }
        }
        if let Some(new) = &term {
            let key = String::from_utf8_lossy(&new.key).into_owned();
            self.log(|| format!("c{c} leads with {key} rev {}", new.rev));
            if let Some((last_key, last_rev)) = &self.last_term
                && (new.rev < *last_rev || (new.rev == *last_rev && new.key != *last_key))
            {
                let what = format!(
                    "fencing token went back: c{c} leads at rev {} after rev {last_rev}",
                    new.rev
                );
                self.violate(what);
            }
            if self.last_term.as_ref().map(|(k, r)| (k.as_slice(), *r))
                != Some((new.key.as_ref(), new.rev))
            {
                self.outcome.leader_changes += 1;
            }
            self.last_term = Some((new.key.to_vec(), new.rev));
        }
        self.candidates[c].leading = term;
    }

    fn lease_action(&mut self, c: usize, action: LeaseAction) {
        let now_local = self.local(c, self.now);
        match action {
            LeaseAction::Grant { ttl } => {
                let call = self.call(
                    c,
                    Call::Grant {
                        sent_at: now_local,
                        revoke_by: None,
                    },
                    Request::Grant { ttl },
                );
                // The driver bounds a grant by the TTL.
                let limit = Duration::from_secs(ttl as u64);
                self.schedule(limit, Ev::CallTimeout { c, call });
            }
            LeaseAction::KeepAlive {
                id,
                ttl,
                granted_at,
            } => {
                self.candidates[c].keepalive = Some(KeepAlive {
                    id,
                    ttl,
                    next: granted_at + renew_interval(ttl),
                    in_flight: VecDeque::new(),
                });
            }
            LeaseAction::StopKeepAlive { .. } => self.candidates[c].keepalive = None,
            LeaseAction::Gained { id } => {
                self.log(|| format!("c{c} holds lease {id:x}"));
                self.candidates[c].cand.on_lease(Some(id), None);
            }
            LeaseAction::Failed { error } => {
                self.log(|| format!("c{c} grant failed: {error}"));
                self.recover(c, &error);
                self.candidates[c].cand.on_lease(None, Some(error));
            }
            LeaseAction::Lost { id, error, .. } => {
                self.log(|| format!("c{c} lost lease {id:x}: {error}"));
                self.candidates[c].cand.on_lease(None, Some(error.clone()));
                self.publish(c);
                self.recover(c, &error);
            }
            LeaseAction::Reset { id } => {
                self.log(|| format!("c{c} resets lease {id:x}"));
                self.candidates[c].cand.on_lease(None, None);
            }
            LeaseAction::Revoke { id, by } => self.revoke(c, id, by),
            LeaseAction::RevokeGrant { by } => {
                for call in self.candidates[c].calls.values_mut() {
                    if let Call::Grant { revoke_by, .. } = call {
                        *revoke_by = Some(by);
                    }
                }
            }
        }
    }

    fn candidacy_action(&mut self, c: usize, action: Action) {
        match action {
            Action::SendTxn { lease } => {
                let candidate = format!("c{c}");
                let txn = candidacy_txn(ELECTION, lease, &candidate);
                let call = self.call(c, Call::Txn { lease }, Request::Txn(txn));
                self.candidates[c].txn_call = Some(call);
            }
            Action::WatchBlockers { keys, as_of_rev } => {
                let keys: Vec<Vec<u8>> = keys.into_iter().map(String::into_bytes).collect();
                self.log(|| format!("c{c} defers to {} Go candidates", keys.len()));
                self.stop_blockers(c);
                self.candidates[c].blockers = Some(Blockers {
                    keys,
                    rev: as_of_rev,
                    stream: None,
                });
                self.watch_blockers(c);
            }
            Action::Resign(term) => self.resign(c, term, false),
            Action::ResetSession => {
                let now = self.local(c, self.now);
                self.candidates[c].lease.on_reset(now);
            }
            Action::Emit(event) => {
                if event.err.is_some() || event.is_leader {
                    self.log(|| format!("c{c} event {event:?}"));
                }
            }
            Action::LeaderChanged | Action::Led { .. } => {}
        }
    }

    fn resign(&mut self, c: usize, term: LeaderKey, closing: bool) {
        let request = ResignRequest { leader: Some(term) };
        let call = self.call(c, Call::Resign { closing }, Request::Resign(request));
        let limit = Duration::from_secs(self.ttl as u64) / 2;
        self.schedule(limit, Ev::CallTimeout { c, call });
    }

    fn revoke(&mut self, c: usize, id: i64, by: Instant) {
        if self.local(c, self.now) >= by {
            return self.revoke_done(c);
        }
        self.call(c, Call::Revoke { id, by }, Request::Revoke(id));
    }

    fn revoke_done(&mut self, c: usize) {
        if let Some(closing) = &mut self.candidates[c].closing
            && !closing.resigning
        {
            closing.revokes = closing.revokes.saturating_sub(1);
            if closing.revokes == 0 {
                self.finish_close(c);
            }
        }
    }

    /// Sends a unary request over candidate `c`'s link.
    fn call(&mut self, c: usize, call: Call, req: Request) -> u64 {
        let id = self.next_id();
        self.candidates[c].calls.insert(id, call);
        let conn = self.candidates[c].conn;
        match self.candidates[c].link {
            Link::Up => {
                let latency = self.latency(c);
                self.schedule(
                    latency,
                    Ev::Request {
                        c,
                        conn,
                        call: id,
                        req,
                    },
                );
            }
            Link::Cut => {
                let latency = Duration::from_micros(100);
                self.schedule(
                    latency,
                    Ev::Reply {
                        c,
                        conn,
                        call: id,
                        result: Err(tonic_unavailable("connection refused")),
                    },
                );
            }
            Link::Blackhole => {}
        }
        id
    }

    /// etcd receives a unary request.
    fn on_request(&mut self, c: usize, conn: u64, call: u64, req: Request) {
        let member = self.candidates[c].member;
        let result = if self.candidates[c].link != Link::Up {
            // Sent before the fault: lost in it.
            return;
        } else if self.members[member] == Member::Down {
            Err(tonic_unavailable("connection refused"))
        } else if self.members[member] == Member::NoLeader {
            Err(Status::unavailable("etcdserver: no leader"))
        } else if self.candidates[c].token_expired && !matches!(req, Request::Grant { .. }) {
            Err(Status::unauthenticated("etcdserver: invalid auth token"))
        } else if self.candidates[c].lossy && self.rng.chance(0.2) {
            // The request is lost on the way: the connection breaks.
            Err(tonic_unavailable("connection reset (request lost)"))
        } else {
            let answer = self.apply(req);
            if answer.is_ok() && self.candidates[c].lossy && self.rng.chance(0.2) {
                // Applied, but the answer is lost: the caller sees a failure.
                self.log(|| format!("c{c}: answer lost after etcd applied the request"));
                Err(tonic_unavailable("connection reset (answer lost)"))
            } else {
                answer
            }
        };
        self.flush_watches();
        let latency = self.latency(c);
        self.schedule(
            latency,
            Ev::Reply {
                c,
                conn,
                call,
                result,
            },
        );
    }

    /// etcd applies a request.
    fn apply(&mut self, req: Request) -> Result<Answer, Status> {
        match req {
            Request::Grant { ttl } => Ok(Answer::Grant(self.etcd.lease_grant(self.now, ttl))),
            Request::Txn(txn) => self.etcd.txn(&txn).map(Answer::Txn),
            Request::Resign(resign) => self
                .etcd
                .resign(&resign)
                .map(|r| Answer::Resign(r.header.map_or(0, |h| h.revision))),
            Request::Revoke(id) => self.etcd.lease_revoke(id).map(|_| Answer::Revoke),
            Request::Range(range) => self.etcd.range(&range).map(|r| Answer::Range(r.kvs)),
            Request::Proclaim(p) => self.etcd.proclaim(&p).map(|_| Answer::Proclaim),
        }
    }

    fn on_reply(&mut self, c: usize, call: u64, result: Result<Answer, Status>) {
        let Some(purpose) = self.candidates[c].calls.remove(&call) else {
            return;
        };
        let now = self.local(c, self.now);
        let result = result.map_err(Error::from);
        match (purpose, result) {
            (Call::Grant { sent_at, revoke_by }, Ok(Answer::Grant(grant))) => {
                if let Some(by) = revoke_by {
                    // A grant given up while in flight: revoke what it got.
                    self.revoke(c, grant.id, by);
                } else {
                    self.candidates[c]
                        .lease
                        .on_granted(now, sent_at, grant.id, grant.ttl);
                }
            }
            (Call::Grant { revoke_by, .. }, Err(error)) => {
                if revoke_by.is_none() {
                    self.candidates[c].lease.on_grant_failed(now, error);
                }
            }
            (Call::Txn { lease }, result) => {
                if !self.candidates[c].cand.entering() || self.candidates[c].txn_call != Some(call)
                {
                    return; // the driver dropped this Txn already
                }
                let outcome = result.and_then(|answer| match answer {
                    Answer::Txn(response) => entered(ELECTION, response),
                    other => panic!("a Txn answered {other:?}"),
                });
                match outcome {
                    Ok(entered) => {
                        self.log(|| {
                            format!(
                                "c{c}'s Txn: in at rev {}, leader {:?}, {} older Go candidates",
                                entered.our_rev,
                                entered.leader.as_ref().map(|l| (&l.key, l.rev)),
                                entered.go_older.len()
                            )
                        });
                        self.candidates[c].cand.on_txn_answered(now, lease, entered)
                    }
                    Err(error) => {
                        let renewed = self.recover(c, &error);
                        self.candidates[c]
                            .cand
                            .on_txn_failed(now, lease, error, renewed);
                    }
                }
            }
            (Call::Resign { closing }, result) => {
                if closing {
                    self.close_session(c);
                } else {
                    match result {
                        Ok(Answer::Resign(rev)) => self.candidates[c].cand.on_resign_answered(rev),
                        _ => self.candidates[c].cand.on_resign_failed(now),
                    }
                }
            }
            (Call::Revoke { id, by }, result) => match result {
                Err(error) if error.is_retryable() && !matches!(error, Error::LeaseNotFound(_)) => {
                    // As `session::revoke`: again at once after a renewed
                    // token, else after 50 ms.
                    if self.recover(c, &error) {
                        self.revoke(c, id, by);
                    } else {
                        self.schedule(Duration::from_millis(50), Ev::Revoke { c, id, by });
                    }
                }
                _ => self.revoke_done(c),
            },
            (Call::Read { stream, rev }, result) => self.on_read(c, stream, rev, result),
            (Call::BlockersLeft { keys, generation }, result) => {
                if self.candidates[c].blockers_gen == generation {
                    self.on_blockers_left(c, keys, result);
                }
            }
            (Call::Proclaim, _) => {}
            (Call::Fenced, result) => {
                self.outcome.fenced_writes += 1;
                match result {
                    Ok(Answer::Txn(response)) if !response.succeeded => {
                        self.outcome.fenced_refused += 1;
                        self.log(|| format!("c{c}: etcd refused its fenced write"));
                    }
                    Ok(_) => {
                        self.log(|| format!("c{c}: etcd APPLIED its fenced write"));
                    }
                    Err(error) => {
                        self.log(|| format!("c{c}: fenced write failed: {error}"));
                    }
                }
            }
            (purpose, result) => panic!("unexpected answer {result:?} to {purpose:?}"),
        }
        self.drive(c);
    }

    fn on_call_timeout(&mut self, c: usize, call: u64) {
        let Some(purpose) = self.candidates[c].calls.remove(&call) else {
            return;
        };
        let now = self.local(c, self.now);
        match purpose {
            Call::Grant { revoke_by, .. } => {
                if revoke_by.is_none() {
                    let error = Error::Timeout {
                        what: "LeaseGrant",
                        after: Duration::from_secs(self.ttl as u64),
                    };
                    self.candidates[c].lease.on_grant_failed(now, error);
                }
            }
            Call::Resign { closing: true } => self.close_session(c),
            Call::Resign { closing: false } => self.candidates[c].cand.on_resign_failed(now),
            other => panic!("no timeout for {other:?}"),
        }
        self.drive(c);
    }

    /// What `Client::recover` does: a rejected token is renewed (true); a
    /// failed member is left for the next one.
    fn recover(&mut self, c: usize, error: &Error) -> bool {
        if error.is_token_rejected() && self.candidates[c].token_expired {
            self.candidates[c].token_expired = false;
            self.log(|| format!("c{c} renews its token"));
            return true;
        }
        if error.is_member_failure() && self.members.len() > 1 {
            self.move_member(c);
        }
        false
    }

    /// Calls move to the next member: a new connection; the observer
    /// follows at once (`moved_away`).
    fn move_member(&mut self, c: usize) {
        let next = (self.candidates[c].member + 1) % self.members.len();
        self.candidates[c].member = next;
        self.log(|| format!("c{c} moves to member {next}"));
        if let Some(stream) = self.observer_stream(c) {
            self.fail_stream(c, stream, tonic_unavailable("moved away"));
        }
    }

    fn wake(&mut self, c: usize) {
        if self.candidates[c].wake_at.is_some_and(|at| at <= self.now) {
            self.candidates[c].wake_at = None;
        }
        if self.candidates[c].closed {
            return;
        }
        let now = self.local(c, self.now);
        self.candidates[c].lease.on_timer(now);
        self.candidates[c].cand.on_timer(now);
        self.renew_due(c, now);
        self.drive(c);
    }

    // ---- keepalive: the glue of the shared keeper ----

    fn renew_due(&mut self, c: usize, now: Instant) {
        let Some(ka) = &mut self.candidates[c].keepalive else {
            return;
        };
        if ka.next > now {
            return;
        }
        ka.next = now + renew_interval(ka.ttl);
        ka.in_flight.push_back(now);
        let id = ka.id;
        let stream = match self.candidates[c].ka_stream {
            Some(stream) => stream,
            None => {
                let stream = self.open_stream(c, StreamKind::KeepAlive);
                self.candidates[c].ka_stream = Some(stream);
                stream
            }
        };
        self.send_up(c, stream, |c, stream| Ev::KeepAliveRequest {
            c,
            stream,
            id,
        });
    }

    fn on_keepalive_request(&mut self, c: usize, stream: u64, id: i64) {
        if !self.stream_alive(c, stream) {
            return;
        }
        // A stream loses no single message: on a lossy link, the loss of
        // one breaks the connection's stream, before or after etcd applied it.
        if self.candidates[c].lossy && self.rng.chance(0.2) {
            return self.fail_stream(
                c,
                stream,
                tonic_unavailable("connection reset (request lost)"),
            );
        }
        let reply = self.etcd.lease_keepalive(self.now, id);
        if self.candidates[c].lossy && self.rng.chance(0.2) {
            return self.fail_stream(
                c,
                stream,
                tonic_unavailable("connection reset (answer lost)"),
            );
        }
        self.send_down(c, stream, |c, stream| Ev::KeepAliveReply {
            c,
            stream,
            reply,
        });
    }

    fn on_keepalive_reply(&mut self, c: usize, stream: u64, reply: LeaseKeepAliveResponse) {
        if self.candidates[c].ka_stream != Some(stream) {
            return;
        }
        let now = self.local(c, self.now);
        let Some(ka) = &mut self.candidates[c].keepalive else {
            return;
        };
        if ka.id != reply.id {
            return;
        }
        let Some(sent_at) = ka.in_flight.pop_front() else {
            return;
        };
        self.candidates[c]
            .lease
            .on_renewed(now, reply.id, sent_at, reply.ttl);
        self.drive(c);
    }

    // ---- the observer: the glue of `run_observe` ----

    fn open_observer(&mut self, c: usize) {
        let stream = self.open_stream(c, StreamKind::Observer);
        self.candidates[c].observer = Observer::Creating { stream };
        let req = Follower::watch_request(ELECTION);
        self.send_up(c, stream, |c, stream| Ev::WatchRequest { c, stream, req });
    }

    fn observer_stream(&self, c: usize) -> Option<u64> {
        match &self.candidates[c].observer {
            Observer::Off => None,
            Observer::Creating { stream }
            | Observer::Reading { stream, .. }
            | Observer::Following { stream, .. } => Some(*stream),
        }
    }

    fn on_watch_request(&mut self, c: usize, stream: u64, req: WatchCreateRequest) {
        if !self.stream_alive(c, stream) {
            return;
        }
        if self.candidates[c].token_expired {
            let status = Status::unauthenticated("etcdserver: invalid auth token");
            return self.fail_stream(c, stream, status);
        }
        let created = self.etcd.watch_create(&req);
        if let Some(s) = self.streams.get_mut(&(c, stream)) {
            s.watch_id = Some(created.watch_id);
        }
        self.watches.insert(created.watch_id, (c, stream));
        self.send_down(c, stream, |c, stream| Ev::WatchReply {
            c,
            stream,
            reply: created,
        });
    }

    fn on_watch_reply(&mut self, c: usize, stream: u64, reply: WatchResponse) {
        if !self.streams.contains_key(&(c, stream)) {
            return;
        }
        if self.observer_stream(c) == Some(stream) {
            self.on_observer_reply(c, stream, reply);
        } else if self.candidates[c]
            .blockers
            .as_ref()
            .is_some_and(|b| b.stream == Some(stream))
        {
            self.on_blockers_reply(c, reply);
        }
        self.drive(c);
    }

    fn on_observer_reply(&mut self, c: usize, stream: u64, reply: WatchResponse) {
        let observer = std::mem::replace(&mut self.candidates[c].observer, Observer::Off);
        self.candidates[c].observer = match observer {
            Observer::Creating { .. } if reply.canceled || !reply.created => {
                // As `KeyWatch::open`: a refused watch is a failure.
                self.drop_stream(c, stream);
                let error = Error::WatchCanceled {
                    reason: reply.cancel_reason,
                    compact_revision: reply.compact_revision,
                };
                self.observer_failed(c, error);
                return;
            }
            Observer::Creating { .. } => {
                let rev = reply.header.map_or(0, |h| h.revision);
                self.candidates[c].cand.on_watching();
                let read = Follower::read_request(ELECTION, rev);
                self.call(c, Call::Read { stream, rev }, Request::Range(read));
                Observer::Reading {
                    stream,
                    pending: Vec::new(),
                }
            }
            Observer::Reading {
                stream,
                mut pending,
            } => {
                pending.push(reply);
                Observer::Reading { stream, pending }
            }
            Observer::Following {
                stream,
                mut follower,
            } => {
                for report in follower.on_events(reply.events) {
                    self.report(c, report);
                }
                Observer::Following { stream, follower }
            }
            other => other,
        };
    }

    fn on_read(&mut self, c: usize, stream: u64, rev: i64, result: Result<Answer, Error>) {
        let observer = std::mem::replace(&mut self.candidates[c].observer, Observer::Off);
        let pending = match observer {
            Observer::Reading { stream: s, pending } if s == stream => pending,
            other => {
                // A read of a watch given up since: the driver dropped it.
                self.candidates[c].observer = other;
                return;
            }
        };
        let kvs = match result {
            Ok(Answer::Range(kvs)) => kvs,
            Ok(other) => panic!("a read answered {other:?}"),
            Err(error) => {
                self.drop_stream(c, stream);
                return self.observer_failed(c, error);
            }
        };
        let (mut follower, report) = Follower::new(ELECTION, rev, kvs);
        self.report(c, report);
        for reply in pending {
            for report in follower.on_events(reply.events) {
                self.report(c, report);
            }
        }
        self.candidates[c].observer = Observer::Following { stream, follower };
    }

    fn report(&mut self, c: usize, report: Report) {
        if self.settings.trace {
            let leader = report.leader.as_ref().map(|l| (l.key.clone(), l.rev));
            self.log(|| format!("c{c}'s observer: {leader:?} as of {}", report.as_of_rev));
        }
        self.candidates[c].cand.on_report(report);
        self.publish(c);
    }

    /// The observer's watch failed: reopen at once after a token renewal,
    /// else report it and retry after a pause, as `run_observe` does.
    fn observer_failed(&mut self, c: usize, error: Error) {
        self.candidates[c].observer = Observer::Off;
        if self.candidates[c].closed || self.candidates[c].closing.is_some() {
            return;
        }
        let renewed = self.recover(c, &error);
        let last = std::mem::replace(&mut self.candidates[c].renewed_last, renewed);
        if renewed && !last {
            return self.open_observer(c);
        }
        self.candidates[c].cand.on_observer_failed(error);
        self.candidates[c].observer_gen += 1;
        let generation = self.candidates[c].observer_gen;
        self.schedule(
            Duration::from_millis(500),
            Ev::ObserverRetry { c, generation },
        );
    }

    // ---- Go blockers: the glue of `until_deleted` ----

    fn watch_blockers(&mut self, c: usize) {
        let Some(blockers) = &self.candidates[c].blockers else {
            return;
        };
        let req = deletes_watch(&blockers.keys, blockers.rev);
        let stream = self.open_stream(c, StreamKind::Blockers);
        if let Some(b) = &mut self.candidates[c].blockers {
            b.stream = Some(stream);
        }
        self.send_up(c, stream, |c, stream| Ev::WatchRequest { c, stream, req });
    }

    fn on_blockers_reply(&mut self, c: usize, reply: WatchResponse) {
        if !self.candidates[c].cand.awaits_blockers() {
            return self.stop_blockers(c);
        }
        let Some(blockers) = &mut self.candidates[c].blockers else {
            return;
        };
        for event in reply.events {
            if let Some(kv) = event.kv {
                blockers.keys.retain(|key| **key != *kv.key);
            }
        }
        if blockers.keys.is_empty() {
            self.log(|| format!("c{c}: the Go candidates it deferred to are gone"));
            self.stop_blockers(c);
            self.candidates[c].cand.on_blockers_gone();
        }
    }

    fn stop_blockers(&mut self, c: usize) {
        if let Some(blockers) = self.candidates[c].blockers.take()
            && let Some(stream) = blockers.stream
        {
            self.drop_stream(c, stream);
        }
        self.candidates[c].blockers_gen += 1;
    }

    /// After a failed watch: which blockers are left, as of one revision.
    fn check_blockers(&mut self, c: usize) {
        let Some(blockers) = &self.candidates[c].blockers else {
            return;
        };
        let keys = blockers.keys.clone();
        let generation = self.candidates[c].blockers_gen;
        let txn = left_of(&keys);
        self.call(
            c,
            Call::BlockersLeft { keys, generation },
            Request::Txn(txn),
        );
    }

    fn on_blockers_left(&mut self, c: usize, keys: Vec<Vec<u8>>, result: Result<Answer, Error>) {
        self.log(|| {
            format!(
                "c{c}: which Go candidates are left: {:?}",
                result.as_ref().map(|_| ()).map_err(|e| e.to_string())
            )
        });
        if !self.candidates[c].cand.awaits_blockers() {
            return self.stop_blockers(c);
        }
        let Ok(Answer::Txn(response)) = result else {
            // As `until_deleted`: unknown, so watch them all again from
            // where we were (that watch's failure is what recovers).
            return self.watch_blockers(c);
        };
        let rev = response.header.map_or(0, |h| h.revision);
        let left: Vec<Vec<u8>> = keys
            .into_iter()
            .zip(response.responses)
            .filter(|(_, r)| match &r.response {
                Some(etcdutil::proto::etcdserverpb::response_op::Response::ResponseRange(
                    range,
                )) => range.count > 0,
                _ => true,
            })
            .map(|(key, _)| key)
            .collect();
        if left.is_empty() {
            self.log(|| format!("c{c}: no Go candidate it deferred to is left"));
            self.stop_blockers(c);
            self.candidates[c].cand.on_blockers_gone();
            return;
        }
        self.candidates[c].blockers = Some(Blockers {
            keys: left,
            rev,
            stream: None,
        });
        self.watch_blockers(c);
    }

    fn blockers_failed(&mut self, c: usize) {
        self.log(|| {
            format!("c{c}: its watch of the Go candidates failed; checking again in 500 ms")
        });
        if let Some(blockers) = &mut self.candidates[c].blockers {
            blockers.stream = None;
        }
        self.candidates[c].blockers_gen += 1;
        let generation = self.candidates[c].blockers_gen;
        self.schedule(
            Duration::from_millis(500),
            Ev::BlockersRetry { c, generation },
        );
    }

    // ---- streams ----

    fn open_stream(&mut self, c: usize, kind: StreamKind) -> u64 {
        let id = self.next_id();
        let member = self.candidates[c].member;
        self.streams.insert(
            (c, id),
            Stream {
                kind,
                member,
                watch_id: None,
                up_at: self.now,
                down_at: self.now,
            },
        );
        if self.candidates[c].link == Link::Cut || self.members[member] == Member::Down {
            self.fail_stream(c, id, tonic_unavailable("connection refused"));
        } else if self.members[member] == Member::NoLeader {
            self.fail_stream(c, id, Status::unavailable("etcdserver: no leader"));
        }
        id
    }

    fn stream_alive(&self, c: usize, stream: u64) -> bool {
        self.streams.contains_key(&(c, stream)) && self.candidates[c].link == Link::Up
    }

    /// A message from the candidate on `stream`, in order after the last.
    fn send_up(&mut self, c: usize, stream: u64, ev: impl FnOnce(usize, u64) -> Ev) {
        if self.candidates[c].link != Link::Up {
            return;
        }
        let latency = self.latency(c);
        let Some(s) = self.streams.get_mut(&(c, stream)) else {
            return;
        };
        let at = (self.now + latency).max(s.up_at);
        s.up_at = at;
        self.schedule_at(at, ev(c, stream));
    }

    /// A message from etcd on `stream`, in order after the last.
    fn send_down(&mut self, c: usize, stream: u64, ev: impl FnOnce(usize, u64) -> Ev) {
        if self.candidates[c].link != Link::Up {
            return;
        }
        let mut latency = self.latency(c);
        let Some(s) = self.streams.get_mut(&(c, stream)) else {
            return;
        };
        if let Some((kind, lag)) = self.candidates[c].lag
            && kind == s.kind
        {
            latency += lag;
        }
        let at = (self.now + latency).max(s.down_at);
        s.down_at = at;
        self.schedule_at(at, ev(c, stream));
    }

    /// Delivers every watch event etcd produced to the streams that watch.
    fn flush_watches(&mut self) {
        for (watch_id, reply) in self.etcd.take_watch_events() {
            let Some(&(c, stream)) = self.watches.get(&watch_id) else {
                continue;
            };
            self.send_down(c, stream, |c, stream| Ev::WatchReply { c, stream, reply });
        }
    }

    /// Closes a stream at etcd's end, unheard by the candidate.
    fn drop_stream(&mut self, c: usize, stream: u64) {
        if let Some(s) = self.streams.remove(&(c, stream))
            && let Some(watch_id) = s.watch_id
        {
            self.etcd.watch_cancel(watch_id);
            self.watches.remove(&watch_id);
        }
        if self.candidates[c].ka_stream == Some(stream) {
            self.candidates[c].ka_stream = None;
        }
    }

    /// A stream breaks: the candidate hears it at once.
    fn fail_stream(&mut self, c: usize, stream: u64, status: Status) {
        if !self.streams.contains_key(&(c, stream)) {
            return;
        }
        self.schedule(
            Duration::from_micros(10),
            Ev::StreamFailed { c, stream, status },
        );
    }

    fn on_stream_failed(&mut self, c: usize, stream: u64, status: Status) {
        let Some(kind) = self.streams.get(&(c, stream)).map(|s| s.kind) else {
            return;
        };
        self.drop_stream(c, stream);
        let error = Error::from(status);
        let now = self.local(c, self.now);
        match kind {
            StreamKind::KeepAlive => {
                if self.recover(c, &error) {
                    // Only the token: the lease is fine; the next renewal reopens.
                    if let Some(ka) = &mut self.candidates[c].keepalive {
                        ka.in_flight.clear();
                    }
                } else if let Some(ka) = self.candidates[c].keepalive.take() {
                    self.candidates[c]
                        .lease
                        .on_keepalive_failed(now, ka.id, error);
                }
            }
            StreamKind::Observer => {
                if self.observer_stream(c) == Some(stream) {
                    self.observer_failed(c, error);
                }
            }
            StreamKind::Blockers => {
                if self.candidates[c]
                    .blockers
                    .as_ref()
                    .is_some_and(|b| b.stream == Some(stream))
                {
                    self.recover(c, &error);
                    self.blockers_failed(c);
                }
            }
        }
        self.drive(c);
    }

    /// Every stream of candidate `c` (on `member`, or all) breaks; its
    /// connection is replaced, so answers in flight are lost.
    fn break_connection(&mut self, c: usize, member: Option<usize>, status: &Status) {
        let streams: Vec<u64> = self
            .streams
            .iter()
            .filter(|((sc, _), s)| *sc == c && member.is_none_or(|m| s.member == m))
            .map(|((_, id), _)| *id)
            .collect();
        for stream in streams {
            self.fail_stream(c, stream, status.clone());
        }
        if member.is_none_or(|m| self.candidates[c].member == m) {
            let conn = self.next_id();
            self.candidates[c].conn = conn;
            // Calls in flight fail (their answers, if any, are lost).
            let calls: Vec<u64> = self.candidates[c].calls.keys().copied().collect();
            for call in calls {
                self.schedule(
                    Duration::from_micros(10),
                    Ev::Reply {
                        c,
                        conn,
                        call,
                        result: Err(status.clone()),
                    },
                );
            }
        }
    }

    // ---- faults ----

    fn fault(&mut self) {
        let live: Vec<usize> = (0..self.candidates.len())
            .filter(|&c| !self.candidates[c].closed && self.candidates[c].closing.is_none())
            .collect();
        let reachable = live
            .iter()
            .filter(|&&c| self.candidates[c].link == Link::Up)
            .count();
        let leader = live
            .iter()
            .copied()
            .find(|&c| self.candidates[c].cand.is_leader());
        // Aim at the leader more often than at the others.
        let target = match leader {
            Some(l) if self.rng.chance(0.5) => l,
            _ => live[self.rng.below(live.len() as u64) as usize],
        };
        let heal_after = self
            .rng
            .between(Duration::from_millis(100), Duration::from_secs(4));
        match self.rng.below(15) {
            0 | 1 if reachable > 2 && self.candidates[target].link == Link::Up => {
                self.outcome.faults += 1;
                self.log(|| format!("FAULT cut c{target} for {heal_after:?}"));
                self.candidates[target].link = Link::Cut;
                self.break_connection(target, None, &tonic_unavailable("connection reset"));
                self.candidates[target].link_gen =
                    self.heal_later(heal_after, |generation| Heal::Link(target, generation));
            }
            2 | 3 if reachable > 2 && self.candidates[target].link == Link::Up => {
                self.outcome.faults += 1;
                self.log(|| format!("FAULT blackhole c{target} for {heal_after:?}"));
                self.candidates[target].link = Link::Blackhole;
                self.candidates[target].link_gen =
                    self.heal_later(heal_after, |generation| Heal::Link(target, generation));
            }
            4 if self.members.len() > 1 && self.members.iter().all(|m| *m == Member::Up) => {
                let m = self.rng.below(self.members.len() as u64) as usize;
                let down = self.rng.chance(0.5);
                self.outcome.faults += 1;
                self.log(|| {
                    format!(
                        "FAULT member {m} {} for {heal_after:?}",
                        if down { "down" } else { "loses its leader" }
                    )
                });
                let (state, status) = if down {
                    (Member::Down, tonic_unavailable("connection reset"))
                } else {
                    (
                        Member::NoLeader,
                        Status::unavailable("etcdserver: no leader"),
                    )
                };
                self.members[m] = state;
                for c in 0..self.candidates.len() {
                    self.break_connection(c, Some(m), &status);
                }
                self.member_gen[m] =
                    self.heal_later(heal_after, |generation| Heal::Member(m, generation));
            }
            5 => {
                self.outcome.faults += 1;
                self.log(|| format!("FAULT c{target}'s token expires"));
                self.candidates[target].token_expired = true;
            }
            6 => {
                self.outcome.faults += 1;
                let factor = 2 + self.rng.below(20) as u32;
                self.log(|| format!("FAULT c{target}'s latency x{factor} for {heal_after:?}"));
                self.candidates[target].spike = factor;
                self.candidates[target].spike_gen =
                    self.heal_later(heal_after, |generation| Heal::Spike(target, generation));
            }
            7 => {
                self.outcome.faults += 1;
                self.log(|| {
                    format!("FAULT c{target} loses requests and answers for {heal_after:?}")
                });
                self.candidates[target].lossy = true;
                self.candidates[target].loss_gen =
                    self.heal_later(heal_after, |generation| Heal::Loss(target, generation));
            }
            8 => {
                if let Some(l) = leader {
                    self.log(|| format!("c{l} concedes"));
                    self.candidates[l].cand.on_concede();
                    self.drive(l);
                }
            }
            9 if live.len() > 2 => {
                self.log(|| format!("c{target} closes"));
                self.close(target);
            }
            10 => {
                if let Some(c) = (0..self.candidates.len()).find(|&c| self.candidates[c].closed) {
                    self.join(c);
                }
            }
            11 => {
                if let Some(l) = leader {
                    let term = self.candidates[l].cand.term().cloned().expect("leads");
                    let value = format!("c{l} at {:.3}", self.now.as_secs_f64());
                    self.log(|| format!("c{l} proclaims {value:?}"));
                    let req = ProclaimRequest {
                        leader: Some(term),
                        value: value.into(),
                    };
                    self.call(l, Call::Proclaim, Request::Proclaim(req));
                }
            }
            12 => self.go_candidate(),
            13 | 14 => {
                self.outcome.faults += 1;
                let kind = if self.rng.chance(0.5) {
                    StreamKind::Observer
                } else {
                    StreamKind::KeepAlive
                };
                let lag = self
                    .rng
                    .between(Duration::from_millis(50), Duration::from_millis(900));
                self.log(|| {
                    format!("FAULT c{target}'s {kind:?} stream lags {lag:?} for {heal_after:?}")
                });
                self.candidates[target].lag = Some((kind, lag));
                self.candidates[target].lag_gen =
                    self.heal_later(heal_after, |generation| Heal::Lag(target, generation));
            }
            _ => {}
        }
    }

    /// A Go-package candidate joins (`/elections/<name><lease hex>`), or the
    /// oldest one leaves.
    fn go_candidate(&mut self) {
        if self.go.len() < 2 && self.rng.chance(0.6) {
            let grant = self.etcd.lease_grant(self.now, 10);
            let key = format!("{ELECTION}{:x}", grant.id).into_bytes();
            let put = PutRequest {
                key: key.clone().into(),
                value: "go".into(),
                lease: grant.id,
                ..Default::default()
            };
            self.etcd.put(&put).expect("put");
            self.log(|| format!("a Go candidate joins as {}", String::from_utf8_lossy(&key)));
            self.go.push((grant.id, key));
        } else if !self.go.is_empty() {
            let (lease, key) = self.go.remove(0);
            self.log(|| format!("the Go candidate {} leaves", String::from_utf8_lossy(&key)));
            let _ = self.etcd.lease_revoke(lease);
        }
        self.flush_watches();
    }

    /// Schedules the end of a fault; returns its generation, which a newer
    /// fault of the same kind replaces (then this heal does nothing).
    fn heal_later(&mut self, after: Duration, what: impl FnOnce(u64) -> Heal) -> u64 {
        let generation = self.next_id();
        self.schedule(
            after,
            Ev::Heal {
                what: what(generation),
            },
        );
        generation
    }

    fn heal(&mut self, what: Heal) {
        match what {
            Heal::Link(c, generation) if self.candidates[c].link_gen == generation => {
                self.restore_link(c)
            }
            Heal::Member(m, generation) if self.member_gen[m] == generation => {
                self.log(|| format!("member {m} is back"));
                self.members[m] = Member::Up;
            }
            Heal::Spike(c, generation) if self.candidates[c].spike_gen == generation => {
                self.candidates[c].spike = 1;
            }
            Heal::Loss(c, generation) if self.candidates[c].loss_gen == generation => {
                self.candidates[c].lossy = false;
            }
            Heal::Lag(c, generation) if self.candidates[c].lag_gen == generation => {
                self.candidates[c].lag = None;
            }
            _ => {}
        }
    }

    fn restore_link(&mut self, c: usize) {
        let was = self.candidates[c].link;
        if was == Link::Up {
            return;
        }
        self.log(|| format!("c{c}'s link is back"));
        self.candidates[c].link = Link::Up;
        if was == Link::Blackhole {
            // HTTP/2 pings found the connection dead: it is replaced.
            self.break_connection(c, None, &tonic_unavailable("keepalive ping timed out"));
        }
    }

    fn heal_all(&mut self) {
        for c in 0..self.candidates.len() {
            self.restore_link(c);
            self.candidates[c].spike = 1;
            self.candidates[c].lossy = false;
            self.candidates[c].lag = None;
            self.candidates[c].link_gen = self.next_id();
        }
        for m in 0..self.members.len() {
            self.members[m] = Member::Up;
            // Heals still on their way no longer apply.
            self.member_gen[m] = self.next_id();
        }
        for c in 0..self.candidates.len() {
            if self.candidates[c].closed {
                self.join(c);
            }
        }
    }

    // ---- close ----

    fn close(&mut self, c: usize) {
        if self.candidates[c].closing.is_some() || self.candidates[c].closed {
            return;
        }
        let budget = Duration::from_secs(self.ttl as u64) + Duration::from_millis(800);
        let deadline = self.local(c, self.now) + budget;
        let term = self.candidates[c].cand.on_close();
        self.candidates[c].closing = Some(Closing {
            deadline,
            resigning: term.is_some(),
            revokes: 0,
        });
        self.stop_blockers(c);
        if let Some(stream) = self.observer_stream(c) {
            self.drop_stream(c, stream);
        }
        self.candidates[c].observer = Observer::Off;
        self.publish(c);
        match term {
            Some(term) => self.resign(c, term, true),
            None => self.close_session(c),
        }
        self.drive(c);
    }

    fn close_session(&mut self, c: usize) {
        let Some(closing) = &mut self.candidates[c].closing else {
            return;
        };
        if !closing.resigning && closing.revokes > 0 {
            return;
        }
        closing.resigning = false;
        let deadline = closing.deadline;
        self.candidates[c].lease.on_close(deadline);
        let mut revokes = 0;
        while let Some(action) = self.candidates[c].lease.poll_action() {
            match action {
                LeaseAction::Revoke { id, by } => {
                    revokes += 1;
                    self.call(c, Call::Revoke { id, by }, Request::Revoke(id));
                }
                other => self.lease_action(c, other),
            }
        }
        // Grants still in flight are revoked when answered; the close waits
        // for none of them past the deadline.
        if revokes == 0 {
            return self.finish_close(c);
        }
        if let Some(closing) = &mut self.candidates[c].closing {
            closing.revokes = revokes;
        }
    }

    fn finish_close(&mut self, c: usize) {
        let candidate = &mut self.candidates[c];
        if candidate.closed {
            return;
        }
        candidate.closing = None;
        candidate.closed = true;
        candidate.keepalive = None;
        let streams: Vec<u64> = self
            .streams
            .keys()
            .filter(|(sc, _)| *sc == c)
            .map(|(_, s)| *s)
            .collect();
        for stream in streams {
            self.drop_stream(c, stream);
        }
        self.log(|| format!("c{c} closed"));
    }

    fn close_all(&mut self) {
        self.log(|| "every candidate closes".into());
        for c in 0..self.candidates.len() {
            self.close(c);
        }
        for (lease, _) in std::mem::take(&mut self.go) {
            let _ = self.etcd.lease_revoke(lease);
        }
        self.flush_watches();
    }

    fn all_closed(&self) -> bool {
        self.candidates.iter().all(|c| c.closed)
            && self.candidates.iter().all(|c| {
                !c.calls
                    .values()
                    .any(|call| matches!(call, Call::Grant { .. } | Call::Revoke { .. }))
            })
    }

    // ---- invariants ----

    /// The invariants that hold at every step.
    fn check(&mut self) -> Option<String> {
        let candidates = self.etcd.keys_with_prefix(ELECTION.as_bytes());
        let election = candidates
            .iter()
            .filter(|kv| is_candidate(kv))
            .min_by_key(|kv| kv.create_revision);
        let go_leads =
            election.is_some_and(|kv| !kv.key.starts_with(format!("{ELECTION}/").as_bytes()));
        let leaders: Vec<usize> = (0..self.candidates.len())
            .filter(|&c| self.candidates[c].leading.is_some())
            .collect();
        let believers = leaders.len() + usize::from(go_leads);
        if self.settings.pause {
            self.track_overlap(believers);
        } else if believers > 1 {
            return Some(format!(
                "two leaders at once: {}{}",
                leaders.iter().map(|c| format!("c{c} ")).collect::<String>(),
                if go_leads { "and a Go candidate" } else { "" }
            ));
        }
        for c in leaders {
            if self.candidates[c].paused.is_some() {
                continue;
            }
            let term = self.candidates[c].leading.as_ref().expect("leads");
            let key = String::from_utf8_lossy(&term.key).into_owned();
            let Some(kv) = self.etcd.get(&term.key) else {
                return Some(format!("c{c} leads but its key {key} is gone"));
            };
            if kv.create_revision != term.rev || kv.lease != term.lease {
                return Some(format!("c{c} leads but {key} is another term's now"));
            }
            match self.etcd.lease_expires_at(term.lease) {
                Some(at) if at > self.now => {}
                _ => return Some(format!("c{c} leads but etcd could expire its lease now")),
            }
            if election.is_some_and(|oldest| oldest.key != term.key) {
                return Some(format!("c{c} leads but {key} is not the oldest candidate"));
            }
        }
        None
    }

    fn track_overlap(&mut self, believers: usize) {
        match (believers > 1, self.overlap_since) {
            (true, None) => self.overlap_since = Some(self.now),
            (false, Some(since)) => {
                self.outcome.overlap += self.now - since;
                self.overlap_since = None;
            }
            _ => {}
        }
    }

    /// Once every fault healed: one leader.
    fn one_leader(&self) -> Option<String> {
        let ours = self
            .candidates
            .iter()
            .filter(|c| c.leading.is_some())
            .count();
        let go = self
            .etcd
            .keys_with_prefix(ELECTION.as_bytes())
            .into_iter()
            .filter(is_candidate)
            .min_by_key(|kv| kv.create_revision)
            .is_some_and(|kv| !kv.key.starts_with(format!("{ELECTION}/").as_bytes()));
        match ours + usize::from(go) {
            1 => None,
            n => Some(format!(
                "{n} leaders {:?} after every fault healed",
                self.settle_time()
            )),
        }
    }

    fn left_in_etcd(&self, prefix: &str) -> Option<String> {
        let left = self.etcd.keys_with_prefix(prefix.as_bytes());
        if left.is_empty() {
            return None;
        }
        let mut keys = String::new();
        for kv in &left {
            let _ = write!(keys, "{} ", String::from_utf8_lossy(&kv.key));
        }
        Some(format!("keys left after every candidate closed: {keys}"))
    }

    // ---- the process-pause scenario ----

    /// Runs until one candidate leads, pauses its process for 2 TTL + 1 s,
    /// and has it try fenced writes the moment it resumes, before it runs
    /// anything else (as user code may).
    pub fn run_pause(mut self) -> Outcome {
        let mut paused = None;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            let ev = self.events.remove(&seq).expect("queued");
            self.now = at;
            self.outcome.steps += 1;
            self.step(ev);
            let _ = self.check();
            if paused.is_none()
                && let Some(c) =
                    (0..self.candidates.len()).find(|&c| self.candidates[c].leading.is_some())
            {
                let pause = Duration::from_secs(2 * self.ttl as u64 + 1);
                self.log(|| format!("c{c}'s process stops for {pause:?}"));
                self.candidates[c].paused = Some(Vec::new());
                self.schedule(pause, Ev::Resume { c });
                paused = Some(c);
            }
            if self.now > Duration::from_secs(6 * self.ttl as u64 + 10) {
                break;
            }
        }
        self.outcome.simulated = self.now;
        self.outcome.trace = self.trace.into_iter().collect();
        self.outcome
    }

    fn resume(&mut self, c: usize) {
        let Some(held) = self.candidates[c].paused.take() else {
            return;
        };
        let believes = self.candidates[c].cand.is_leader();
        self.log(|| format!("c{c}'s process resumes, still believing it leads: {believes}"));
        // The user's code runs first: writes fenced by the stale term.
        if let Some(term) = self.candidates[c].cand.term().cloned() {
            for n in 0..3 {
                let txn = fenced_write(&term, n);
                self.call(c, Call::Fenced, Request::Txn(txn));
            }
        }
        for ev in held {
            self.step(ev);
        }
        self.wake(c);
    }
}

/// Whose event this is, for holding it while that process is paused.
fn ev_candidate(ev: &Ev) -> Option<usize> {
    match ev {
        Ev::Reply { c, .. }
        | Ev::CallTimeout { c, .. }
        | Ev::KeepAliveReply { c, .. }
        | Ev::WatchReply { c, .. }
        | Ev::StreamFailed { c, .. }
        | Ev::Wake { c }
        | Ev::ObserverRetry { c, .. }
        | Ev::BlockersRetry { c, .. }
        | Ev::Revoke { c, .. } => Some(*c),
        _ => None,
    }
}

/// A candidate key of this election in either layout.
fn is_candidate(kv: &KeyValue) -> bool {
    kv.key.starts_with(format!("{ELECTION}/").as_bytes()) || is_go_candidate(ELECTION, kv)
}

/// What `Election::txn_if_leader` sends: a write nested in a compare of the
/// term's key's create revision.
fn fenced_write(term: &LeaderKey, n: u32) -> TxnRequest {
    let put = PutRequest {
        key: format!("/sim/fenced/{n}").into(),
        value: "stale leader".into(),
        ..Default::default()
    };
    TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: term.key.clone(),
            target_union: Some(compare::TargetUnion::CreateRevision(term.rev)),
            range_end: Default::default(),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put)),
        }],
        failure: vec![],
    }
}
