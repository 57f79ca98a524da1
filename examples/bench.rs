//! Benchmarks of `etcdutil` against a real etcd (the project's issue 6).
//!
//! ```sh
//! cargo run --release --example bench                 # full run: about 10 minutes on 2 cores
//! BENCH_QUICK=1 cargo run --release --example bench   # smoke run: fewer reps, shorter holds
//! ETCD3_ENDPOINT=10.0.0.7:2379 cargo run --release --example bench   # your own etcd, one pass
//! BENCH_ETCD_CLIENT=0 cargo run --release --example bench  # without the etcd-client comparator
//! cargo run --release --example scale                 # the scale section (examples/scale.rs)
//! ```
//!
//! The scale section (1,000 to 10,000 elections on one client, both forms;
//! 10 processes x 1,000 against a 3-member cluster; a handover among
//! 10,000 elections; its plot `target/bench/scale.svg`) is the `scale`
//! example: it starts an etcd per row and holds each for 20 s, so it runs
//! on its own (about 4 minutes).
//!
//! Without `ETCD3_ENDPOINT` it runs every scenario twice, each time against
//! a fresh single-member etcd it starts itself (`etcdutil::testing::Etcd`,
//! data under the system temp dir): once with `--unsafe-no-fsync` (mode
//! `no-fsync`) and once without (mode `fsync`, etcd's default, an fsync per
//! commit). With `ETCD3_ENDPOINT` (and the other `ETCD3_*` variables) it
//! runs once against that etcd (mode `external`), under keys and election
//! names unique to the run; its keys are deleted at the end.
//!
//! It prints two tables, latencies and other figures, each row with its
//! target and PASS/MISS, writes the same figures as JSON to
//! `target/bench.json` (next to `Cargo.toml`; `BENCH_JSON=path` overrides),
//! and draws the handover and crash-failover latency distributions (CDFs on
//! a log time axis, one panel per pass, the Put round trip as a reference
//! line) as `target/bench/latency.svg` (beside the JSON).
//!
//! # Scenarios
//!
//! Every latency is given as median, p99 (nearest rank: with 10 reps it is
//! the max) and max over its repetitions, next to the Put baseline measured
//! against the same etcd in the same run, and as ratios to it.
//!
//! 1. **Put baseline**: round trip of one `client.kv().put(..)` (16-byte
//!    value), sequential, 1,000 puts after 20 unmeasured warm-up puts. It
//!    is measured again after the election scenarios (row "re-check", no
//!    target) to show how much the machine drifted meanwhile.
//! 2. **Graceful handover**, by `close()` and by `concede()`: candidates A
//!    and B on two separate `Client`s, a fresh election name per rep; A
//!    wins, B enters behind it, then the time from calling `A.close()` (or
//!    `A.concede()`) to B's event observer seeing `is_leader: true` (the
//!    `Instant` is taken inside the observer). B has just joined: A goes as
//!    soon as B's `new_election` returned. 200 reps each. Target: median <=
//!    3x and p99 <= 5x the Put baseline's median.
//!
//!    **Settled**, interleaved rep by rep with the raw floor: the same by
//!    `close()`, but B sits in the race for 300 ms first; and etcd's raw
//!    Election RPCs sent by stock tonic (`tonic::client::Grpc` on two plain
//!    `Channel`s, tonic-prost's codec: nothing of this crate on the way)
//!    with leases kept by hand: A's `Campaign` wins, B's
//!    `Campaign` waits in etcd for 300 ms, then from A's `Resign` to B's
//!    `Campaign` returning; and the same through etcd-client's own
//!    election API (`campaign`, then `resign` of the leader; the crate
//!    etcd-client 0.21, its own `Client`s on two connections). The three
//!    run one after the other in each rep, in an order rotated by one per
//!    rep. 100 reps each (quick: 10). Targets: our median <= 1.0x the raw
//!    one, and <= 1.0x etcd-client's.
//!
//!    etcd-client runs in a helper process: its crate is written to
//!    `target/bench/etcd-client-handover/` and built there with its own
//!    lock file on the first run (about a minute). It is no dev-dependency
//!    because its build script needs `protoc`, and this crate builds and
//!    is tested without one; the bench needs `protoc` on the PATH (Debian:
//!    `protobuf-compiler`) or in `PROTOC` for this row, and notes why it
//!    skipped the row otherwise. The helper times each handover itself,
//!    with the same clock points as the raw row; the bench only tells it
//!    when.
//! 3. **Crash failover**, TTL 2 s: the leader's `Client` goes through its own
//!    fault proxy (`etcdutil::testing::Proxy`), the follower connects
//!    directly. The proxy is `cut()`: its TCP connections close, as when a
//!    process crashes, and nothing revokes the lease, so etcd keeps it until
//!    the TTL runs out. Measured: from just before the cut to the follower's
//!    `is_leader` event. The cut comes 100 to 766 ms after the follower
//!    entered (`100 + 251 * rep mod 667` ms, spread over the 667 ms
//!    keepalive period) so that the reps sample different points of the
//!    leader's keepalive cycle. 10 reps (3 quick). Target: median <= TTL +
//!    0.6 s.
//! 4. **Initial election**: `new_election` on an empty election (fresh name
//!    per rep) until it resolves; we lead at that point. 200 reps. Target:
//!    median <= 2.5x the Put baseline. Each rep starts after an untimed pause
//!    of `37 * rep mod 100` ms, so that reps land anywhere in etcd's 100 ms
//!    watch sync cycle as independent callers would, not in lockstep with
//!    it. (The candidacy's Txn waits for its observer's watch to exist,
//!    which etcd creates while the lease is granted.)
//! 5. **Keepalive scale**: 10,000 `Session`s (TTL 10 s) on one `Client`
//!    that reaches etcd through a `Proxy`, all granted, then held for 60 s
//!    (quick: 1,000 for 10 s). Over the hold: TCP connections the proxy
//!    holds (max; target 1), VmRSS of this process (max; target <= 64 MiB),
//!    CPU per second of wall time from `/proc/self/stat` utime+stime (target
//!    <= 3% of one core), and `NO_LEASE` observer calls after all leases
//!    were granted (target 0). The scenario runs in a child process (this
//!    program again, `BENCH_KEEPALIVE_CHILD` set) that does nothing else, so
//!    that the memory and CPU figures are those of a process holding the
//!    sessions, not what earlier scenarios or the other pass left behind.
//!    etcd runs as its own process and is not in these figures; the proxy
//!    is in the child, so the CPU is also given without the proxy's thread
//!    (`bench-proxy`, where all proxies run). Also given,
//!    without targets: the time to grant all leases, how many grants failed
//!    and were retried by their sessions, and the heap in use (the bytes
//!    allocated and not yet freed, counted by this program's global
//!    allocator, a thin wrapper over the system one) before the sessions,
//!    at its peak while granting, and during the hold; RSS minus heap is
//!    what the allocator keeps resident after a transient peak.
//! 6. **Raw KV throughput**: Puts with 1, 16 and 128 requests in flight on
//!    one `Client` (direct) for 10 s each (quick: 2 s); operations per
//!    second. Then at 128 in flight against a plain tonic channel to the same
//!    etcd (the generated client without this crate's transport): 5 pairs
//!    of 5 s runs (quick: 3 of 1 s), ours and the raw channel's
//!    interleaved (raw first in even pairs, ours first in odd ones).
//!    Reported: the median rate of each, and the median over the pairs of
//!    ours / raw, each pair's ratio listed under Notes. Target: that median
//!    >= 1.0x.
//! 7. **Process handover, `elect` against Go's `etcdctl elect`** (Debian's
//!    etcd-client), interleaved rep by rep: two candidate processes of one
//!    kind, the second settled in the race for 300 ms, then from SIGINT to
//!    the leader (both resign on it) to the second's sign that it leads
//!    (`elect`'s `"is_leader":true` line; `etcdctl`'s key line). 30 reps
//!    each (quick: 4). Target: `elect`'s median <= 1.0x `etcdctl`'s.
//!
//! Order within a pass: 1, 4, 2 (close), 2 (concede), 2 (settled: ours, raw, etcd-client),
//! 7, 3, 1 again, 5, 6.
//! A rep that fails or takes too long is counted in `fail` and turns the
//! row into a MISS; the first errors of each scenario are listed under the
//! tables.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcdutil::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, StatusRequest};
use etcdutil::testing::{Etcd, Proxy};
use etcdutil::{
    Client, Config, Election, ElectionConfig, ElectionEvent, Engine, EventObserver, NO_LEASE,
    Session, SessionConfig, SessionObserver, new_election, new_election_on,
};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tonic::transport::Channel;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = std::result::Result<T, BoxError>;

/// The proxies' runtime thread; its CPU time is reported apart.
const PROXY_THREAD: &str = "bench-proxy";
/// Set (to etcd's client address) in the environment of the child process
/// that runs scenario 5.
const CHILD_ENV: &str = "BENCH_KEEPALIVE_CHILD";
/// How the child tells the parent its figures: lines starting with this.
const CHILD_LINE: &str = "@bench\t";
/// The value of every Put.
const VALUE: &[u8] = b"0123456789abcdef";
/// TTL of the elections of scenarios 2 and 4 (they never wait on it).
const ELECTION_TTL: i64 = 5;
/// Limit on one rep of the handover and initial-election scenarios.
const REP_TIMEOUT: Duration = Duration::from_secs(15);
/// Give up a scenario after this many failed reps in a row.
const MAX_FAILURES_IN_A_ROW: usize = 5;

/// The system allocator, counting the bytes in use, so that the keepalive
/// scenario can tell the heap the sessions hold from what the allocator keeps
/// resident after a transient peak.
struct CountingAlloc;

static HEAP_LIVE: AtomicUsize = AtomicUsize::new(0);
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

fn heap_grew(by: usize) {
    let live = HEAP_LIVE.fetch_add(by, Ordering::Relaxed) + by;
    HEAP_PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is passed on to `System` unchanged; only counts are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            heap_grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            heap_grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        HEAP_LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            HEAP_LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            heap_grew(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

fn heap_live_mib() -> f64 {
    HEAP_LIVE.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

/// How much to do: the full run or `BENCH_QUICK=1`.
#[derive(Clone, Copy, Debug)]
struct Params {
    quick: bool,
    warmup: usize,
    puts: usize,
    handover_reps: usize,
    /// Reps of the settled handover and of the raw Resign it is compared with.
    settled_reps: usize,
    /// Reps of the process-level race, `elect` against `etcdctl elect`.
    race_reps: usize,
    failover_reps: usize,
    failover_ttl: i64,
    initial_reps: usize,
    sessions: usize,
    session_ttl: i64,
    hold: Duration,
    throughput_for: Duration,
    in_flight: [usize; 3],
    /// Interleaved pairs of runs, ours and a bare tonic channel, at the
    /// highest in-flight level; the ratio is the median over the pairs.
    compare_runs: usize,
    /// Length of each of those runs.
    compare_for: Duration,
}

impl Params {
    fn from_env() -> Params {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let full = Params {
            quick,
            warmup: 20,
            puts: 1000,
            handover_reps: 200,
            settled_reps: 100,
            race_reps: 30,
            failover_reps: 10,
            failover_ttl: 2,
            initial_reps: 200,
            sessions: 10_000,
            session_ttl: 10,
            hold: Duration::from_secs(60),
            throughput_for: Duration::from_secs(10),
            in_flight: [1, 16, 128],
            compare_runs: 5,
            compare_for: Duration::from_secs(5),
        };
        if !quick {
            return full;
        }
        Params {
            puts: 200,
            handover_reps: 20,
            settled_reps: 10,
            race_reps: 4,
            failover_reps: 3,
            initial_reps: 30,
            sessions: 1000,
            hold: Duration::from_secs(10),
            throughput_for: Duration::from_secs(2),
            compare_runs: 3,
            compare_for: Duration::from_secs(1),
            ..full
        }
    }
}

/// Which etcd a pass runs against.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// One started here, with or without `--unsafe-no-fsync`.
    Local { no_fsync: bool },
    /// `ETCD3_ENDPOINT`.
    External,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Local { no_fsync: true } => "no-fsync",
            Mode::Local { no_fsync: false } => "fsync",
            Mode::External => "external",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Mode::Local { no_fsync: true } => "local etcd started with --unsafe-no-fsync",
            Mode::Local { no_fsync: false } => "local etcd with fsync (etcd's default)",
            Mode::External => "external etcd from ETCD3_ENDPOINT (fsync setting unknown)",
        }
    }

    /// Whether etcd ran with `--unsafe-no-fsync`, if known.
    fn no_fsync(self) -> Option<bool> {
        match self {
            Mode::Local { no_fsync } => Some(no_fsync),
            Mode::External => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Statistics and results

#[derive(Clone, Copy, Debug)]
struct Stats {
    n: usize,
    median: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(samples: &[Duration]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort();
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    };
    let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
    Some(Stats {
        n,
        median,
        p99: s[rank - 1],
        max: s[n - 1],
    })
}

/// What a latency row is held to.
#[derive(Clone, Copy, Debug)]
enum Goal {
    /// No target: the baseline itself, or information.
    Info,
    /// Median at most this many times the baseline's median.
    TimesBaseline(f64),
    /// Median at most this long.
    AtMost(Duration),
    /// Median at most `.0` times, and p99 at most `.1` times, the baseline's median.
    MedianAndP99(f64, f64),
}

impl Goal {
    fn describe(self) -> String {
        match self {
            Goal::Info => "-".into(),
            Goal::TimesBaseline(k) => format!("median <= {k}x base"),
            Goal::AtMost(d) => format!("median <= {:.0} ms", ms(d)),
            Goal::MedianAndP99(m, p) => format!("med <= {m}x, p99 <= {p}x"),
        }
    }
}

struct LatencyRow {
    scenario: String,
    /// Every rep's latency, for the plot.
    samples: Vec<Duration>,
    stats: Option<Stats>,
    attempts: usize,
    failures: usize,
    goal: Goal,
}

impl LatencyRow {
    fn verdict(&self, baseline: Option<Stats>) -> Option<bool> {
        let (median, p99) = match self.goal {
            Goal::Info => return None,
            Goal::TimesBaseline(k) => (baseline?.median.mul_f64(k), Duration::MAX),
            Goal::AtMost(d) => (d, Duration::MAX),
            Goal::MedianAndP99(m, p) => {
                let base = baseline?.median;
                (base.mul_f64(m), base.mul_f64(p))
            }
        };
        Some(
            self.failures == 0
                && self
                    .stats
                    .is_some_and(|s| s.median <= median && s.p99 <= p99),
        )
    }
}

struct FigureRow {
    scenario: String,
    metric: String,
    value: f64,
    unit: &'static str,
    target: String,
    pass: Option<bool>,
}

struct ModeReport {
    mode: Mode,
    endpoint: String,
    etcd_version: String,
    seconds: f64,
    baseline: Option<Stats>,
    latencies: Vec<LatencyRow>,
    figures: Vec<FigureRow>,
    /// Observations worth knowing that are not failures.
    notes: Vec<String>,
    errors: Vec<String>,
}

impl ModeReport {
    fn new(mode: Mode) -> ModeReport {
        ModeReport {
            mode,
            endpoint: String::new(),
            etcd_version: String::new(),
            seconds: 0.0,
            baseline: None,
            latencies: Vec::new(),
            figures: Vec::new(),
            notes: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn figure(
        &mut self,
        scenario: &str,
        metric: &str,
        value: f64,
        unit: &'static str,
        target: &str,
        pass: Option<bool>,
    ) {
        self.figures.push(FigureRow {
            scenario: scenario.into(),
            metric: metric.into(),
            value,
            unit,
            target: target.into(),
            pass,
        });
    }

    /// Two interleaved scenarios, ours and a reference: both rows, and the
    /// ratio of their medians with the target ours <= 1.0x the reference.
    fn compared(
        &mut self,
        ours: (&str, Reps),
        reference: (&str, Reps),
        scenario: &str,
        metric: &str,
    ) {
        let medians = (stats(&ours.1.samples), stats(&reference.1.samples));
        self.latency(ours.0, ours.1, Goal::Info);
        self.latency(reference.0, reference.1, Goal::Info);
        if let (Some(ours), Some(reference)) = medians {
            let x = ratio(ours.median, reference.median);
            self.figure(scenario, metric, x, "x", "<= 1.0", Some(x <= 1.0));
        }
    }

    fn latency(&mut self, scenario: &str, reps: Reps, goal: Goal) {
        let errors = reps.errors.len();
        for (i, error) in reps.errors.iter().enumerate().take(3) {
            self.errors
                .push(format!("{scenario}: failure {}/{errors}: {error}", i + 1));
        }
        self.latencies.push(LatencyRow {
            scenario: scenario.into(),
            stats: stats(&reps.samples),
            samples: reps.samples.clone(),
            attempts: reps.samples.len() + errors,
            failures: errors,
            goal,
        });
    }
}

/// The outcome of a repeated measurement.
#[derive(Default)]
struct Reps {
    samples: Vec<Duration>,
    errors: Vec<String>,
}

/// Runs `rep(0..n)` one after the other, each bounded by `limit`, and
/// collects the durations it returns; stops early if the reps keep failing.
async fn repeat(
    n: usize,
    limit: Duration,
    mut rep: impl AsyncFnMut(usize) -> Res<Duration>,
) -> Reps {
    let mut reps = Reps::default();
    let mut in_a_row = 0;
    for i in 0..n {
        match tokio::time::timeout(limit, rep(i)).await {
            Ok(Ok(d)) => {
                reps.samples.push(d);
                in_a_row = 0;
                continue;
            }
            Ok(Err(e)) => reps.errors.push(format!("rep {i}: {e}")),
            Err(_) => reps
                .errors
                .push(format!("rep {i}: no result within {limit:?}")),
        }
        in_a_row += 1;
        if in_a_row >= MAX_FAILURES_IN_A_ROW {
            reps.errors.push(format!(
                "gave up after {in_a_row} failed reps in a row ({} of {n} attempted)",
                i + 1
            ));
            break;
        }
    }
    reps
}

// ---------------------------------------------------------------------------
// The process: CPU, memory

/// CPU time, in clock ticks, of the process and of its proxy thread.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    process: u64,
    proxy: u64,
}

/// utime + stime of a `/proc/.../stat` file, and the thread or process name.
fn stat_ticks(path: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    // Fields after the name start at field 3 (state); utime is 14, stime 15.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn cpu_now() -> Cpu {
    let mut cpu = Cpu {
        process: stat_ticks("/proc/self/stat").map_or(0, |(_, t)| t),
        ..Cpu::default()
    };
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let path = task.path().join("stat");
            let Some((name, ticks)) = stat_ticks(&path.to_string_lossy()) else {
                continue;
            };
            if name == PROXY_THREAD {
                cpu.proxy += ticks;
            }
        }
    }
    cpu
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// A `kB` line of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------
// Proxies on a thread of their own

/// A single-threaded runtime on the thread [`PROXY_THREAD`], where every
/// proxy's tasks run, so that their CPU time can be told apart.
struct ProxyRuntime {
    handle: tokio::runtime::Handle,
    _stop: oneshot::Sender<()>,
}

impl ProxyRuntime {
    fn start() -> Res<ProxyRuntime> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(PROXY_THREAD.into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the proxies' runtime");
                let _ = handle_tx.send(runtime.handle().clone());
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(ProxyRuntime {
            handle: handle_rx.recv()?,
            _stop: stop,
        })
    }

    /// A proxy to `target` whose tasks run on the proxy thread. (Only `cut`
    /// is used: `restore` after a cut would spawn on the caller's runtime.)
    async fn proxy(&self, target: SocketAddr) -> Res<Proxy> {
        Ok(self.handle.spawn(Proxy::start(target)).await??)
    }
}

// ---------------------------------------------------------------------------
// Helpers

/// What each pass needs.
struct Ctx<'a> {
    p: Params,
    /// Settings to reach etcd directly.
    base: Config,
    /// etcd's client address, for proxies.
    target: SocketAddr,
    proxies: &'a ProxyRuntime,
    /// Unique to this pass: key prefix and election-name prefix.
    prefix: String,
}

impl Ctx<'_> {
    fn via(&self, addr: SocketAddr) -> Config {
        let mut config = self.base.clone();
        config.endpoints = vec![addr.to_string()];
        config
    }

    fn election(
        &self,
        name: &str,
        candidate: &str,
        ttl: i64,
        observer: Option<EventObserver>,
    ) -> ElectionConfig {
        ElectionConfig {
            event_observer: observer,
            election: format!("{}/{name}", self.prefix),
            candidate: candidate.into(),
            ttl,
            ..Default::default()
        }
    }

    fn key(&self, name: &str) -> Vec<u8> {
        format!("/{}/{name}", self.prefix).into_bytes()
    }
}

fn put(key: &[u8]) -> PutRequest {
    PutRequest {
        key: key.to_vec().into(),
        value: VALUE.to_vec().into(),
        ..Default::default()
    }
}

/// An observer that records when its candidate first sees itself lead.
fn leader_stamp() -> (EventObserver, oneshot::Receiver<Instant>) {
    let (tx, rx) = oneshot::channel();
    let slot = Mutex::new(Some(tx));
    let observer: EventObserver = Arc::new(move |event: ElectionEvent| {
        if event.is_leader {
            let at = Instant::now();
            if let Some(tx) = slot.lock().expect("stamp lock").take() {
                let _ = tx.send(at);
            }
        }
    });
    (observer, rx)
}

/// Waits until `election` leads, for at most `limit`.
async fn wait_leader(election: &Election, limit: Duration) -> Res<()> {
    let mut events = election.subscribe();
    if election.is_leader() {
        return Ok(());
    }
    let wait = async {
        while let Some(event) = events.recv().await {
            if event.is_leader {
                return true;
            }
        }
        false
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(true) => Ok(()),
        _ => Err(format!("{} did not become leader within {limit:?}", election.name()).into()),
    }
}

/// Host and port of an endpoint, `http(s)://` and a trailing `/` removed.
async fn resolve(endpoint: &str) -> Res<SocketAddr> {
    let host = endpoint
        .trim()
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let with_port = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:2379")
    };
    tokio::net::lookup_host(&with_port)
        .await?
        .next()
        .ok_or_else(|| format!("{endpoint} resolves to no address").into())
}

// ---------------------------------------------------------------------------
// Scenarios

/// Scenario 1: sequential Puts on the raw KV client.
async fn put_baseline(ctx: &Ctx<'_>, client: &Client, key: &str) -> Reps {
    let key = ctx.key(key);
    let mut kv = client.kv();
    for _ in 0..ctx.p.warmup {
        if let Err(e) = kv.put(put(&key)).await {
            return Reps {
                samples: vec![],
                errors: vec![format!("warm-up put: {e}")],
            };
        }
    }
    repeat(ctx.p.puts, REP_TIMEOUT, async |_| {
        let request = put(&key);
        let t0 = Instant::now();
        kv.put(request).await?;
        Ok(t0.elapsed())
    })
    .await
}

#[derive(Clone, Copy, PartialEq)]
enum Handover {
    Close,
    Concede,
}

/// Scenario 2, one rep: B sits in the race for `settle` before A goes.
async fn handover(
    ctx: &Ctx<'_>,
    a_client: &Client,
    b_client: &Client,
    how: Handover,
    settle: Duration,
    i: usize,
) -> Res<Duration> {
    handover_with(ctx, a_client, b_client, how, settle, i, Engine::ClientSide).await
}

/// As [`handover`], both candidates campaigning with `engine`.
async fn handover_with(
    ctx: &Ctx<'_>,
    a_client: &Client,
    b_client: &Client,
    how: Handover,
    settle: Duration,
    i: usize,
    engine: Engine,
) -> Res<Duration> {
    let kind = match how {
        Handover::Close => "close",
        Handover::Concede => "concede",
    };
    let name = format!("handover-{kind}-{}ms-{engine:?}-{i}", settle.as_millis());
    let with = |config: ElectionConfig| ElectionConfig { engine, ..config };
    let a = new_election(a_client, with(ctx.election(&name, "a", ELECTION_TTL, None))).await?;
    wait_leader(&a, Duration::from_secs(5)).await?;
    let (observer, stamp) = leader_stamp();
    let b = new_election(
        b_client,
        with(ctx.election(&name, "b", ELECTION_TTL, Some(observer))),
    )
    .await?;
    if engine == Engine::ServerSide {
        // etcd's Campaign puts B's key some time after B's first outcome
        // (nothing outside the call can see when): wait for it, or A's
        // concede finds no one waiting and wins again.
        let prefix = format!("/elections/{}/{name}/", ctx.prefix);
        let deadline = Instant::now() + Duration::from_secs(5);
        while count_under(b_client, &prefix).await? < 2 {
            if Instant::now() > deadline {
                return Err("B's key is not in etcd 5 s after B's first outcome".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    tokio::time::sleep(settle).await;
    if b.is_leader() {
        return Err("B leads before the handover".into());
    }
    let t0 = Instant::now();
    match how {
        Handover::Close => a.close().await,
        Handover::Concede => {
            if !a.concede().await? {
                return Err("concede() returned false: A did not lead".into());
            }
        }
    }
    let at = tokio::time::timeout(Duration::from_secs(10), stamp)
        .await
        .map_err(|_| "B did not lead within 10 s of the handover")??;
    tokio::join!(a.close(), b.close());
    Ok(at.saturating_duration_since(t0))
}

/// Scenario 3, one rep.
async fn failover(ctx: &Ctx<'_>, follower_client: &Client, i: usize) -> Res<Duration> {
    let ttl = ctx.p.failover_ttl;
    let name = format!("failover-{i}");
    let proxy = ctx.proxies.proxy(ctx.target).await?;
    let leader_client = Client::connect(ctx.via(proxy.addr())).await?;
    let leader = new_election(&leader_client, ctx.election(&name, "leader", ttl, None)).await?;
    wait_leader(&leader, Duration::from_secs(5)).await?;
    let (observer, stamp) = leader_stamp();
    let follower = new_election(
        follower_client,
        ctx.election(&name, "follower", ttl, Some(observer)),
    )
    .await?;
    // Spread the crash over the keepalive period (TTL / 3).
    let period = (ttl as u64 * 1000 / 3).max(1);
    tokio::time::sleep(Duration::from_millis(100 + (i as u64 * 251) % period)).await;
    if !leader.is_leader() || follower.is_leader() {
        return Err("the leader changed before the crash".into());
    }
    let t0 = Instant::now();
    proxy.cut().await;
    let limit = Duration::from_secs(ttl as u64 + 10);
    let at = tokio::time::timeout(limit, stamp)
        .await
        .map_err(|_| format!("the follower did not lead within {limit:?} of the crash"))??;
    // The crashed side closes in the background: its connection is refused.
    drop(leader);
    drop(leader_client);
    follower.close().await;
    drop(proxy);
    Ok(at.saturating_duration_since(t0))
}

/// Scenario 4, one rep.
async fn initial(ctx: &Ctx<'_>, client: &Client, i: usize, engine: Engine) -> Res<Duration> {
    let config = ElectionConfig {
        engine,
        ..ctx.election(
            &format!("initial-{engine:?}-{i}"),
            "solo",
            ELECTION_TTL,
            None,
        )
    };
    let t0 = Instant::now();
    let election = new_election(client, config).await?;
    let took = t0.elapsed();
    let leads = election.is_leader();
    election.close().await;
    if !leads {
        return Err("new_election resolved without leading an empty election".into());
    }
    Ok(took)
}

/// How many keys are under `prefix`.
async fn count_under(client: &Client, prefix: &str) -> Res<i64> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a prefix") += 1;
    let request = RangeRequest {
        key: prefix.as_bytes().to_vec().into(),
        range_end: end.into(),
        count_only: true,
        ..Default::default()
    };
    Ok(client.kv().range(request).await?.into_inner().count)
}

/// Waits until `session` holds a lease.
async fn wait_lease(session: &Session) -> Res<()> {
    let mut lease = session.watch_lease();
    tokio::time::timeout(
        Duration::from_secs(10),
        lease.wait_for(|id| *id != NO_LEASE),
    )
    .await
    .map_err(|_| "the session holds no lease after 10 s")??;
    Ok(())
}

/// Scenario 4, on a session the caller holds already: one commit.
async fn initial_on(ctx: &Ctx<'_>, session: &Session, i: usize) -> Res<Duration> {
    let config = ctx.election(&format!("initial-on-{i}"), "solo", ELECTION_TTL, None);
    let t0 = Instant::now();
    let election = new_election_on(session, config).await?;
    let took = t0.elapsed();
    let leads = election.is_leader();
    election.close().await;
    if !leads {
        return Err("new_election_on resolved without leading an empty election".into());
    }
    Ok(took)
}

/// Scenario 5.
async fn keepalive_scale(ctx: &Ctx<'_>, report: &mut ModeReport) -> Res<()> {
    const S: &str = "keepalive scale";
    let p = ctx.p;
    let n = p.sessions;
    let proxy = ctx.proxies.proxy(ctx.target).await?;
    let client = Client::connect(ctx.via(proxy.addr())).await?;
    let rss_before = status_kib("VmRSS:").unwrap_or(0);
    let heap_before = heap_live_mib();
    HEAP_PEAK.store(HEAP_LIVE.load(Ordering::Relaxed), Ordering::Relaxed);

    // NO_LEASE calls before the hold (failed grants, retried by the
    // sessions) and during it (leases lost), and the first grant error.
    let failed_grants = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let holding_phase = Arc::new(AtomicBool::new(false));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let observer: SessionObserver = {
        let (failed_grants, lost, holding_phase, first_error) = (
            failed_grants.clone(),
            lost.clone(),
            holding_phase.clone(),
            first_error.clone(),
        );
        Arc::new(move |lease, error| {
            if lease != NO_LEASE {
                return;
            }
            if holding_phase.load(Ordering::SeqCst) {
                lost.fetch_add(1, Ordering::SeqCst);
            } else {
                failed_grants.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(error) = error {
                first_error
                    .lock()
                    .expect("error lock")
                    .get_or_insert_with(|| error.to_string());
            }
        })
    };

    let t0 = Instant::now();
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        sessions.push(Session::new(
            &client,
            SessionConfig {
                ttl: p.session_ttl,
                observer: observer.clone(),
            },
        )?);
    }
    let holding =
        |sessions: &[Session]| sessions.iter().filter(|s| s.lease_id() != NO_LEASE).count();
    let grant_limit = Duration::from_secs(120);
    while holding(&sessions) < n {
        if t0.elapsed() > grant_limit {
            return Err(format!(
                "only {} of {n} sessions got a lease within {grant_limit:?}",
                holding(&sessions)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let granted_in = t0.elapsed();
    let heap_peak_granting = HEAP_PEAK.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0);
    let rss_granted = status_kib("VmRSS:").unwrap_or(0);
    let failed = failed_grants.load(Ordering::SeqCst);
    println!(
        "    {n} leases granted in {:.2} s ({failed} failed grants retried); holding for {:?}",
        granted_in.as_secs_f64(),
        p.hold
    );

    holding_phase.store(true, Ordering::SeqCst);
    let (mut max_conns, mut min_conns) = (proxy.connection_count(), proxy.connection_count());
    let mut max_rss = rss_granted;
    let mut max_heap = heap_live_mib();
    let cpu0 = cpu_now();
    let start = Instant::now();
    while start.elapsed() < p.hold {
        let left = p.hold.saturating_sub(start.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(500))).await;
        let conns = proxy.connection_count();
        max_conns = max_conns.max(conns);
        min_conns = min_conns.min(conns);
        max_rss = max_rss.max(status_kib("VmRSS:").unwrap_or(0));
        max_heap = max_heap.max(heap_live_mib());
    }
    let cpu1 = cpu_now();
    let wall = start.elapsed().as_secs_f64();
    holding_phase.store(false, Ordering::SeqCst);
    let lost = lost.load(Ordering::SeqCst);
    let still_holding = holding(&sessions);

    let tick = clock_ticks_per_second();
    let pct = |ticks: u64| ticks as f64 / tick / wall * 100.0;
    let process = pct(cpu1.process.saturating_sub(cpu0.process));
    let proxy_cpu = pct(cpu1.proxy.saturating_sub(cpu0.proxy));
    let without = (process - proxy_cpu).max(0.0);

    let tc = Instant::now();
    let mut closing = JoinSet::new();
    for session in sessions {
        closing.spawn(async move { session.close().await });
    }
    let closed = tokio::time::timeout(Duration::from_secs(120), async {
        while closing.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    let close_s = tc.elapsed().as_secs_f64();
    drop(client);
    drop(proxy);

    let rss_ok = mib(max_rss) <= 64.0;
    #[rustfmt::skip]
    let rows: [(&str, f64, &'static str, &str, Option<bool>); 17] = [
        ("sessions, all granted", n as f64, "", "-", None),
        ("time to grant all", granted_in.as_secs_f64(), "s", "-", None),
        ("failed grants (retried) before hold", failed as f64, "", "-", None),
        ("hold", wall, "s", "-", None),
        ("TCP connections (max in hold)", max_conns as f64, "", "== 1", Some(max_conns == 1 && min_conns == 1)),
        ("VmRSS (max in hold)", mib(max_rss), "MiB", "<= 64 MiB", Some(rss_ok)),
        ("VmRSS before the sessions", mib(rss_before), "MiB", "-", None),
        ("VmRSS once all granted", mib(rss_granted), "MiB", "-", None),
        ("heap in use before the sessions", heap_before, "MiB", "-", None),
        ("heap in use, peak while granting", heap_peak_granting, "MiB", "-", None),
        ("heap in use (max in hold)", max_heap, "MiB", "-", None),
        ("CPU, whole process", process, "% core", "<= 3 %", Some(process <= 3.0)),
        ("CPU, of which bench proxy thread", proxy_cpu, "% core", "-", None),
        ("CPU, without the proxy thread", without, "% core", "<= 3 %", Some(without <= 3.0)),
        ("leases lost (NO_LEASE in hold)", lost as f64, "", "== 0", Some(lost == 0)),
        ("sessions holding a lease at end", still_holding as f64, "", "-", None),
        ("time to close all", close_s, "s", "-", None),
    ];
    for (metric, value, unit, target, pass) in rows {
        report.figure(S, metric, value, unit, target, pass);
    }
    if let Some(error) = first_error.lock().expect("error lock").take() {
        report.notes.push(format!(
            "{S}: first error reported to a session observer: {error}"
        ));
    }
    if !closed {
        report
            .errors
            .push(format!("{S}: closing {n} sessions took over 120 s"));
    }
    Ok(())
}

/// Runs scenario 5 in a child process (this program again, with
/// [`CHILD_ENV`] set), so that its memory and CPU figures are those of a
/// process that holds the sessions and nothing else: not what earlier
/// scenarios (or the other pass) left in this one, nor the etcd harness's
/// threads. The child's figures come back as [`CHILD_LINE`] lines.
async fn keepalive_in_child(ctx: &Ctx<'_>, mode: Mode, report: &mut ModeReport) -> Res<()> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, ctx.target.to_string())
        .env(
            "BENCH_KEEPALIVE_EXTERNAL",
            if matches!(mode, Mode::External) {
                "1"
            } else {
                "0"
            },
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let limit = ctx.p.hold + Duration::from_secs(300);
    let read = async {
        while let Some(line) = lines.next_line().await? {
            let Some(fields) = line.strip_prefix(CHILD_LINE) else {
                println!("{line}");
                continue;
            };
            let fields: Vec<&str> = fields.split('\t').collect();
            match fields.as_slice() {
                ["figure", metric, value, unit, target, pass] => {
                    let pass = match *pass {
                        "true" => Some(true),
                        "false" => Some(false),
                        _ => None,
                    };
                    let unit = match *unit {
                        "s" => "s",
                        "MiB" => "MiB",
                        "% core" => "% core",
                        _ => "",
                    };
                    let value = value.parse().unwrap_or(f64::NAN);
                    report.figure("keepalive scale", metric, value, unit, target, pass);
                }
                ["note", text] => report.notes.push((*text).to_owned()),
                ["error", text] => report.errors.push((*text).to_owned()),
                _ => report.errors.push(format!("keepalive child said: {line}")),
            }
        }
        Ok::<_, BoxError>(child.wait().await?)
    };
    let status = tokio::time::timeout(limit, read)
        .await
        .map_err(|_| format!("the keepalive child took over {limit:?}"))??;
    if !status.success() {
        return Err(format!("the keepalive child failed: {status}").into());
    }
    Ok(())
}

/// The child's side: scenario 5 against the etcd at `target`, figures on stdout.
async fn keepalive_child(target: &str) -> Res<()> {
    let target: SocketAddr = target.parse()?;
    let base = if std::env::var("BENCH_KEEPALIVE_EXTERNAL").is_ok_and(|v| v == "1") {
        etcdutil::new_config(None)?
    } else {
        Config {
            endpoints: vec![target.to_string()],
            ..Config::default()
        }
    };
    let proxies = ProxyRuntime::start()?;
    let ctx = Ctx {
        p: Params::from_env(),
        base,
        target,
        proxies: &proxies,
        prefix: format!("bench-{}-keepalive", std::process::id()),
    };
    let mut report = ModeReport::new(Mode::External);
    let outcome = keepalive_scale(&ctx, &mut report).await;
    let clean = |text: &str| text.replace(['\t', '\n', '\r'], " ");
    for f in &report.figures {
        let pass = f.pass.map_or("-", |p| if p { "true" } else { "false" });
        println!(
            "{CHILD_LINE}figure\t{}\t{}\t{}\t{}\t{pass}",
            f.metric, f.value, f.unit, f.target
        );
    }
    for note in &report.notes {
        println!("{CHILD_LINE}note\t{}", clean(note));
    }
    for error in &report.errors {
        println!("{CHILD_LINE}error\t{}", clean(error));
    }
    outcome
}

/// Scenario 6: Puts with `in_flight` requests outstanding for `p.throughput_for`; ops/s.
/// Row names the plot looks for.
const SETTLED: &str = "2. handover, settled 300 ms, close()";
const RAW_RESIGN: &str = "2. raw Resign -> queued Campaign (settled)";
const ETCD_CLIENT: &str = "2. etcd-client Resign -> Campaign (settled)";
const RACE_OURS: &str = "7. process handover: elect";
const RACE_ETCDCTL: &str = "7. process handover: etcdctl elect";

/// How long a waiting candidate sits in the race before the settled handovers.
const SETTLE: Duration = Duration::from_millis(300);

/// Runs `first(i)` then `second(i)` for each rep, so that both see the same
/// machine; returns the reps of `second`, then of `first`.
async fn repeat_pair(
    n: usize,
    limit: Duration,
    mut first: impl AsyncFnMut(usize) -> Res<Duration>,
    mut second: impl AsyncFnMut(usize) -> Res<Duration>,
) -> (Reps, Reps) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..n {
        a.push(tokio::time::timeout(limit, first(i)).await);
        b.push(tokio::time::timeout(limit, second(i)).await);
    }
    let collect = |results: Vec<Result<Res<Duration>, tokio::time::error::Elapsed>>| {
        let mut reps = Reps::default();
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok(Ok(d)) => reps.samples.push(d),
                Ok(Err(e)) => reps.errors.push(format!("rep {i}: {e}")),
                Err(_) => reps
                    .errors
                    .push(format!("rep {i}: no result within {limit:?}")),
            }
        }
        reps
    };
    (collect(b), collect(a))
}

/// The same handover with etcd's raw Election RPCs and leases kept by hand,
/// sent by stock tonic (`tonic::client::Grpc` on a plain `Channel`, with
/// tonic-prost's codec): nothing of this crate's transport, stubs or codec is
/// on the way, only etcd's message types. A campaigns and wins, B's Campaign
/// waits in etcd for [`SETTLE`], then from A's Resign to B's Campaign
/// returning: the floor for a handover. `a` and `b` are separate
/// connections, as two processes would have.
async fn raw_handover(ctx: &Ctx<'_>, a: &Channel, b: &Channel, i: usize) -> Res<Duration> {
    use etcdutil::proto::etcdserverpb::{
        LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    };
    use etcdutil::proto::v3electionpb::{
        CampaignRequest, CampaignResponse, ResignRequest, ResignResponse,
    };
    const GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
    const REVOKE: &str = "/etcdserverpb.Lease/LeaseRevoke";
    const CAMPAIGN: &str = "/v3electionpb.Election/Campaign";
    const RESIGN: &str = "/v3electionpb.Election/Resign";
    let name = format!("/elections/{}/raw-{i}", ctx.prefix).into_bytes();
    let grant = async |channel: &Channel| {
        let request = LeaseGrantRequest {
            ttl: ELECTION_TTL,
            id: 0,
        };
        let granted = stock_unary::<_, LeaseGrantResponse>(channel.clone(), GRANT, request).await?;
        Ok::<i64, tonic::Status>(granted.id)
    };
    let (a_lease, b_lease) = (grant(a).await?, grant(b).await?);
    let campaign = |channel: Channel, lease: i64, value: &'static [u8]| {
        let request = CampaignRequest {
            name: name.clone().into(),
            lease,
            value: value.into(),
        };
        stock_unary::<_, CampaignResponse>(channel, CAMPAIGN, request)
    };
    let a_term = campaign(a.clone(), a_lease, b"a").await?.leader;
    let b_waits = campaign(b.clone(), b_lease, b"b");
    let b_wins = tokio::spawn(async move {
        let won = b_waits.await;
        (Instant::now(), won)
    });
    tokio::time::sleep(SETTLE).await;
    if b_wins.is_finished() {
        return Err("B's Campaign returned before A resigned".into());
    }
    let t0 = Instant::now();
    let resign = ResignRequest { leader: a_term };
    stock_unary::<_, ResignResponse>(a.clone(), RESIGN, resign).await?;
    let (at, won) = tokio::time::timeout(Duration::from_secs(10), b_wins)
        .await
        .map_err(|_| "B's Campaign did not return within 10 s of the Resign")??;
    won?;
    for (channel, id) in [(a, a_lease), (b, b_lease)] {
        let revoke = LeaseRevokeRequest { id };
        stock_unary::<_, LeaseRevokeResponse>(channel.clone(), REVOKE, revoke).await?;
    }
    Ok(at.saturating_duration_since(t0))
}

/// One unary call by stock tonic: its generic client, its prost codec.
fn stock_unary<Req, Resp>(
    channel: Channel,
    path: &'static str,
    request: Req,
) -> impl std::future::Future<Output = Result<Resp, tonic::Status>> + Send + 'static
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    async move {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let path = http::uri::PathAndQuery::from_static(path);
        let response = grpc
            .unary(tonic::Request::new(request), path, codec)
            .await?;
        Ok(response.into_inner())
    }
}

/// A stock tonic channel to the first endpoint (plaintext), without this
/// crate's transport.
async fn stock_channel(ctx: &Ctx<'_>) -> Res<Channel> {
    let endpoint = ctx
        .base
        .endpoints
        .first()
        .ok_or("no endpoint")?
        .trim_end_matches('/')
        .to_owned();
    let endpoint = if endpoint.contains("://") {
        endpoint
    } else {
        format!("http://{endpoint}")
    };
    Ok(tonic::transport::Endpoint::from_shared(endpoint)?
        .connect()
        .await?)
}

// ---------------------------------------------------------------------------
// etcd-client's own election API, in a helper process

/// The etcd-client comparator's crate, written under `target/bench/` and
/// built there on the first run (`cargo build --release`, its own lock file
/// and target dir). It is not a dev-dependency: etcd-client's build script
/// needs `protoc`, and this crate builds, is linted and is tested without
/// it (see `.ci/run`); the bench needs `protoc` on the PATH (or `PROTOC`)
/// for this comparison only, and skips it with a note otherwise.
const ETCD_CLIENT_TOML: &str = r#"[package]
name = "etcd-client-handover"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
etcd-client = "=0.21.1"
tokio = { version = "1", features = ["rt-multi-thread", "macros", "time", "sync"] }

# Not part of any workspace above it.
[workspace]
"#;

/// The helper: `etcd-client-handover ENDPOINT PREFIX TTL SETTLE_MS`; two
/// etcd-client `Client`s (two connections, as two processes would have);
/// one settled handover per line `i` on stdin, answered `ok NANOS` or
/// `err WHY` on stdout.
const ETCD_CLIENT_MAIN: &str = r#"//! Generated by etcdutil's examples/bench.rs: a settled handover through
//! etcd-client's own election API (Campaign, Resign), nothing else.
use std::io::BufRead;
use std::time::{Duration, Instant};

use etcd_client::{Client, ResignOptions};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, prefix, ttl, settle] = &args[..] else {
        return Err("usage: etcd-client-handover ENDPOINT PREFIX TTL SETTLE_MS".into());
    };
    let (ttl, settle): (i64, u64) = (ttl.parse()?, settle.parse()?);
    let a = Client::connect([endpoint.as_str()], None).await?;
    let b = Client::connect([endpoint.as_str()], None).await?;
    println!("ready");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(i) = rx.recv().await {
        let name = format!("/elections/{prefix}/etcd-client-{}", i.trim());
        match rep(&a, &b, name, ttl, Duration::from_millis(settle)).await {
            Ok(d) => println!("ok {}", d.as_nanos()),
            Err(e) => println!("err {}", e.to_string().replace('\n', " ")),
        }
    }
    Ok(())
}

/// A campaigns and wins, B's Campaign waits in etcd for `settle`, then from
/// A's Resign to B's Campaign returning.
async fn rep(a: &Client, b: &Client, name: String, ttl: i64, settle: Duration) -> Res<Duration> {
    let (mut a, mut b) = (a.clone(), b.clone());
    let a_lease = a.lease_grant(ttl, None).await?.id();
    let b_lease = b.lease_grant(ttl, None).await?.id();
    let won = a.campaign(name.clone(), "a", a_lease).await?;
    let leader = won.leader().cloned().ok_or("A's Campaign returned no leader key")?;
    let mut waiting = b.clone();
    let b_wins = tokio::spawn(async move {
        let won = waiting.campaign(name, "b", b_lease).await;
        (Instant::now(), won.map(|_| ()))
    });
    tokio::time::sleep(settle).await;
    if b_wins.is_finished() {
        return Err("B's Campaign returned before A resigned".into());
    }
    let t0 = Instant::now();
    a.resign(Some(ResignOptions::new().with_leader(leader))).await?;
    let (at, won) = tokio::time::timeout(Duration::from_secs(10), b_wins).await??;
    won?;
    a.lease_revoke(a_lease).await?;
    b.lease_revoke(b_lease).await?;
    Ok(at.saturating_duration_since(t0))
}
"#;

/// Writes and builds the etcd-client helper (cargo rebuilds it only if its
/// source changed); its path, or why not.
fn etcd_client_binary() -> Res<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench")
        .join("etcd-client-handover");
    std::fs::create_dir_all(dir.join("src"))?;
    let write_if_changed = |path: PathBuf, text: &str| -> std::io::Result<()> {
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
            std::fs::write(path, text)?;
        }
        Ok(())
    };
    write_if_changed(dir.join("Cargo.toml"), ETCD_CLIENT_TOML)?;
    write_if_changed(dir.join("src").join("main.rs"), ETCD_CLIENT_MAIN)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["build", "--release", "--quiet"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .output()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        tail.reverse();
        let hint = if stderr.contains("protoc") {
            " (etcd-client's build needs protoc: apt-get install protobuf-compiler, or set PROTOC)"
        } else {
            ""
        };
        return Err(format!("building it failed{hint}: {}", tail.join(" | ")).into());
    }
    Ok(dir
        .join("target")
        .join("release")
        .join("etcd-client-handover"))
}

/// The running helper of one pass.
struct EtcdClientHelper {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl EtcdClientHelper {
    async fn start(binary: &std::path::Path, ctx: &Ctx<'_>) -> Res<EtcdClientHelper> {
        use tokio::io::AsyncBufReadExt;
        let endpoint = ctx.base.endpoints.first().ok_or("no endpoint")?;
        let mut child = tokio::process::Command::new(binary)
            .args([
                endpoint.as_str(),
                ctx.prefix.as_str(),
                &ELECTION_TTL.to_string(),
                &SETTLE.as_millis().to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| "the etcd-client helper did not connect within 10 s")??;
        if first.as_deref() != Some("ready") {
            return Err(format!("the etcd-client helper said {first:?}").into());
        }
        Ok(EtcdClientHelper {
            child,
            stdin,
            lines,
        })
    }

    /// One settled handover through etcd-client, timed in the helper.
    async fn handover(&mut self, i: usize) -> Res<Duration> {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(format!("{i}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let line = self
            .lines
            .next_line()
            .await?
            .ok_or("the etcd-client helper exited")?;
        match line.split_once(' ') {
            Some(("ok", nanos)) => Ok(Duration::from_nanos(nanos.parse()?)),
            Some(("err", why)) => Err(format!("etcd-client: {why}").into()),
            _ => Err(format!("the etcd-client helper said {line:?}").into()),
        }
    }

    async fn stop(self) {
        let EtcdClientHelper {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
}

/// Records one rep's outcome.
fn record(
    reps: &mut Reps,
    i: usize,
    limit: Duration,
    result: Result<Res<Duration>, tokio::time::error::Elapsed>,
) {
    match result {
        Ok(Ok(d)) => reps.samples.push(d),
        Ok(Err(e)) => reps.errors.push(format!("rep {i}: {e}")),
        Err(_) => reps
            .errors
            .push(format!("rep {i}: no result within {limit:?}")),
    }
}

/// Scenario 6 against a plain tonic channel to the same etcd, without this
/// crate's transport: `p.compare_runs` pairs of runs of `p.compare_for`
/// each, ours and the raw channel's interleaved (raw first in even pairs,
/// ours first in odd ones). Returns the Put rates of every pair, `(ours, raw)`.
async fn throughput_vs_raw(
    ctx: &Ctx<'_>,
    client: &Client,
    in_flight: usize,
) -> Res<Vec<(f64, f64)>> {
    use etcdutil::proto::etcdserverpb::kv_client::KvClient;
    let raw = KvClient::new(stock_channel(ctx).await?);
    let for_each = ctx.p.compare_for;
    let mut pairs = Vec::new();
    for i in 0..ctx.p.compare_runs {
        let (ours, theirs) = if i % 2 == 0 {
            let theirs = put_rate(ctx, in_flight, for_each, || raw.clone()).await?;
            (
                put_rate(ctx, in_flight, for_each, || client.kv()).await?,
                theirs,
            )
        } else {
            let ours = put_rate(ctx, in_flight, for_each, || client.kv()).await?;
            (
                ours,
                put_rate(ctx, in_flight, for_each, || raw.clone()).await?,
            )
        };
        pairs.push((ours, theirs));
    }
    Ok(pairs)
}

/// The median of `values` (the mean of the middle two for an even count).
fn median_f64(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Scenario 6: Puts per second with `in_flight` workers, each on a client from `kv`.
async fn put_rate<T>(
    ctx: &Ctx<'_>,
    in_flight: usize,
    run_for: Duration,
    kv: impl Fn() -> etcdutil::proto::etcdserverpb::kv_client::KvClient<T>,
) -> Res<f64>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Send + 'static,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    T::Future: Send,
{
    let start = Instant::now();
    let deadline = start + run_for;
    let mut workers = JoinSet::new();
    for w in 0..in_flight {
        let mut kv = kv();
        let key = ctx.key(&format!("throughput/{in_flight}/{w}"));
        workers.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                kv.put(put(&key)).await?;
                n += 1;
            }
            Ok::<u64, tonic::Status>(n)
        });
    }
    let mut total = 0;
    while let Some(done) = workers.join_next().await {
        total += done??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// The `elect` example built next to this program (`cargo build` if missing).
fn elect_binary() -> Res<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("elect");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--release", "--example", "elect"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()?;
        if !status.success() || !path.exists() {
            return Err(format!("could not build {}", path.display()).into());
        }
    }
    Ok(path)
}

/// A child process and its stdout lines, each with the time it was read.
struct Child {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<(Instant, String)>,
}

impl Child {
    fn spawn(command: &mut tokio::process::Command) -> Res<Child> {
        use std::process::Stdio;
        use tokio::io::AsyncBufReadExt;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        Ok(Child { child, lines })
    }

    /// Waits for a line that matches; returns when it was read.
    async fn line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> Res<Instant> {
        let wait = async {
            while let Some((at, line)) = self.lines.recv().await {
                if matches(&line) {
                    return Some(at);
                }
            }
            None
        };
        match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(Some(at)) => Ok(at),
            _ => Err(format!("no {what} within 10 s").into()),
        }
    }

    fn interrupt(&self) -> Res<()> {
        let pid = self.child.id().ok_or("exited")?;
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("kill -INT {pid} failed").into());
        }
        Ok(())
    }

    async fn stop(mut self) {
        let _ = self.interrupt();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Scenario 7: a handover between processes, `elect` against Go's
/// `etcdctl elect`, interleaved rep by rep. Two candidates of one kind, the
/// second settled in the race for [`SETTLE`]; then from SIGINT to the leader
/// (both resign on it) to the second's sign that it leads: `elect`'s
/// `"is_leader":true` line, `etcdctl`'s key line.
async fn process_race(ctx: &Ctx<'_>, report: &mut ModeReport) -> Res<()> {
    let elect = elect_binary()?;
    let endpoint = ctx.base.endpoints.join(",");
    let ttl = ELECTION_TTL.to_string();
    let ours = async |i: usize| -> Res<Duration> {
        let name = format!("{}/race-elect-{i}", ctx.prefix);
        let spawn = |candidate: &str| {
            Child::spawn(
                tokio::process::Command::new(&elect)
                    .args([name.as_str(), candidate, "--ttl", ttl.as_str()])
                    .env("ETCD3_ENDPOINT", &endpoint),
            )
        };
        let mut a = spawn("a")?;
        a.line("a's leadership", |l| l.contains("\"is_leader\":true"))
            .await?;
        let mut b = spawn("b")?;
        b.line("b's first outcome", |l| l.contains("\"leader_data\":\"a\""))
            .await?;
        tokio::time::sleep(SETTLE).await;
        let t0 = Instant::now();
        a.interrupt()?;
        let at = b
            .line("b's leadership", |l| l.contains("\"is_leader\":true"))
            .await?;
        a.stop().await;
        b.stop().await;
        Ok(at.saturating_duration_since(t0))
    };
    let etcdctl = async |i: usize| -> Res<Duration> {
        let name = format!("/elections/{}/race-etcdctl-{i}", ctx.prefix);
        let spawn = |candidate: &str| {
            Child::spawn(
                tokio::process::Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args([
                        "--endpoints",
                        endpoint.as_str(),
                        "elect",
                        name.as_str(),
                        candidate,
                    ]),
            )
        };
        let mut a = spawn("a")?;
        a.line("etcdctl a's key line", |l| l.starts_with(&name))
            .await?;
        // etcdctl prints nothing while it waits: let it enter, then settle.
        let mut b = spawn("b")?;
        tokio::time::sleep(SETTLE).await;
        let t0 = Instant::now();
        a.interrupt()?;
        let at = b
            .line("etcdctl b's key line", |l| l.starts_with(&name))
            .await?;
        a.stop().await;
        b.stop().await;
        Ok(at.saturating_duration_since(t0))
    };
    let (ours, theirs) = repeat_pair(ctx.p.race_reps, REP_TIMEOUT, etcdctl, ours).await;
    report.compared(
        (RACE_OURS, ours),
        (RACE_ETCDCTL, theirs),
        "process handover",
        "elect median, x etcdctl elect",
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// One pass

async fn run_mode(
    mode: Mode,
    p: Params,
    proxies: &ProxyRuntime,
    etcd_client: Result<&std::path::Path, &str>,
    run_id: &str,
) -> ModeReport {
    let started = Instant::now();
    let mut report = ModeReport::new(mode);
    if let Err(e) = run_mode_in(mode, p, proxies, etcd_client, run_id, &mut report).await {
        report.errors.push(format!("pass aborted: {e}"));
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

fn step(started: Instant, what: &str) {
    println!("  [{:6.1} s] {what}", started.elapsed().as_secs_f64());
}

async fn run_mode_in(
    mode: Mode,
    p: Params,
    proxies: &ProxyRuntime,
    etcd_client: Result<&std::path::Path, &str>,
    run_id: &str,
    report: &mut ModeReport,
) -> Res<()> {
    let started = Instant::now();
    // Keep the local etcd (if any) alive for the whole pass.
    let (_etcd, base, target) = match mode {
        Mode::Local { no_fsync } => {
            let etcd = Etcd::builder().unsafe_no_fsync(no_fsync).start().await?;
            let (base, target) = (etcd.config(), etcd.client_addr());
            (Some(etcd), base, target)
        }
        Mode::External => {
            let base = etcdutil::new_config(None)?;
            let first = base
                .endpoints
                .first()
                .ok_or("ETCD3_ENDPOINT names no endpoint")?;
            let target = resolve(first).await?;
            (None, base, target)
        }
    };
    report.endpoint = base.endpoints.join(",");
    let ctx = Ctx {
        p,
        base,
        target,
        proxies,
        prefix: format!("bench-{run_id}-{}", mode.label()),
    };
    let client = Client::connect(ctx.base.clone()).await?;
    let status = client
        .maintenance()
        .status(StatusRequest::default())
        .await?
        .into_inner();
    report.etcd_version = status.version;
    step(
        started,
        &format!(
            "etcd {} at {} ({})",
            report.etcd_version,
            report.endpoint,
            mode.description()
        ),
    );

    step(
        started,
        &format!("1. Put baseline: {} sequential puts", p.puts),
    );
    let reps = put_baseline(&ctx, &client, "baseline").await;
    report.baseline = stats(&reps.samples);
    report.latency("1. Put baseline", reps, Goal::Info);

    step(
        started,
        &format!("4. initial election: {} reps", p.initial_reps),
    );
    let reps = repeat(p.initial_reps, REP_TIMEOUT, async |i| {
        // Untimed: start each rep at another point of etcd's 100 ms
        // watcher-sync cycle (see the module docs), as independent callers
        // would, instead of in lockstep with it.
        tokio::time::sleep(Duration::from_millis((i as u64 * 37) % 100)).await;
        initial(&ctx, &client, i, Engine::ClientSide).await
    })
    .await;
    let own = stats(&reps.samples);
    report.latency("4. initial election", reps, Goal::TimesBaseline(2.5));

    step(
        started,
        &format!(
            "4. initial election on an existing session: {} reps",
            p.initial_reps
        ),
    );
    let session = Session::new(
        &client,
        SessionConfig {
            ttl: ELECTION_TTL,
            ..Default::default()
        },
    )?;
    wait_lease(&session).await?;
    let reps = repeat(p.initial_reps, REP_TIMEOUT, async |i| {
        tokio::time::sleep(Duration::from_millis((i as u64 * 37) % 100)).await;
        initial_on(&ctx, &session, i).await
    })
    .await;
    report.latency(
        "4. initial election on an existing session",
        reps,
        Goal::TimesBaseline(1.5),
    );
    session.close().await;

    step(
        started,
        &format!(
            "4. initial election, server-side engine: {} reps",
            p.initial_reps
        ),
    );
    let reps = repeat(p.initial_reps, REP_TIMEOUT, async |i| {
        tokio::time::sleep(Duration::from_millis((i as u64 * 37) % 100)).await;
        initial(&ctx, &client, i, Engine::ServerSide).await
    })
    .await;
    if let (Some(own), Some(server)) = (own, stats(&reps.samples)) {
        report.figure(
            "4. initial election",
            "server-side / default engine, median",
            ratio(server.median, own.median),
            "x",
            "(information)",
            None,
        );
    }
    report.latency("4. initial election, server-side engine", reps, Goal::Info);

    let a_client = Client::connect(ctx.base.clone()).await?;
    let b_client = Client::connect(ctx.base.clone()).await?;
    let mut concede_default = None;
    for (how, label) in [
        (Handover::Close, "2. handover by close()"),
        (Handover::Concede, "2. handover by concede()"),
    ] {
        step(started, &format!("{label}: {} reps", p.handover_reps));
        let reps = repeat(p.handover_reps, REP_TIMEOUT, async |i| {
            handover(&ctx, &a_client, &b_client, how, Duration::ZERO, i).await
        })
        .await;
        if how == Handover::Concede {
            concede_default = stats(&reps.samples);
        }
        report.latency(label, reps, Goal::MedianAndP99(3.0, 5.0));
    }
    let label = "2. handover by concede(), server-side engine";
    step(started, &format!("{label}: {} reps", p.handover_reps));
    let reps = repeat(p.handover_reps, REP_TIMEOUT, async |i| {
        let (how, settle) = (Handover::Concede, Duration::ZERO);
        handover_with(
            &ctx,
            &a_client,
            &b_client,
            how,
            settle,
            i,
            Engine::ServerSide,
        )
        .await
    })
    .await;
    if let (Some(own), Some(server)) = (concede_default, stats(&reps.samples)) {
        report.figure(
            "2. handover by concede()",
            "server-side / default engine, median",
            ratio(server.median, own.median),
            "x",
            "(information)",
            None,
        );
    }
    report.latency(label, reps, Goal::Info);

    let mut etcd_client = match etcd_client {
        Ok(binary) => match EtcdClientHelper::start(binary, &ctx).await {
            Ok(helper) => Some(helper),
            Err(e) => {
                let note = format!("etcd-client comparator not run: {e}");
                report.notes.push(note);
                None
            }
        },
        Err(e) => {
            let note = format!("etcd-client comparator not run: {e}");
            report.notes.push(note);
            None
        }
    };
    step(
        started,
        &format!(
            "2. settled handover by close(), raw Resign -> queued Campaign (stock tonic) and etcd-client's Resign -> Campaign, interleaved: {} reps each",
            p.settled_reps
        ),
    );
    let (a_stock, b_stock) = (stock_channel(&ctx).await?, stock_channel(&ctx).await?);
    // Ours, raw, etcd-client: each rep runs the three in an order rotated
    // by one per rep, so that none always comes first.
    let mut reps: [Reps; 3] = Default::default();
    for i in 0..p.settled_reps {
        for k in 0..3 {
            let which = (i + k) % 3;
            let result = match which {
                0 => {
                    let rep = handover(&ctx, &a_client, &b_client, Handover::Close, SETTLE, i);
                    tokio::time::timeout(REP_TIMEOUT, rep).await
                }
                1 => {
                    let rep = raw_handover(&ctx, &a_stock, &b_stock, i);
                    tokio::time::timeout(REP_TIMEOUT, rep).await
                }
                _ => match etcd_client.as_mut() {
                    Some(helper) => tokio::time::timeout(REP_TIMEOUT, helper.handover(i)).await,
                    None => continue,
                },
            };
            record(&mut reps[which], i, REP_TIMEOUT, result);
        }
    }
    let [ours, raw, theirs] = reps;
    let ours_median = stats(&ours.samples).map(|s| s.median);
    report.compared(
        (SETTLED, ours),
        (RAW_RESIGN, raw),
        "settled handover",
        "median, x raw Resign -> Campaign",
    );
    if let Some(helper) = etcd_client {
        helper.stop().await;
        let theirs_median = stats(&theirs.samples).map(|s| s.median);
        report.latency(ETCD_CLIENT, theirs, Goal::Info);
        if let (Some(ours), Some(theirs)) = (ours_median, theirs_median) {
            let x = ratio(ours, theirs);
            report.figure(
                "settled handover",
                "median, x etcd-client",
                x,
                "x",
                "<= 1.0",
                Some(x <= 1.0),
            );
        }
    }
    drop((a_client, b_client));

    step(
        started,
        &format!(
            "7. process handover, elect vs etcdctl elect, interleaved: {} reps each",
            p.race_reps
        ),
    );
    match process_race(&ctx, report).await {
        Ok(()) => {}
        Err(e) => report.errors.push(format!("7. process handover: {e}")),
    }

    let ttl = Duration::from_secs(p.failover_ttl as u64);
    step(
        started,
        &format!("3. crash failover: {} reps, TTL {ttl:?}", p.failover_reps),
    );
    let limit = ttl * 2 + Duration::from_secs(20);
    let reps = repeat(p.failover_reps, limit, async |i| {
        failover(&ctx, &client, i).await
    })
    .await;
    let label = format!("3. crash failover (TTL {} s)", p.failover_ttl);
    report.latency(&label, reps, Goal::AtMost(ttl + Duration::from_millis(600)));

    step(started, "1. Put baseline, re-check");
    let reps = put_baseline(&ctx, &client, "baseline").await;
    report.latency("1. Put baseline, re-check", reps, Goal::Info);

    step(
        started,
        &format!(
            "5. keepalive scale: {} sessions, TTL {} s, hold {:?}",
            p.sessions, p.session_ttl, p.hold
        ),
    );
    if let Err(e) = keepalive_in_child(&ctx, mode, report).await {
        report.errors.push(format!("5. keepalive scale: {e}"));
        report.figure(
            "keepalive scale",
            "scenario failed",
            f64::NAN,
            "",
            "completes",
            Some(false),
        );
    }

    for in_flight in p.in_flight {
        step(
            started,
            &format!(
                "6. throughput: {in_flight} in flight for {:?}",
                p.throughput_for
            ),
        );
        match put_rate(&ctx, in_flight, p.throughput_for, || client.kv()).await {
            Ok(ops) => report.figure(
                "raw KV throughput",
                &format!("Puts, {in_flight} in flight"),
                ops,
                "ops/s",
                "-",
                None,
            ),
            Err(e) => {
                report
                    .errors
                    .push(format!("6. throughput {in_flight} in flight: {e}"));
                report.figure(
                    "raw KV throughput",
                    &format!("Puts, {in_flight} in flight"),
                    f64::NAN,
                    "ops/s",
                    "completes",
                    Some(false),
                );
            }
        }
    }

    let in_flight = *p.in_flight.last().expect("levels");
    step(
        started,
        &format!(
            "6. throughput, ours vs a raw tonic channel, {in_flight} in flight, {} interleaved pairs of {:?}",
            p.compare_runs, p.compare_for
        ),
    );
    match throughput_vs_raw(&ctx, &client, in_flight).await {
        Ok(pairs) => {
            let ours: Vec<f64> = pairs.iter().map(|p| p.0).collect();
            let raw: Vec<f64> = pairs.iter().map(|p| p.1).collect();
            let ratios: Vec<f64> = pairs.iter().map(|p| p.0 / p.1).collect();
            let runs = pairs.len();
            for (what, rates) in [("ours", &ours), ("raw tonic channel", &raw)] {
                report.figure(
                    "raw KV throughput",
                    &format!("{in_flight} in flight, {what}, median of {runs}"),
                    median_f64(rates),
                    "ops/s",
                    "-",
                    None,
                );
            }
            let x = median_f64(&ratios);
            report.figure(
                "raw KV throughput",
                &format!("{in_flight} in flight: ours / raw, median of {runs} pairs"),
                x,
                "x",
                ">= 1.0",
                Some(x >= 1.0),
            );
            report.notes.push(format!(
                "6. {in_flight} in flight, ours / raw tonic channel per interleaved pair: {}",
                ratios
                    .iter()
                    .map(|x| format!("{x:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Err(e) => report.errors.push(format!("6. throughput vs raw: {e}")),
    }

    // Leave nothing behind (matters for an external etcd).
    let prefix = ctx.key("");
    let mut range_end = prefix.clone();
    if let Some(last) = range_end.last_mut() {
        *last += 1;
    }
    let _ = client
        .kv()
        .delete_range(DeleteRangeRequest {
            key: prefix.into(),
            range_end: range_end.into(),
            ..Default::default()
        })
        .await;
    step(started, "done");
    Ok(())
}

// ---------------------------------------------------------------------------
// Output

/// The handover and crash-failover latency distributions of every pass, as
/// CDFs on a log time axis, one panel per pass, with the Put round trip
/// (median) as a reference line; an SVG at `path`.
fn plot(reports: &[ModeReport], path: &std::path::Path) -> Res<()> {
    use plotters::prelude::*;
    let series = [
        ("2. handover by close()", "handover by close(), just joined"),
        (
            "2. handover by concede()",
            "handover by concede(), just joined",
        ),
        (SETTLED, "handover by close(), settled"),
        (RAW_RESIGN, "raw Resign -> queued Campaign, settled"),
        (ETCD_CLIENT, "etcd-client Resign -> Campaign, settled"),
        (RACE_OURS, "process: elect, SIGINT"),
        (RACE_ETCDCTL, "process: etcdctl elect, SIGINT"),
        ("3. crash failover", "crash failover, TTL 2 s"),
    ];
    let root = SVGBackend::new(path, (640 * reports.len().max(1) as u32, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    for (panel, report) in root
        .split_evenly((1, reports.len().max(1)))
        .iter()
        .zip(reports)
    {
        let curves: Vec<(&str, Vec<f64>)> = series
            .iter()
            .filter_map(|(row, label)| {
                let row = report
                    .latencies
                    .iter()
                    .find(|r| r.scenario.starts_with(row))?;
                let mut ms: Vec<f64> = row.samples.iter().map(|d| ms(*d)).collect();
                ms.sort_by(f64::total_cmp);
                (!ms.is_empty()).then_some((*label, ms))
            })
            .collect();
        let put = report.baseline.map(|b| ms(b.median));
        let all = curves
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .chain(put);
        let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo > hi {
            continue;
        }
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{}: etcd {}", report.mode.label(), report.etcd_version),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("latency, ms (log scale)")
            .y_desc("fraction of reps at or below")
            .draw()?;
        for (i, (label, ms)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let n = ms.len() as f64;
            let steps = ms
                .iter()
                .enumerate()
                .flat_map(|(k, v)| [(*v, k as f64 / n), (*v, (k + 1) as f64 / n)]);
            chart
                .draw_series(LineSeries::new(steps, color.stroke_width(2)))?
                .label(*label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        if let Some(put) = put {
            chart
                .draw_series(LineSeries::new(
                    [(put, 0.0), (put, 1.0)],
                    BLACK.stroke_width(1),
                ))?
                .label(format!("Put round trip, median {put:.2} ms"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleMiddle)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "-",
    }
}

fn fmt_ms(d: Duration) -> String {
    let v = ms(d);
    if v < 10.0 {
        format!("{v:.3}")
    } else if v < 100.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v == v.trunc() || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        f64::NAN
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

fn print_tables(reports: &[ModeReport]) {
    println!();
    println!(
        "Latencies in ms. base = the Put baseline (scenario 1) of the same etcd in this run; x = ratio to it."
    );
    let header = format!(
        "{:<9} {:<43} {:>5} {:>4} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>7}  {:<21} {}",
        "mode",
        "scenario",
        "n",
        "fail",
        "median",
        "p99",
        "max",
        "base med",
        "base p99",
        "x med",
        "x p99",
        "x max",
        "target",
        "result"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for r in reports {
        for row in &r.latencies {
            let (median, p99, max, xm, xp, xx) = match (row.stats, r.baseline) {
                (Some(s), Some(b)) => (
                    fmt_ms(s.median),
                    fmt_ms(s.p99),
                    fmt_ms(s.max),
                    format!("{:.2}", ratio(s.median, b.median)),
                    format!("{:.2}", ratio(s.p99, b.p99)),
                    format!("{:.2}", ratio(s.max, b.max)),
                ),
                (Some(s), None) => (
                    fmt_ms(s.median),
                    fmt_ms(s.p99),
                    fmt_ms(s.max),
                    "n/a".into(),
                    "n/a".into(),
                    "n/a".into(),
                ),
                _ => (
                    "n/a".into(),
                    "n/a".into(),
                    "n/a".into(),
                    "n/a".into(),
                    "n/a".into(),
                    "n/a".into(),
                ),
            };
            let (bm, bp) = r.baseline.map_or(("n/a".into(), "n/a".into()), |b| {
                (fmt_ms(b.median), fmt_ms(b.p99))
            });
            println!(
                "{:<9} {:<43} {:>5} {:>4} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>7}  {:<21} {}",
                r.mode.label(),
                row.scenario,
                row.stats.map_or(0, |s| s.n),
                row.failures,
                median,
                p99,
                max,
                bm,
                bp,
                xm,
                xp,
                xx,
                row.goal.describe(),
                verdict(row.verdict(r.baseline)),
            );
        }
    }
    println!();
    let header = format!(
        "{:<9} {:<18} {:<46} {:>12} {:<7} {:<11} {}",
        "mode", "scenario", "figure", "value", "unit", "target", "result"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for r in reports {
        for f in &r.figures {
            println!(
                "{:<9} {:<18} {:<46} {:>12} {:<7} {:<11} {}",
                r.mode.label(),
                f.scenario,
                f.metric,
                fmt_value(f.value),
                f.unit,
                f.target,
                verdict(f.pass)
            );
        }
    }
    let notes: Vec<_> = reports
        .iter()
        .flat_map(|r| r.notes.iter().map(move |n| (r.mode.label(), n)))
        .collect();
    if !notes.is_empty() {
        println!();
        println!("Notes:");
        for (mode, note) in notes {
            println!("  {mode}: {note}");
        }
    }
    let errors: Vec<_> = reports
        .iter()
        .flat_map(|r| r.errors.iter().map(move |e| (r.mode.label(), e)))
        .collect();
    if !errors.is_empty() {
        println!();
        println!("Errors:");
        for (mode, e) in errors {
            println!("  {mode}: {e}");
        }
    }
}

/// A number rounded to six decimals (sub-microsecond in ms); null if not finite.
fn json_num(v: f64) -> Value {
    json!((v * 1e6).round() / 1e6)
}

fn json_stats(s: Option<Stats>) -> Value {
    match s {
        Some(s) => json!({
            "n": s.n,
            "median_ms": json_num(ms(s.median)),
            "p99_ms": json_num(ms(s.p99)),
            "max_ms": json_num(ms(s.max)),
        }),
        None => Value::Null,
    }
}

fn latency_json(row: &LatencyRow, baseline: Option<Stats>) -> Value {
    let ratios = match (row.stats, baseline) {
        (Some(s), Some(b)) => json!({
            "median": json_num(ratio(s.median, b.median)),
            "p99": json_num(ratio(s.p99, b.p99)),
            "max": json_num(ratio(s.max, b.max)),
        }),
        _ => Value::Null,
    };
    let (kind, limit) = match row.goal {
        Goal::Info => ("none", Value::Null),
        Goal::TimesBaseline(k) => ("median_times_baseline_median", json_num(k)),
        Goal::AtMost(d) => ("median_ms_at_most", json_num(ms(d))),
        Goal::MedianAndP99(m, p) => (
            "median_and_p99_times_baseline_median",
            json!([json_num(m), json_num(p)]),
        ),
    };
    json!({
        "scenario": row.scenario,
        "attempts": row.attempts,
        "failures": row.failures,
        "stats": json_stats(row.stats),
        "baseline": json_stats(baseline),
        "ratio_to_baseline": ratios,
        "target": {"text": row.goal.describe(), "kind": kind, "limit": limit},
        "pass": row.verdict(baseline),
    })
}

fn figure_json(f: &FigureRow) -> Value {
    json!({
        "scenario": f.scenario,
        "figure": f.metric,
        "value": json_num(f.value),
        "unit": f.unit,
        "target": f.target,
        "pass": f.pass,
    })
}

fn run_json(r: &ModeReport) -> Value {
    let latencies: Vec<Value> = r
        .latencies
        .iter()
        .map(|row| latency_json(row, r.baseline))
        .collect();
    let figures: Vec<Value> = r.figures.iter().map(figure_json).collect();
    json!({
        "mode": r.mode.label(),
        "description": r.mode.description(),
        "unsafe_no_fsync": r.mode.no_fsync(),
        "endpoint": r.endpoint,
        "etcd_version": r.etcd_version,
        "seconds": json_num(r.seconds),
        "baseline_put": json_stats(r.baseline),
        "latencies": latencies,
        "figures": figures,
        "notes": r.notes,
        "errors": r.errors,
    })
}

fn to_json(p: Params, reports: &[ModeReport], total: f64, started_unix: u64) -> String {
    let runs: Vec<Value> = reports.iter().map(run_json).collect();
    let doc = json!({
        "bench": "etcdutil examples/bench.rs",
        "started_unix": started_unix,
        "quick": p.quick,
        "total_seconds": json_num(total),
        "params": {
            "puts": p.puts,
            "warmup_puts": p.warmup,
            "handover_reps": p.handover_reps,
            "failover_reps": p.failover_reps,
            "failover_ttl_s": p.failover_ttl,
            "initial_election_reps": p.initial_reps,
            "sessions": p.sessions,
            "session_ttl_s": p.session_ttl,
            "hold_s": json_num(p.hold.as_secs_f64()),
            "throughput_s": json_num(p.throughput_for.as_secs_f64()),
            "in_flight": p.in_flight,
            "compare_runs": p.compare_runs,
            "compare_s": json_num(p.compare_for.as_secs_f64()),
        },
        "runs": runs,
    });
    let mut text = serde_json::to_string_pretty(&doc).expect("a JSON value always serializes");
    text.push('\n');
    text
}

fn json_path() -> PathBuf {
    match std::env::var_os("BENCH_JSON") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("bench.json"),
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    if let Ok(target) = std::env::var(CHILD_ENV) {
        return keepalive_child(&target).await;
    }
    let run_started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let p = Params::from_env();
    let external = std::env::var(etcdutil::ETCD3_ENDPOINT).is_ok_and(|v| !v.trim().is_empty());
    let modes = if external {
        vec![Mode::External]
    } else {
        vec![
            Mode::Local { no_fsync: true },
            Mode::Local { no_fsync: false },
        ]
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "etcdutil bench, {} run ({}), {cores} cores, load average {}",
        if p.quick { "QUICK" } else { "full" },
        if p.quick {
            "BENCH_QUICK is set"
        } else {
            "set BENCH_QUICK=1 for a smoke run"
        },
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "reps: {} puts, {} initial elections, {} handovers each way, {} crash failovers, {} sessions held {:?}, throughput {:?} per level",
        p.puts,
        p.initial_reps,
        p.handover_reps,
        p.failover_reps,
        p.sessions,
        p.hold,
        p.throughput_for
    );
    let proxies = ProxyRuntime::start()?;
    let etcd_client = if std::env::var("BENCH_ETCD_CLIENT").is_ok_and(|v| v == "0") {
        Err("BENCH_ETCD_CLIENT=0".to_owned())
    } else {
        println!("building the etcd-client comparator (target/bench/etcd-client-handover) ...");
        let built = Instant::now();
        let binary = etcd_client_binary().map_err(|e| e.to_string());
        match &binary {
            Ok(_) => println!("  built in {:.1} s", built.elapsed().as_secs_f64()),
            Err(e) => println!("  not available: {e}"),
        }
        binary
    };
    let run_id = format!("{}-{started_unix}", std::process::id());
    let mut reports = Vec::new();
    for mode in modes {
        println!();
        println!("== mode {}: {}", mode.label(), mode.description());
        let etcd_client = etcd_client.as_deref().map_err(String::as_str);
        reports.push(run_mode(mode, p, &proxies, etcd_client, &run_id).await);
    }
    let total = run_started.elapsed().as_secs_f64();
    print_tables(&reports);

    let path = json_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, to_json(p, &reports, total, started_unix))?;
    let svg = path.with_file_name("bench").join("latency.svg");
    std::fs::create_dir_all(svg.parent().expect("a dir"))?;
    match plot(&reports, &svg) {
        Ok(()) => println!("latency distributions: {}", svg.display()),
        Err(e) => println!("latency plot failed: {e}"),
    }
    println!(
        "the scale section (10,000 elections, a fleet against a cluster): cargo run --release --example scale"
    );
    println!();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "wrote {}; whole run {total:.1} s; load average now {}",
        path.display(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
