//! The safety checker (project issue 5, item 4): random faults against
//! several elections at once, and the properties that must hold in each of
//! them whatever happens.
//!
//! N candidate slots (3 to 5, chosen by the seed) run in [`ELECTIONS`]
//! elections (`<base>-0`, `<base>-1`, ...) over a real 3-member etcd
//! cluster: each slot stands one candidate in every election. Each slot has
//! its own [`Client`] whose three endpoints are three fault [`Proxy`]s of its
//! own, one per member, so a slot can be cut off alone. A slot stands its
//! elections in one of two forms, fixed per slot (slot 0 shares, slot 1 does
//! not, the seed picks for the others, so both forms always meet):
//!
//! - shared: one [`Session`] (TTL 2 s) and `new_election_on_async` for each
//!   election, so one lease carries them all and its loss takes them all;
//! - own: `new_election_async` for each election, a session apiece.
//!
//! For a fixed time faults are injected at random, one at a time, with a
//! random pause (50 ms to 1 s) after each:
//!
//! - cut, blackhole or restore all three proxies of one slot;
//! - SIGSTOP / SIGCONT a member, or SIGKILL it and restart it (at most one
//!   member down or paused at a time, so the cluster keeps its quorum);
//! - `concede()` in one election, by the slot that leads it;
//! - `close()` a slot (a shared slot closes its session, which closes its
//!   elections first; an own slot closes each election), and later rejoin
//!   it with a new `Client`, and a new session and elections.
//!
//! At least two slots stay reachable and joined at any time (so every
//! election can always move on), but any slot, a leading one more often than
//! the others, may be hit. Every lease has a TTL of 2 s.
//!
//! One sampler task reads every candidate's `is_leader()` in every election
//! every 5 ms, on one monotonic clock, and checks in each election apart (a
//! slot leading several elections at once is what sharing is for):
//!
//! - (a) never two candidates leading the election in the same sample;
//! - (b) the fencing tokens (`leader_key().rev`) of the election's successive
//!   terms only grow: whenever a candidate is seen leading its term is
//!   recorded, and each new term's rev must be greater than the previous
//!   term's in that election;
//!
//! and after the faults:
//!
//! - (c) once everything is restored (proxies forwarding, members resumed or
//!   restarted, closed slots rejoined), exactly one leader in every election
//!   within TTL + 2 s;
//! - (d) once every slot closed, no key left under any election's
//!   `/elections/<name>/` and no lease left (`LeaseLeases`), asked through a
//!   fresh direct client. Leases that faults orphaned on etcd (a grant or
//!   keepalive held by a blackhole and delivered after its sender gave up)
//!   live until their TTL runs out, so this is polled for up to 2 TTL + 2 s.
//!
//! Failover (reported, not asserted) is the time from a fault aimed at an
//! election's leader to the first sample showing another term in that
//! election; see `Observed::on_term` for the exact rule.
//!
//! It ends with one summary line on stdout, printed before any assertion:
//!
//! ```text
//! safety: 0 overlaps in 11482 samples, 87 faults, 41 repairs, 38 leader changes, max failover 2.9 s, seed 12345; ..., 3 elections, 2 of 4 slots on a shared session
//! ```
//!
//! A sample is one pass of the sampler, which reads every election; the
//! counts (overlaps, leader changes, regressions) add up over the elections,
//! and "leader after restore" is the time until every election had one.
//!
//! # Running
//!
//! ```text
//! # CI: 60 s of faults
//! cargo test --all-features --test safety -- --nocapture
//! # soak: 10 minutes (or more: SAFETY_SECS=3600 for an hour)
//! SAFETY_SECS=600 cargo test --all-features --test safety -- --nocapture
//! # with etcd's server-side Campaign and Observe for every candidate
//! SAFETY_ENGINE=server-side cargo test --all-features --test safety -- --nocapture
//! # replay a failure with the seed it printed
//! SAFETY_SEED=12345 cargo test --all-features --test safety -- --nocapture
//! # also print the log around the longest failover
//! SAFETY_VERBOSE=1 cargo test --all-features --test safety -- --nocapture
//! ```
//!
//! `SAFETY_SECS` is the time faults are injected (default 60); restoring,
//! the checks and closing add about 10 s. The seed (from `SAFETY_SEED`, else
//! the clock) is printed first. It fixes the number of slots, their forms
//! and every random choice, but the faults act on real processes and real timing, so a
//! replay follows the same choices rather than the exact same history.
//!
//! When a check fails, the test prints the log around it: every fault, every
//! event of every candidate and every leader change the sampler saw, with
//! times in seconds since the start. A candidate is `c<slot>.<generation>`,
//! and `e<i>` is election `<base>-<i>`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcdutil::proto::etcdserverpb::{LeaseLeasesRequest, LeaseTimeToLiveRequest, RangeRequest};
use etcdutil::testing::{Cluster, Proxy};
use etcdutil::{
    Client, Config, Election, ElectionConfig, ElectionEvent, Engine, Session, SessionConfig,
    new_election_async, new_election_on_async,
};
use tokio::time::{Instant, MissedTickBehavior, sleep, timeout};

/// The candidates' lease TTL, in seconds.
const TTL: u64 = 2;
/// Elections run at once, every slot a candidate in each.
const ELECTIONS: usize = 3;
const MEMBERS: usize = 3;
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// (c): one leader within this long once everything is restored.
const LEADER_AFTER_RESTORE: Duration = Duration::from_secs(TTL + 2);
/// (d): how long leases orphaned by faults may take to expire.
const CLEAN_WITHIN: Duration = Duration::from_secs(2 * TTL + 2);
/// Bound on any close: the library promises TTL + 1 s.
const CLOSE_LIMIT: Duration = Duration::from_secs(TTL + 3);
/// Bound on connecting a client (its dial timeout is 5 s).
const CONNECT_LIMIT: Duration = Duration::from_secs(8);
/// Bound on a member's restart (the harness's own limit is 20 s).
const RESTART_LIMIT: Duration = Duration::from_secs(30);
/// Log lines kept (the oldest go first).
const LOG_CAP: usize = 200_000;
/// Log lines printed per failure window.
const WINDOW_LINES: usize = 400;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn ttl() -> Duration {
    Duration::from_secs(TTL)
}

/// splitmix64: tiny, seedable, plenty for picking faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }

    /// One of `options`, each as likely as its weight.
    fn weighted<T: Copy>(&mut self, options: &[(u64, T)]) -> T {
        let total: u64 = options.iter().map(|(weight, _)| weight).sum();
        let mut ticket = self.below(total);
        for &(weight, option) in options {
            if ticket < weight {
                return option;
            }
            ticket -= weight;
        }
        options.last().expect("at least one option").1
    }
}

fn seed() -> u64 {
    match std::env::var("SAFETY_SEED") {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SAFETY_SEED={text:?} is not an unsigned integer")),
        _ => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            (nanos % 1_000_000_000) as u64
        }
    }
}

/// The engine every candidate campaigns with: `SAFETY_ENGINE=server-side`
/// for etcd's Campaign and Observe, else the default.
fn engine() -> Engine {
    match std::env::var("SAFETY_ENGINE").as_deref().map(str::trim) {
        Ok("server-side") => Engine::ServerSide,
        Ok("client-side") | Ok("") | Err(_) => Engine::ClientSide,
        Ok(other) => panic!("SAFETY_ENGINE={other:?} is not server-side or client-side"),
    }
}

fn fault_secs() -> u64 {
    match std::env::var("SAFETY_SECS") {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SAFETY_SECS={text:?} is not a number of seconds")),
        _ => 60,
    }
}

/// Everything that happened, time-stamped on the test's one clock.
struct Log {
    start: Instant,
    lines: Mutex<VecDeque<(Instant, String)>>,
}

impl Log {
    fn new() -> Log {
        Log {
            start: Instant::now(),
            lines: Mutex::default(),
        }
    }

    fn push(&self, line: impl Into<String>) {
        let mut lines = lock(&self.lines);
        if lines.len() == LOG_CAP {
            lines.pop_front();
        }
        lines.push_back((Instant::now(), line.into()));
    }

    /// Seconds since the start, for humans.
    fn at(&self, t: Instant) -> String {
        format!(
            "{:.3}",
            t.saturating_duration_since(self.start).as_secs_f64()
        )
    }

    /// The lines logged from `from` to `to` (the last [`WINDOW_LINES`]).
    fn window(&self, from: Instant, to: Instant) -> String {
        let lines = lock(&self.lines);
        let picked: Vec<&(Instant, String)> = lines
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .collect();
        let skip = picked.len().saturating_sub(WINDOW_LINES);
        let mut out = String::new();
        if skip > 0 {
            out.push_str(&format!("  ... {skip} earlier lines\n"));
        }
        for (t, line) in &picked[skip..] {
            out.push_str(&format!("  {:>9} {line}\n", self.at(*t)));
        }
        out
    }
}

/// A term as the sampler saw it: in which election, which candidate (slot
/// and generation, a rejoined slot being a new generation) and the term's
/// fencing token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Term {
    election: usize,
    slot: usize,
    generation: u32,
    rev: i64,
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "e{} c{}.{} rev {}",
            self.election, self.slot, self.generation, self.rev
        )
    }
}

/// How a slot stands its elections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// All on one session of the slot's: one lease, one fate.
    Shared,
    /// Each on a session of its own (`new_election_async`).
    Own,
}

/// One slot's candidate in every election: its own client (through its
/// slot's proxies), its elections in order, and the session they stand on
/// when they share one.
struct Candidate {
    slot: usize,
    generation: u32,
    elections: Vec<Election>,
    /// Held here: an election does not keep its shared session alive.
    session: Option<Session>,
    client: Client,
}

impl Candidate {
    /// Stands in every election of `configs` (their order is the elections'
    /// order), in `form`.
    fn stand(
        slot: usize,
        generation: u32,
        form: Form,
        client: Client,
        configs: Vec<ElectionConfig>,
    ) -> Result<Candidate, String> {
        let session = match form {
            Form::Shared => {
                let config = SessionConfig {
                    ttl: TTL as i64,
                    ..Default::default()
                };
                Some(Session::new(&client, config).map_err(|e| format!("Session::new: {e}"))?)
            }
            Form::Own => None,
        };
        let mut elections = Vec::new();
        for config in configs {
            let election = match &session {
                Some(session) => new_election_on_async(session, config)
                    .map_err(|e| format!("new_election_on_async: {e}"))?,
                None => new_election_async(&client, config)
                    .map_err(|e| format!("new_election_async: {e}"))?,
            };
            elections.push(election);
        }
        Ok(Candidate {
            slot,
            generation,
            elections,
            session,
            client,
        })
    }

    fn name(&self) -> String {
        format!("c{}.{}", self.slot, self.generation)
    }

    fn leads(&self, election: usize) -> bool {
        self.elections[election].is_leader()
    }

    /// Its term in `election`, if it leads there.
    fn term(&self, election: usize) -> Option<Term> {
        self.elections[election].leader_key().map(|key| Term {
            election,
            slot: self.slot,
            generation: self.generation,
            rev: key.rev,
        })
    }

    /// Leaves every election: a shared session closes its elections itself
    /// (each resigns) and then revokes its lease, the order under test; own
    /// elections close side by side, each within the same TTL + 1 s. True
    /// if none of them still leads once it returns, as both promise.
    async fn close(self: Arc<Self>) -> bool {
        if let Some(session) = &self.session {
            session.close().await;
        } else {
            let mut closing = tokio::task::JoinSet::new();
            for election in 0..self.elections.len() {
                let candidate = self.clone();
                closing.spawn(async move { candidate.elections[election].close().await });
            }
            while closing.join_next().await.is_some() {}
        }
        !self.elections.iter().any(Election::is_leader)
    }
}

/// The candidates the sampler reads, by slot.
type Candidates = Arc<Mutex<Vec<Option<Arc<Candidate>>>>>;

/// What the sampler saw, by election.
type Observations = Arc<Mutex<Vec<Observed>>>;

/// A fault aimed at the leader, waiting for the next term.
struct Pending {
    since: Instant,
    removed: Term,
    fault: String,
}

/// What the sampler saw in one election.
#[derive(Default)]
struct Observed {
    /// Which election (its index).
    election: usize,
    /// Print overlaps and regressions as they are seen (the real run only).
    loud: bool,
    samples: u64,
    last_sample: Option<Instant>,
    /// The longest time between two samples (how well the sampler kept up).
    max_gap: Duration,
    /// (a): samples with two or more leaders: when, and who.
    overlaps: Vec<(Instant, String)>,
    /// Samples where one pass saw two leaders but the other pass did not
    /// confirm it (a handover between two reads); not overlaps, see `read`.
    skewed: u64,
    /// (b): (when, previous term, new term) with a new rev not above the previous.
    regressions: Vec<(Instant, Term, Term)>,
    last_term: Option<Term>,
    leader_changes: u64,
    pending: Option<Pending>,
    failovers: Vec<Duration>,
    worst_failover: Option<(Duration, String)>,
    /// The fault of the worst failover, for `SAFETY_VERBOSE`.
    worst_pending: Option<Pending>,
    /// (c): when everything was restored, and how long until one leader.
    restored_at: Option<Instant>,
    leader_after_restore: Option<(Duration, Term)>,
}

impl Observed {
    fn record(
        &mut self,
        now: Instant,
        leading: Vec<(String, Option<Term>)>,
        skewed: bool,
        log: &Log,
    ) {
        self.samples += 1;
        if let Some(last) = self.last_sample {
            self.max_gap = self.max_gap.max(now - last);
        }
        self.last_sample = Some(now);
        if skewed {
            self.skewed += 1;
            log.push(format!(
                "sampler: e{}: two leaders in one pass only (a handover between reads)",
                self.election
            ));
        }
        if leading.len() > 1 {
            let who = leading
                .iter()
                .map(|(name, term)| match term {
                    Some(term) => term.to_string(),
                    None => format!("e{} {name} (term already gone)", self.election),
                })
                .collect::<Vec<_>>()
                .join(" and ");
            log.push(format!("sampler: OVERLAP: {who}"));
            if self.loud && self.overlaps.len() < 20 {
                println!("safety: OVERLAP at {} s: {who}", log.at(now));
            }
            self.overlaps.push((now, who));
        }
        for term in leading.iter().filter_map(|(_, term)| *term) {
            self.on_term(now, term, log);
        }
        if let ([(_, Some(term))], Some(restored), None) = (
            leading.as_slice(),
            self.restored_at,
            &self.leader_after_restore,
        ) {
            self.leader_after_restore = Some((now - restored, *term));
        }
    }

    /// `term` was seen leading at `now`.
    ///
    /// Failover: for a fault aimed at the leader (its links cut or
    /// blackholed, its etcd member paused or killed, concede, close), the
    /// time from the moment the fault was injected to the first sample that
    /// shows another term leading (another candidate, or the same one with a
    /// new key after a concede). If the removed term is still seen leading
    /// more than TTL after the fault, the fault did not remove it (a lease
    /// cut off at the fault is taken for lost by TTL - margin after its last
    /// renewal, so the term was renewed through another member or after a
    /// restore) and nothing is counted. A second fault while one is pending
    /// does not restart the clock.
    ///
    /// So a failover includes etcd's part: the old leader's lease must
    /// expire (TTL after its last renewal) before anyone else can win, and
    /// every change of etcd's own raft leader (a killed or paused member)
    /// extends every lease by TTL + the election timeout; a keepalive held
    /// by a blackhole and delivered at the restore renews it once more. It
    /// is reported, not asserted.
    fn on_term(&mut self, now: Instant, term: Term, log: &Log) {
        if let Some(pending) = self.pending.take() {
            if term != pending.removed {
                let took = now - pending.since;
                self.failovers.push(took);
                log.push(format!(
                    "sampler: failover after {} took {took:?}",
                    pending.fault
                ));
                if self
                    .worst_failover
                    .as_ref()
                    .is_none_or(|(worst, _)| took > *worst)
                {
                    let what = format!(
                        "{} at {} s, {} -> {term}",
                        pending.fault,
                        log.at(pending.since),
                        pending.removed
                    );
                    self.worst_failover = Some((took, what));
                    self.worst_pending = Some(pending);
                }
            } else if now - pending.since > ttl() {
                log.push(format!("sampler: {} did not remove {term}", pending.fault));
            } else {
                self.pending = Some(pending);
            }
        }
        if self.last_term == Some(term) {
            return;
        }
        if let Some(previous) = self.last_term {
            self.leader_changes += 1;
            if term.rev <= previous.rev {
                log.push(format!("sampler: TOKEN REGRESSION: {previous} then {term}"));
                if self.loud {
                    println!(
                        "safety: TOKEN REGRESSION at {} s: {previous} then {term}",
                        log.at(now)
                    );
                }
                self.regressions.push((now, previous, term));
            }
        }
        log.push(format!("sampler: {term} leads"));
        self.last_term = Some(term);
    }

    /// Every election's observations in one, for the summary: counts add
    /// up, the worst case wins, and a leader after restore counts only once
    /// every election has one (see [`last_to_lead`]).
    fn merge(mut self, other: Observed) -> Observed {
        self.samples = self.samples.max(other.samples);
        self.max_gap = self.max_gap.max(other.max_gap);
        self.overlaps.extend(other.overlaps);
        self.overlaps.sort_by_key(|(at, _)| *at);
        self.skewed += other.skewed;
        self.regressions.extend(other.regressions);
        self.regressions.sort_by_key(|(at, _, _)| *at);
        self.leader_changes += other.leader_changes;
        self.failovers.extend(other.failovers);
        let worse = |(took, _): &(Duration, String)| {
            self.worst_failover
                .as_ref()
                .is_none_or(|(worst, _)| took > worst)
        };
        if other.worst_failover.as_ref().is_some_and(worse) {
            self.worst_failover = other.worst_failover;
            self.worst_pending = other.worst_pending;
        }
        self.leader_after_restore =
            last_to_lead(&[self.leader_after_restore, other.leader_after_restore]);
        self
    }
}

/// (c) over all elections: the time until the last of them had one leader,
/// or `None` while one has none.
fn last_to_lead(each: &[Option<(Duration, Term)>]) -> Option<(Duration, Term)> {
    let each: Option<Vec<(Duration, Term)>> = each.iter().copied().collect();
    each?.into_iter().max_by_key(|(took, _)| *took)
}

/// One election in one sample: who leads it, and whether the reads were skewed.
type Sample = (Vec<(String, Option<Term>)>, bool);

/// One sample of the first `elections` elections: who leads each.
///
/// Every candidate's atomic in every election is read in two passes, in one
/// order (candidate by candidate, election by election) forward then
/// backward, and a candidate counts as leading an election if both passes
/// saw it lead. For any two reads X before Y, X's reads enclose Y's (X, Y,
/// ..., Y, X): if two candidates lead one election in both passes, the first
/// led from its first read to its last (a term cannot end and another start
/// within microseconds), so both led at the instant of the second's reads. A
/// single pass alone could report a handover between two reads (a preempted
/// sampler) as an overlap; such samples are counted as skewed. Leaders of
/// different elections are never compared: one slot leading them all is
/// what a shared session allows.
fn read(candidates: &Candidates, elections: usize) -> Vec<Sample> {
    let all = lock(candidates);
    let reads: Vec<(&Candidate, usize)> = all
        .iter()
        .flatten()
        .flat_map(|c| (0..elections).map(move |e| (&**c, e)))
        .collect();
    let forward: Vec<bool> = reads.iter().map(|(c, e)| c.leads(*e)).collect();
    let mut backward: Vec<bool> = reads.iter().rev().map(|(c, e)| c.leads(*e)).collect();
    backward.reverse();
    (0..elections)
        .map(|election| {
            let in_election = reads
                .iter()
                .zip(forward.iter().zip(&backward))
                .filter(|((_, e), _)| *e == election);
            let leading: Vec<(String, Option<Term>)> = in_election
                .clone()
                .filter(|(_, (forward, backward))| **forward && **backward)
                .map(|((c, _), _)| (c.name(), c.term(election)))
                .collect();
            let in_forward = in_election.clone().filter(|(_, (f, _))| **f).count();
            let in_backward = in_election.filter(|(_, (_, b))| **b).count();
            let skewed = leading.len() < 2 && (in_forward > 1 || in_backward > 1);
            (leading, skewed)
        })
        .collect()
}

async fn sampler(
    candidates: Candidates,
    observed: Observations,
    log: Arc<Log>,
    stop: Arc<AtomicBool>,
    until: Instant,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        tick.tick().await;
        let now = Instant::now();
        let sample = read(&candidates, ELECTIONS);
        record_all(&mut lock(&observed), now, sample, &log);
    }
}

/// Records one sample, each election into its own observations.
fn record_all(observed: &mut [Observed], now: Instant, sample: Vec<Sample>, log: &Log) {
    for (election, (leading, skewed)) in observed.iter_mut().zip(sample) {
        election.record(now, leading, skewed, log);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Forwarding,
    Cut,
    Blackhole,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Down {
    Paused,
    Killed,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Cut(usize),
    Blackhole(usize),
    Restore(usize),
    Close(usize),
    Rejoin(usize),
    /// A slot concedes one election it leads: (slot, election).
    Concede(usize, usize),
    Pause(usize),
    Resume(usize),
    Kill(usize),
    Restart(usize),
}

impl Fault {
    fn kind(self) -> &'static str {
        match self {
            Fault::Cut(_) => "cut",
            Fault::Blackhole(_) => "blackhole",
            Fault::Restore(_) => "restore",
            Fault::Close(_) => "close",
            Fault::Rejoin(_) => "rejoin",
            Fault::Concede(..) => "concede",
            Fault::Pause(_) => "pause",
            Fault::Resume(_) => "resume",
            Fault::Kill(_) => "kill",
            Fault::Restart(_) => "restart",
        }
    }

    /// Repairs undo faults; they are counted apart.
    fn is_repair(self) -> bool {
        matches!(
            self,
            Fault::Restore(_) | Fault::Rejoin(_) | Fault::Resume(_) | Fault::Restart(_)
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fault::Cut(i)
            | Fault::Blackhole(i)
            | Fault::Restore(i)
            | Fault::Close(i)
            | Fault::Rejoin(i) => write!(f, "{} slot {i}", self.kind()),
            Fault::Concede(i, e) => write!(f, "{} slot {i} in e{e}", self.kind()),
            Fault::Pause(m) | Fault::Resume(m) | Fault::Kill(m) | Fault::Restart(m) => {
                write!(f, "{} member{m}", self.kind())
            }
        }
    }
}

/// One candidate's place: its proxies (one per member) and who runs there.
struct Slot {
    proxies: Vec<Proxy>,
    /// How every generation here stands its elections.
    form: Form,
    link: Link,
    /// The next generation to join here.
    generation: u32,
    live: Option<Arc<Candidate>>,
}

impl Slot {
    fn healthy(&self) -> bool {
        self.live.is_some() && self.link == Link::Forwarding
    }
}

/// The cluster, the candidates and the bookkeeping of the faults.
struct World {
    cluster: Cluster,
    slots: Vec<Slot>,
    candidates: Candidates,
    observed: Observations,
    log: Arc<Log>,
    /// The elections' names, by index.
    elections: Vec<String>,
    down: Option<(usize, Down)>,
    rng: Rng,
    counts: BTreeMap<&'static str, u64>,
    faults: u64,
    repairs: u64,
    /// Failures of the harness or of bounded operations (not of (a)-(d)).
    errors: Vec<String>,
}

impl World {
    fn error(&mut self, error: String) {
        self.log.push(format!("ERROR: {error}"));
        println!("safety: error: {error}");
        self.errors.push(error);
    }

    /// Joins slot `slot` with a new client and a new candidate.
    async fn join(&mut self, slot: usize) -> Result<(), String> {
        let generation = self.slots[slot].generation;
        let who = format!("c{slot}.{generation}");
        let config = Config {
            endpoints: self.slots[slot]
                .proxies
                .iter()
                .map(Proxy::endpoint)
                .collect(),
            ..self.cluster.config()
        };
        let client = match timeout(CONNECT_LIMIT, Client::connect(config)).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => return Err(format!("{who}: connect: {error}")),
            Err(_) => return Err(format!("{who}: connect: no answer in {CONNECT_LIMIT:?}")),
        };
        self.slots[slot].generation += 1;
        let configs = (0..self.elections.len())
            .map(|election| self.config(election, &who))
            .collect();
        let form = self.slots[slot].form;
        let candidate = Candidate::stand(slot, generation, form, client, configs)
            .map_err(|error| format!("{who}: {error}"))?;
        let candidate = Arc::new(candidate);
        self.slots[slot].live = Some(candidate.clone());
        lock(&self.candidates)[slot] = Some(candidate);
        self.log.push(format!("{who} joined ({form:?})"));
        Ok(())
    }

    /// Candidate `who`'s config in election `election`: its events go to the log.
    fn config(&self, election: usize, who: &str) -> ElectionConfig {
        let log = self.log.clone();
        let prefix = format!("/elections/{}/", self.elections[election]);
        let name = format!("e{election} {who}");
        let observer = Arc::new(move |event: ElectionEvent| {
            let mut line = format!("{name} event:");
            if event.is_done {
                line.push_str(" done");
            } else if event.is_leader {
                line.push_str(" leading");
            }
            if !event.leader_key.is_empty() {
                let key = event
                    .leader_key
                    .strip_prefix(&prefix)
                    .unwrap_or(&event.leader_key);
                line.push_str(&format!(" leader {} ({key})", event.leader_data));
            }
            if let Some(error) = &event.err {
                line.push_str(&format!(" error: {error}"));
            }
            if !event.is_leader && event.leader_key.is_empty() && event.err.is_none() {
                line.push_str(" not leader");
            }
            log.push(line);
        });
        ElectionConfig {
            event_observer: Some(observer),
            election: self.elections[election].clone(),
            candidate: who.to_owned(),
            ttl: TTL as i64,
            engine: engine(),
        }
    }

    /// Each election's leader now, if it has one: (election, candidate).
    fn leaders(&self) -> Vec<(usize, Arc<Candidate>)> {
        (0..self.elections.len())
            .filter_map(|election| {
                let leader = self
                    .slots
                    .iter()
                    .filter_map(|slot| slot.live.clone())
                    .find(|c| c.leads(election))?;
                Some((election, leader))
            })
            .collect()
    }

    /// The member a candidate's client sends its calls to now.
    fn member_of(&self, candidate: &Candidate) -> Option<usize> {
        let transport = candidate.client.transport();
        let port = transport.current_endpoint().port_u16()?;
        self.slots[candidate.slot]
            .proxies
            .iter()
            .position(|proxy| proxy.addr().port() == port)
    }

    fn choose(&mut self) -> Fault {
        let leaders = self.leaders();
        let leader_slots: Vec<usize> = leaders.iter().map(|(_, c)| c.slot).collect();
        let leader_members: Vec<usize> = leaders
            .iter()
            .filter_map(|(_, c)| self.member_of(c))
            .collect();
        let healthy = self.slots.iter().filter(|s| s.healthy()).count();
        let mut options = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let bias = if leader_slots.contains(&i) { 3 } else { 1 };
            if slot.link != Link::Forwarding {
                options.push((4, Fault::Restore(i)));
            }
            if slot.healthy() && healthy > 2 {
                options.push((3 * bias, Fault::Cut(i)));
                options.push((3 * bias, Fault::Blackhole(i)));
                options.push((2 * bias, Fault::Close(i)));
            }
            if slot.live.is_some() && !slot.healthy() {
                // Closing while cut off.
                options.push((1, Fault::Close(i)));
            }
            if slot.live.is_none() && slot.link == Link::Forwarding {
                options.push((4, Fault::Rejoin(i)));
            }
        }
        // One concede among all the elections led, as likely as one was
        // with a single election.
        if !leaders.is_empty() {
            let (election, leader) = &leaders[self.rng.below(leaders.len() as u64) as usize];
            options.push((4, Fault::Concede(leader.slot, *election)));
        }
        match self.down {
            None => {
                for m in 0..MEMBERS {
                    let bias = if leader_members.contains(&m) { 2 } else { 1 };
                    options.push((2 * bias, Fault::Pause(m)));
                    options.push((2 * bias, Fault::Kill(m)));
                }
            }
            Some((m, Down::Paused)) => options.push((5, Fault::Resume(m))),
            Some((m, Down::Killed)) => options.push((5, Fault::Restart(m))),
        }
        self.rng.weighted(&options)
    }

    /// Whether `fault` is aimed at `leader`'s term in `election`.
    fn hits(&self, fault: Fault, election: usize, leader: &Candidate) -> bool {
        match fault {
            Fault::Cut(i) | Fault::Blackhole(i) | Fault::Close(i) => i == leader.slot,
            Fault::Concede(i, e) => i == leader.slot && e == election,
            Fault::Pause(m) | Fault::Kill(m) => self.member_of(leader) == Some(m),
            _ => false,
        }
    }

    async fn apply(&mut self, fault: Fault) {
        let now = Instant::now();
        // A fault at a slot is aimed at every election it leads.
        let removed: Vec<Term> = self
            .leaders()
            .iter()
            .filter(|(election, leader)| self.hits(fault, *election, leader))
            .filter_map(|(election, leader)| leader.term(*election))
            .collect();
        if removed.is_empty() {
            self.log.push(format!("fault: {fault}"));
        } else {
            let terms: Vec<String> = removed.iter().map(Term::to_string).collect();
            self.log.push(format!(
                "fault: {fault} (aimed at the leader of {})",
                terms.join(", ")
            ));
            let mut observed = lock(&self.observed);
            for term in removed {
                let observed = &mut observed[term.election];
                if observed.pending.is_none() {
                    observed.pending = Some(Pending {
                        since: now,
                        removed: term,
                        fault: fault.to_string(),
                    });
                }
            }
        }
        *self.counts.entry(fault.kind()).or_default() += 1;
        if fault.is_repair() {
            self.repairs += 1;
        } else {
            self.faults += 1;
        }
        match fault {
            Fault::Cut(i) => {
                for proxy in &self.slots[i].proxies {
                    proxy.cut().await;
                }
                self.slots[i].link = Link::Cut;
            }
            Fault::Blackhole(i) => {
                let mut failed = None;
                for proxy in &self.slots[i].proxies {
                    if let Err(error) = proxy.blackhole().await {
                        failed = Some(format!("blackhole slot {i}: {error}"));
                    }
                }
                self.slots[i].link = Link::Blackhole;
                if let Some(error) = failed {
                    self.error(error);
                }
            }
            Fault::Restore(i) => {
                let mut failed = None;
                for proxy in &self.slots[i].proxies {
                    if let Err(error) = proxy.restore().await {
                        failed = Some(format!("restore slot {i}: {error}"));
                    }
                }
                match failed {
                    Some(error) => self.error(error),
                    None => self.slots[i].link = Link::Forwarding,
                }
            }
            Fault::Close(i) => self.close(i).await,
            Fault::Rejoin(i) => {
                if let Err(error) = self.join(i).await {
                    // Allowed during faults (say, the member it dials first
                    // is paused); the slot is rejoined later.
                    self.log.push(format!("rejoin slot {i} failed: {error}"));
                }
            }
            Fault::Concede(i, e) => {
                let Some(candidate) = self.slots[i].live.clone() else {
                    return;
                };
                let name = format!("e{e} {}", candidate.name());
                match timeout(Duration::from_secs(5), candidate.elections[e].concede()).await {
                    Ok(Ok(conceded)) => self.log.push(format!("{name} concede: {conceded}")),
                    Ok(Err(error)) => self.log.push(format!("{name} concede failed: {error}")),
                    Err(_) => self.error(format!("{name}: concede did not return in 5 s")),
                }
            }
            Fault::Pause(m) => match self.cluster.member_mut(m).pause() {
                Ok(()) => self.down = Some((m, Down::Paused)),
                Err(error) => self.error(format!("pause member{m}: {error}")),
            },
            Fault::Resume(m) => match self.cluster.member_mut(m).resume() {
                Ok(()) => self.down = None,
                Err(error) => self.error(format!("resume member{m}: {error}")),
            },
            Fault::Kill(m) => match self.cluster.member_mut(m).kill() {
                Ok(()) => self.down = Some((m, Down::Killed)),
                Err(error) => self.error(format!("kill member{m}: {error}")),
            },
            Fault::Restart(m) => {
                let started = Instant::now();
                match timeout(RESTART_LIMIT, self.cluster.member_mut(m).restart()).await {
                    Ok(Ok(())) => {
                        self.down = None;
                        self.log
                            .push(format!("member{m} restarted in {:?}", started.elapsed()));
                    }
                    Ok(Err(error)) => self.error(format!("restart member{m}: {error}")),
                    Err(_) => {
                        self.error(format!("restart member{m}: not ready in {RESTART_LIMIT:?}"))
                    }
                }
            }
        }
    }

    /// Closes slot `slot`'s candidate (bounded), and forgets it.
    async fn close(&mut self, slot: usize) {
        let Some(candidate) = self.slots[slot].live.take() else {
            return;
        };
        let name = candidate.name();
        let started = Instant::now();
        let closed = timeout(CLOSE_LIMIT, candidate.close()).await;
        lock(&self.candidates)[slot] = None;
        match closed {
            Ok(true) => self
                .log
                .push(format!("{name} closed in {:?}", started.elapsed())),
            Ok(false) => self.error(format!("{name}: leads after its close")),
            Err(_) => self.error(format!("{name}: close did not return in {CLOSE_LIMIT:?}")),
        }
    }

    /// Undoes every fault: proxies forward, the member down runs again, the
    /// closed slots rejoin.
    async fn restore_all(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].link != Link::Forwarding {
                self.apply(Fault::Restore(i)).await;
            }
        }
        for _ in 0..3 {
            match self.down {
                Some((m, Down::Paused)) => self.apply(Fault::Resume(m)).await,
                Some((m, Down::Killed)) => self.apply(Fault::Restart(m)).await,
                None => break,
            }
        }
        if let Some((m, down)) = self.down {
            self.error(format!(
                "member{m} still {down:?} after 3 attempts to bring it back"
            ));
        }
        for i in 0..self.slots.len() {
            for attempt in 1..=3 {
                if self.slots[i].live.is_some() {
                    break;
                }
                *self.counts.entry("rejoin").or_default() += 1;
                self.repairs += 1;
                self.log.push(format!("fault: rejoin slot {i} (restoring)"));
                match self.join(i).await {
                    Ok(()) => {}
                    Err(error) if attempt < 3 => {
                        self.log.push(format!("rejoin slot {i} failed: {error}"));
                        sleep(Duration::from_millis(500)).await;
                    }
                    Err(error) => self.error(format!("rejoin slot {i} after the faults: {error}")),
                }
            }
        }
    }
}

/// How slot `slot` stands its elections: slot 0 on a shared session, slot 1
/// on sessions of its own, so both forms meet in every run; the seed picks
/// for the others.
fn form(slot: usize, rng: &mut Rng) -> Form {
    match slot {
        0 => Form::Shared,
        1 => Form::Own,
        _ if rng.below(2) == 0 => Form::Shared,
        _ => Form::Own,
    }
}

/// The keys under every election's prefix.
async fn keys_under_all(client: &Client, elections: &[String]) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for election in elections {
        keys.extend(keys_under(client, &format!("/elections/{election}/")).await?);
    }
    Ok(keys)
}

/// The keys under `prefix`.
async fn keys_under(client: &Client, prefix: &str) -> Result<Vec<String>, String> {
    let mut range_end = prefix.as_bytes().to_vec();
    *range_end.last_mut().expect("non-empty prefix") += 1;
    let request = RangeRequest {
        key: prefix.to_owned().into(),
        range_end: range_end.into(),
        ..Default::default()
    };
    let response = timeout(Duration::from_secs(3), client.kv().range(request))
        .await
        .map_err(|_| "Range: no answer in 3 s".to_string())?
        .map_err(|status| format!("Range: {status}"))?;
    Ok(response
        .into_inner()
        .kvs
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(&kv.key);
            format!(
                "{key} (lease {:x}, create rev {})",
                kv.lease, kv.create_revision
            )
        })
        .collect())
}

/// The leases etcd holds, each with its remaining TTL and keys.
async fn leases(client: &Client) -> Result<Vec<String>, String> {
    let response = timeout(
        Duration::from_secs(3),
        client.lease().lease_leases(LeaseLeasesRequest {}),
    )
    .await
    .map_err(|_| "LeaseLeases: no answer in 3 s".to_string())?
    .map_err(|status| format!("LeaseLeases: {status}"))?;
    let mut out = Vec::new();
    for lease in response.into_inner().leases {
        let request = LeaseTimeToLiveRequest {
            id: lease.id,
            keys: true,
        };
        let detail = match timeout(
            Duration::from_secs(3),
            client.lease().lease_time_to_live(request),
        )
        .await
        {
            Ok(Ok(ttl)) => {
                let ttl = ttl.into_inner();
                let keys: Vec<_> = ttl
                    .keys
                    .iter()
                    .map(|k| String::from_utf8_lossy(k))
                    .collect();
                format!("ttl {} of {} s, keys {keys:?}", ttl.ttl, ttl.granted_ttl)
            }
            Ok(Err(status)) => format!("LeaseTimeToLive: {status}"),
            Err(_) => "LeaseTimeToLive: no answer in 3 s".into(),
        };
        out.push(format!("{:x} ({detail})", lease.id));
    }
    Ok(out)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safety_under_random_faults() {
    let seed = seed();
    let fault_time = Duration::from_secs(fault_secs());
    let mut rng = Rng(seed);
    let n = 3 + rng.below(3) as usize;
    let forms: Vec<Form> = (0..n).map(|slot| form(slot, &mut rng)).collect();
    let shared = forms.iter().filter(|form| **form == Form::Shared).count();
    println!(
        "safety: seed {seed}, {n} candidates in {ELECTIONS} elections, forms {forms:?}, {} of faults, \
         TTL {TTL} s (replay: SAFETY_SEED={seed})",
        secs(fault_time)
    );

    let cluster = Cluster::start(MEMBERS)
        .await
        .expect("start a 3-member etcd cluster");
    let log = Arc::new(Log::new());
    let base = format!("safety-{}-{seed}", std::process::id());
    let elections: Vec<String> = (0..ELECTIONS).map(|e| format!("{base}-{e}")).collect();
    let candidates: Candidates = Arc::new(Mutex::new((0..n).map(|_| None).collect()));
    let observed: Observations = Arc::new(Mutex::new(
        (0..ELECTIONS)
            .map(|election| Observed {
                election,
                loud: true,
                ..Observed::default()
            })
            .collect(),
    ));
    let mut slots = Vec::new();
    for form in forms {
        let mut proxies = Vec::new();
        for m in 0..MEMBERS {
            let target = cluster.member(m).client_addr();
            proxies.push(Proxy::start(target).await.expect("start a proxy"));
        }
        slots.push(Slot {
            proxies,
            form,
            link: Link::Forwarding,
            generation: 0,
            live: None,
        });
    }
    let mut world = World {
        cluster,
        slots,
        candidates: candidates.clone(),
        observed: observed.clone(),
        log: log.clone(),
        elections: elections.clone(),
        down: None,
        rng,
        counts: BTreeMap::new(),
        faults: 0,
        repairs: 0,
        errors: Vec::new(),
    };
    for slot in 0..n {
        if let Err(error) = world.join(slot).await {
            world.error(format!("first join: {error}"));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    // A bound on the sampler of its own: the faults, then at most a minute more.
    let sampling_until = Instant::now() + fault_time + Duration::from_secs(120);
    let sampling = tokio::spawn(sampler(
        candidates.clone(),
        observed.clone(),
        log.clone(),
        stop.clone(),
        sampling_until,
    ));

    let first = Instant::now();
    while world.leaders().len() < ELECTIONS && first.elapsed() < Duration::from_secs(15) {
        sleep(Duration::from_millis(10)).await;
    }
    if world.leaders().len() < ELECTIONS {
        world.error("not every election had a leader within 15 s of the start".into());
    }

    // The faults.
    let faults_from = Instant::now();
    while faults_from.elapsed() < fault_time {
        let fault = world.choose();
        world.apply(fault).await;
        let pause = world.rng.millis(50, 1000);
        sleep(pause).await;
    }
    log.push("faults over: restoring everything");

    // (c) one leader in every election within TTL + 2 s of the restoration.
    world.restore_all().await;
    let restored_at = Instant::now();
    for election in lock(&observed).iter_mut() {
        election.restored_at = Some(restored_at);
    }
    log.push("restored");
    let every_led = || {
        let each: Vec<_> = lock(&observed)
            .iter()
            .map(|election| election.leader_after_restore)
            .collect();
        last_to_lead(&each)
    };
    // Wait longer than the limit, to report how late a late leader was.
    let wait_until = restored_at + LEADER_AFTER_RESTORE + Duration::from_secs(10);
    while every_led().is_none() && Instant::now() < wait_until {
        sleep(Duration::from_millis(10)).await;
    }
    let leader_after_restore = every_led();
    let restore_window = log.window(restored_at - Duration::from_secs(3), Instant::now());

    // (d) everyone closes; nothing is left.
    let closing_at = Instant::now();
    log.push("closing everyone");
    let mut closing = tokio::task::JoinSet::new();
    for slot in &mut world.slots {
        if let Some(candidate) = slot.live.take() {
            closing.spawn(async move {
                let started = Instant::now();
                let name = candidate.name();
                let closed = timeout(CLOSE_LIMIT, candidate.close()).await;
                (name, closed, started.elapsed())
            });
        }
    }
    while let Some(joined) = closing.join_next().await {
        match joined {
            Ok((name, Ok(true), took)) => log.push(format!("{name} closed in {took:?}")),
            Ok((name, Ok(false), _)) => world.error(format!("{name}: leads after its final close")),
            Ok((name, Err(_), _)) => world.error(format!(
                "{name}: final close did not return in {CLOSE_LIMIT:?}"
            )),
            Err(error) => world.error(format!("a close task failed: {error}")),
        }
    }
    let closed_at = Instant::now();
    let close_took = closed_at - closing_at;
    // A moment more of sampling, then stop: every candidate is closed.
    sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::SeqCst);
    if let Err(error) = sampling.await {
        world.error(format!("the sampler failed: {error}"));
    }
    lock(&candidates).iter_mut().for_each(|c| *c = None);

    let direct = match timeout(CONNECT_LIMIT, Client::connect(world.cluster.config())).await {
        Ok(Ok(client)) => Some(client),
        Ok(Err(error)) => {
            world.error(format!("direct client: {error}"));
            None
        }
        Err(_) => {
            world.error("direct client: no answer".into());
            None
        }
    };
    let mut left_at_close = None;
    let mut leftovers: (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let mut clean_after = None;
    if let Some(direct) = &direct {
        loop {
            let keys = keys_under_all(direct, &elections).await;
            let held = leases(direct).await;
            match (keys, held) {
                (Ok(keys), Ok(held)) => {
                    left_at_close.get_or_insert((keys.len(), held.len()));
                    if keys.is_empty() && held.is_empty() {
                        clean_after = Some(closed_at.elapsed());
                        break;
                    }
                    leftovers = (keys, held);
                }
                (keys, held) => {
                    let error = [keys.err(), held.err()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>();
                    leftovers = (error, Vec::new());
                }
            }
            if closed_at.elapsed() > CLEAN_WITHIN {
                break;
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    // The summary, before any assertion.
    let observed = std::mem::take(&mut *lock(&observed))
        .into_iter()
        .reduce(Observed::merge)
        .expect("at least one election");
    let (faults, repairs) = (world.faults, world.repairs);
    let max_failover = observed
        .worst_failover
        .as_ref()
        .map_or("none".to_string(), |(took, _)| secs(*took));
    let after_restore = leader_after_restore.map_or("none".to_string(), |(took, _)| secs(took));
    let clean = clean_after.map_or("never".to_string(), secs);
    println!(
        "safety: {} overlaps in {} samples, {faults} faults, {repairs} repairs, {} leader changes, \
         max failover {max_failover}, seed {seed}; {} token regressions, leader {after_restore} \
         after restore, clean {clean} after close, {n} candidates, {} of faults, \
         {ELECTIONS} elections, {shared} of {n} slots on a shared session, engine {:?}",
        observed.overlaps.len(),
        observed.samples,
        observed.leader_changes,
        observed.regressions.len(),
        secs(fault_time),
        engine(),
    );
    let mut sorted = observed.failovers.clone();
    sorted.sort();
    let median = sorted
        .get(sorted.len() / 2)
        .map_or("none".to_string(), |d| secs(*d));
    println!(
        "safety: faults {:?}; {} failovers measured, median {median}, worst: {}; max sample gap {:?}, \
         {} skewed samples; close took {:?}, left at close {:?} (keys, leases)",
        world.counts,
        observed.failovers.len(),
        observed
            .worst_failover
            .as_ref()
            .map_or("none", |(_, what)| what.as_str()),
        observed.max_gap,
        observed.skewed,
        close_took,
        left_at_close,
    );

    if std::env::var_os("SAFETY_VERBOSE").is_some()
        && let Some(Pending { since, .. }) = &observed.worst_pending
    {
        println!(
            "safety: the log around the worst failover:\n{}",
            log.window(
                *since - Duration::from_secs(3),
                *since + Duration::from_secs(12)
            )
        );
    }

    // The details of what failed.
    for (at, who) in observed.overlaps.iter().take(3) {
        println!(
            "safety: (a) overlap at {} s: {who}; the log before it:\n{}",
            log.at(*at),
            log.window(
                *at - Duration::from_secs(6),
                *at + Duration::from_millis(500)
            )
        );
    }
    for (at, previous, term) in observed.regressions.iter().take(3) {
        println!(
            "safety: (b) token regression at {} s: {previous} then {term}; the log before it:\n{}",
            log.at(*at),
            log.window(
                *at - Duration::from_secs(6),
                *at + Duration::from_millis(500)
            )
        );
    }
    let leader_in_time = leader_after_restore.is_some_and(|(took, _)| took <= LEADER_AFTER_RESTORE);
    if !leader_in_time {
        println!("safety: (c) the log around the restoration:\n{restore_window}");
    }
    if clean_after.is_none() {
        println!(
            "safety: (d) the log around the close:\n{}",
            log.window(closing_at - Duration::from_secs(3), Instant::now())
        );
    }

    assert!(
        observed.overlaps.is_empty(),
        "(a) {} samples with two leaders, first: {:?}",
        observed.overlaps.len(),
        observed
            .overlaps
            .first()
            .map(|(at, who)| (log.at(*at), who))
    );
    assert!(
        observed.regressions.is_empty(),
        "(b) fencing tokens went backwards: {:?}",
        observed
            .regressions
            .iter()
            .map(|(_, a, b)| (*a, *b))
            .collect::<Vec<_>>()
    );
    assert!(
        leader_in_time,
        "(c) not a single leader in every election within {LEADER_AFTER_RESTORE:?} of the restoration (the last after: {leader_after_restore:?})"
    );
    assert!(
        clean_after.is_some(),
        "(d) left {} after everyone closed: keys {:?}, leases {:?}",
        secs(CLEAN_WITHIN),
        leftovers.0,
        leftovers.1
    );
    assert!(observed.samples > 0, "the sampler took no sample");
    assert!(
        world.errors.is_empty(),
        "harness errors: {:#?}",
        world.errors
    );
}

/// Polls `check` until it holds, failing the test after `limit`.
async fn wait_for(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// A negative control for the checker itself: two candidates leading what
/// it takes for one election are an overlap, while one candidate leading
/// several elections is not; a term with a smaller rev after a larger one
/// in one election is a regression, while across elections it is not.
///
/// Slot 0 stands in control-a and control-b on one shared session, slot 1
/// in control-c and control-b on sessions of its own. Each leads its
/// election 0 (control-a and control-c, each alone there), which the
/// checker takes for one election: an overlap. In election 1 (control-b)
/// slot 0 leads and slot 1 waits behind it: no overlap, though slot 0 leads
/// two elections at once.
#[tokio::test]
async fn the_checker_sees_what_it_checks() {
    let etcd = etcdutil::testing::Etcd::start().await.expect("start etcd");
    let client = Client::connect(etcd.config()).await.expect("connect");
    let log = Log::new();
    let config = |election: &str, slot: usize| ElectionConfig {
        election: election.into(),
        candidate: format!("c{slot}.0"),
        ttl: TTL as i64,
        ..Default::default()
    };
    let configs = vec![config("control-a", 0), config("control-b", 0)];
    let first = Candidate::stand(0, 0, Form::Shared, client.clone(), configs).expect("slot 0");
    wait_for("slot 0 leads both", Duration::from_secs(10), || {
        first.leads(0) && first.leads(1)
    })
    .await;
    let (seen, mut sights) = tokio::sync::mpsc::unbounded_channel();
    let behind = ElectionConfig {
        event_observer: Some(Arc::new(move |event: ElectionEvent| drop(seen.send(event)))),
        ..config("control-b", 1)
    };
    let configs = vec![config("control-c", 1), behind];
    let second = Candidate::stand(1, 0, Form::Own, client.clone(), configs).expect("slot 1");
    wait_for("slot 1 leads control-c", Duration::from_secs(10), || {
        second.leads(0)
    })
    .await;
    let sight = timeout(Duration::from_secs(10), async {
        loop {
            let event = sights.recv().await.expect("slot 1's control-b events");
            if !event.leader_key.is_empty() {
                return event;
            }
        }
    })
    .await
    .expect("slot 1 sees who leads control-b");
    assert_eq!(
        (sight.is_leader, sight.leader_data.as_str()),
        (false, "c0.0")
    );

    let candidates: Candidates = Arc::new(Mutex::new(vec![
        Some(Arc::new(first)),
        Some(Arc::new(second)),
    ]));
    let sample = read(&candidates, 2);
    let names = |(leading, _): &Sample| leading.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&sample[0]), ["c0.0", "c1.0"]);
    assert_eq!(names(&sample[1]), ["c0.0"]);
    assert!(sample.iter().all(|(_, skewed)| !skewed));
    let mut observed: Vec<Observed> = (0..2)
        .map(|election| Observed {
            election,
            ..Observed::default()
        })
        .collect();
    record_all(&mut observed, Instant::now(), sample, &log);
    assert_eq!(observed[0].overlaps.len(), 1);
    assert!(observed[1].overlaps.is_empty());

    let term = |election, slot, rev| Term {
        election,
        slot,
        generation: 0,
        rev,
    };
    let lone = |term: Term| vec![(format!("c{}.0", term.slot), Some(term))];
    let mut observed: Vec<Observed> = (0..2)
        .map(|election| Observed {
            election,
            ..Observed::default()
        })
        .collect();
    // Per step, (slot, rev) leading election 0 and election 1. Election 0
    // goes 10, 12, 11: a regression. Election 1 goes 9, 11: none, though its
    // 11 comes after election 0's 12 (revisions are compared per election).
    let steps = [
        ((0, 10), (1, 9)),
        ((0, 10), (1, 9)),
        ((1, 12), (1, 9)),
        ((0, 11), (0, 11)),
    ];
    for ((s0, rev0), (s1, rev1)) in steps {
        let sample = vec![
            (lone(term(0, s0, rev0)), false),
            (lone(term(1, s1, rev1)), false),
        ];
        record_all(&mut observed, Instant::now(), sample, &log);
    }
    assert_eq!(observed[0].leader_changes, 2);
    assert_eq!(observed[0].regressions.len(), 1);
    assert_eq!(observed[0].regressions[0].1, term(0, 1, 12));
    assert_eq!(observed[1].leader_changes, 1);
    assert!(observed[1].regressions.is_empty());
    assert!(observed.iter().all(|o| o.overlaps.is_empty()));

    let all: Vec<Arc<Candidate>> = lock(&candidates).drain(..).flatten().collect();
    for candidate in all {
        assert!(candidate.close().await, "no election leads once closed");
    }
}
