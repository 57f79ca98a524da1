//! Many elections on one client: what they cost this process and etcd (the
//! benchmark's scale section; the project's issue 16).
//!
//! ```sh
//! cargo run --release --example scale                     # everything: about 4 minutes
//! SCALE_QUICK=1 cargo run --release --example scale       # smoke run: small counts, 3 s holds
//! SCALE_N=10000 SCALE_FORM=shared cargo run --release --example scale   # one row
//! SCALE_PARTS=rows,cluster,handover cargo run --release --example scale # pick parts
//! ```
//!
//! Every etcd here is started by this program (`etcdutil::testing`), with
//! fsync (etcd's default). Each measurement runs in a child process of its
//! own (this program again, with `SCALE_CHILD` or `SCALE_WORKER` set), so
//! that its memory and CPU figures are its own.
//!
//! # 1. Rows: N elections on one client (`rows`)
//!
//! For each N in 1,000, 5,000 and 10,000 (`SCALE_N` picks one) and each form
//! (`SCALE_FORM=shared|own` picks one), a fresh single-member etcd and one
//! `Client`, then N elections, each alone in its own election (so each
//! leads):
//!
//! - `shared`: all on one `Session` (TTL 10 s), `new_election_on_async`;
//! - `own`: the default way, `new_election_async`, a session each (TTL 10 s).
//!
//! Per row: the time until all lead; this process's RSS (max) and CPU over a
//! 20 s idle hold (from `/proc/self`); etcd's RSS added since before the
//! elections and its CPU over the same hold (from `/proc/<etcd pid>`); the
//! time `Client::close()` takes; the keys and leases left in etcd after it
//! (must be 0); and the heap still allocated per election at the end of the
//! hold (counted by this program's allocator, so it shows what RSS hides
//! behind freed pages the allocator keeps). CPU is in % of one core.
//!
//! Then PASS/MISS against issue 16's targets: the 10,000 `shared` row
//! against its own targets, the 10,000 `own` row against Go `concurrency`'s
//! "a Session each" row measured on this machine (5.34 s, 325 MiB, 4.95 %,
//! +67 MiB, 26.7 %, 3.81 s), and the own / shared ratio of each column.
//! The rows are drawn as `target/bench/scale.svg` (client RSS and etcd CPU
//! against N, both forms, Go's two 10,000 rows as points).
//!
//! # 2. A fleet against a cluster (`cluster`)
//!
//! A 3-member etcd cluster, then 10 processes (`SCALE_CLUSTER_PROCS`) with
//! 1,000 elections each (`SCALE_CLUSTER_N`), each process one `Client` on
//! all three endpoints, one row per form. All lead after: from spawning the
//! processes to the last of them reporting that all its elections lead.
//! Client RSS and CPU: **summed** over the processes (the max of one process
//! is given too). etcd RSS added and CPU: summed over the 3 members. Close
//! all: the slowest process's `Client::close()`, all closing at once.
//!
//! # 3. A handover among 10,000 elections (`handover`)
//!
//! One etcd, one client A with a shared `Session`, a second client B. Per
//! rep, on a fresh election name: A enters on the session and leads, B
//! enters (its own session) and sits in the race for 300 ms, then from
//! `A.close()` to B's observer seeing `is_leader`. 50 reps
//! (`SCALE_HANDOVER_REPS`) among 9,999 idle elections on A's session, and as
//! many with no other election (half before the 9,999 exist, half after
//! they are closed, so that drift cancels). Target: median <= 1.5x the one
//! without.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcdutil::proto::etcdserverpb::{LeaseLeasesRequest, RangeRequest};
use etcdutil::testing::{Cluster, Etcd};
use etcdutil::{
    Client, Config, Election, ElectionConfig, ElectionEvent, EventObserver, Session, SessionConfig,
    new_election, new_election_async, new_election_on, new_election_on_async,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Counts the bytes this process has allocated and not freed: the live heap,
/// which RSS hides behind the allocator's retained pages.
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, std::sync::atomic::Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_heap() -> usize {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const TTL: i64 = 10;
/// A row's child: `n,form`.
const CHILD: &str = "SCALE_CHILD";
/// A cluster worker: `index,n,form,endpoint;endpoint;...`.
const WORKER: &str = "SCALE_WORKER";
/// The handover child: `reps,others`.
const HANDOVER: &str = "SCALE_HANDOVER";
/// How children tell the parent their figures: lines starting with this.
const LINE: &str = "@scale\t";
/// How long a waiting candidate sits in the race before a handover.
const SETTLE: Duration = Duration::from_millis(300);

/// Issue 16's targets for 10,000 elections on one shared session.
const TARGET_SHARED: Targets = Targets {
    all_leading: 2.0,
    client_rss: 64.0,
    client_cpu: 0.1,
    etcd_rss_added: 32.0,
    etcd_cpu: 1.0,
    close_all: 1.0,
};
/// Go `concurrency`, 10,000 elections, a Session each (issue 16, same machine).
const GO_OWN: Targets = Targets {
    all_leading: 5.34,
    client_rss: 325.0,
    client_cpu: 4.95,
    etcd_rss_added: 67.0,
    etcd_cpu: 26.7,
    close_all: 3.81,
};
/// Go `concurrency`, 10,000 elections, one shared Session (for the plot).
const GO_SHARED: Targets = Targets {
    all_leading: 3.08,
    client_rss: 234.0,
    client_cpu: 0.05,
    etcd_rss_added: 31.0,
    etcd_cpu: 0.55,
    close_all: 2.65,
};

/// Upper bounds per column (or Go's figures).
struct Targets {
    all_leading: f64,
    client_rss: f64,
    client_cpu: f64,
    etcd_rss_added: f64,
    etcd_cpu: f64,
    close_all: f64,
}

/// What to do: the full run or `SCALE_QUICK=1`, and the `SCALE_*` overrides.
#[derive(Clone, Debug)]
struct Params {
    counts: Vec<usize>,
    forms: Vec<&'static str>,
    hold: Duration,
    parts: Vec<String>,
    cluster_procs: usize,
    cluster_n: usize,
    handover_reps: usize,
    handover_others: usize,
}

fn env_usize(name: &str) -> Res<Option<usize>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().replace('_', "").parse()?)),
        _ => Ok(None),
    }
}

impl Params {
    fn from_env() -> Res<Params> {
        let quick = std::env::var("SCALE_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let counts = match env_usize("SCALE_N")? {
            Some(n) => vec![n],
            None if quick => vec![200, 1_000],
            None => vec![1_000, 5_000, 10_000],
        };
        let forms = match std::env::var("SCALE_FORM").as_deref() {
            Ok("shared") => vec!["shared"],
            Ok("own") => vec!["own"],
            _ => vec!["shared", "own"],
        };
        let hold = env_usize("SCALE_HOLD")?.unwrap_or(if quick { 3 } else { 20 });
        let parts = std::env::var("SCALE_PARTS")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "rows,cluster,handover".into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect();
        Ok(Params {
            counts,
            forms,
            hold: Duration::from_secs(hold as u64),
            parts,
            cluster_procs: env_usize("SCALE_CLUSTER_PROCS")?.unwrap_or(if quick { 3 } else { 10 }),
            cluster_n: env_usize("SCALE_CLUSTER_N")?.unwrap_or(if quick { 100 } else { 1_000 }),
            handover_reps: env_usize("SCALE_HANDOVER_REPS")?.unwrap_or(if quick { 6 } else { 50 }),
            handover_others: env_usize("SCALE_HANDOVER_OTHERS")?.unwrap_or(if quick {
                999
            } else {
                9_999
            }),
        })
    }

    fn wants(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

// ---------------------------------------------------------------------------
// /proc

/// Resident memory of process `pid` (or "self"), in MiB.
fn rss_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (user + system) of process `pid` (or "self") so far.
fn cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ")".
    let hz = 100.0; // USER_HZ on Linux
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / hz)
}

fn percent(cpu: Duration, over: Duration) -> f64 {
    100.0 * cpu.as_secs_f64() / over.as_secs_f64()
}

/// Summed CPU time and RSS of several processes (etcd members).
fn snapshot(pids: &[String]) -> (Duration, f64) {
    pids.iter().fold((Duration::ZERO, 0.0), |(c, r), pid| {
        (c + cpu(pid), r + rss_mib(pid))
    })
}

// ---------------------------------------------------------------------------
// One client's elections

/// N elections on one client, all leading.
struct Fleet {
    client: Client,
    /// Kept: dropping the last handle of a session closes it.
    _session: Option<Session>,
    elections: Vec<Election>,
    /// From before the first election to all leading.
    all_leading: Duration,
    heap_before: usize,
}

async fn fleet(config: Config, n: usize, shared: bool, prefix: &str) -> Res<Fleet> {
    let client = Client::connect(config).await?;
    let heap_before = live_heap();
    let started = Instant::now();
    let session = if shared {
        Some(Session::new(
            &client,
            SessionConfig {
                ttl: TTL,
                ..Default::default()
            },
        )?)
    } else {
        None
    };
    let mut elections: Vec<Election> = Vec::with_capacity(n);
    for i in 0..n {
        let config = ElectionConfig {
            election: format!("{prefix}/{i}"),
            candidate: "scale".into(),
            ttl: TTL,
            ..Default::default()
        };
        elections.push(match &session {
            Some(session) => new_election_on_async(session, config)?,
            None => new_election_async(&client, config)?,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !elections.iter().all(|e| e.is_leader()) {
        if Instant::now() > deadline {
            let leading = elections.iter().filter(|e| e.is_leader()).count();
            return Err(format!("only {leading} of {n} lead after 120 s").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Fleet {
        client,
        _session: session,
        elections,
        all_leading: started.elapsed(),
        heap_before,
    })
}

/// What a hold of `hold` cost this process: (max RSS MiB, CPU %, live heap
/// per election in bytes, elections still leading at its end).
async fn hold_self(fleet: &Fleet, hold: Duration) -> (f64, f64, f64, usize) {
    let self_cpu = cpu("self");
    let mut client_rss = 0.0f64;
    let hold_start = Instant::now();
    while hold_start.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(500).min(hold)).await;
        client_rss = client_rss.max(rss_mib("self"));
    }
    let held = hold_start.elapsed();
    let n = fleet.elections.len().max(1);
    let heap = live_heap().saturating_sub(fleet.heap_before) as f64 / n as f64;
    let leading = fleet.elections.iter().filter(|e| e.is_leader()).count();
    (
        client_rss,
        percent(cpu("self") - self_cpu, held),
        heap,
        leading,
    )
}

/// Election keys and leases left in etcd.
async fn leftovers(config: Config) -> Res<(i64, usize)> {
    let inspector = Client::connect(config).await?;
    let keys = inspector
        .kv()
        .range(RangeRequest {
            key: "/elections/".into(),
            range_end: "/elections0".into(),
            count_only: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .count;
    let leases = inspector
        .lease()
        .lease_leases(LeaseLeasesRequest {})
        .await?
        .into_inner()
        .leases
        .len();
    inspector.close().await;
    Ok((keys, leases))
}

// ---------------------------------------------------------------------------
// Rows

/// One row's figures (a row of part 1, or a cluster row).
#[derive(Clone, Debug, Default)]
struct Row {
    n: usize,
    form: String,
    /// Processes (1, or the cluster's fleet).
    procs: usize,
    all_leading: f64,
    /// MiB; summed over processes.
    client_rss: f64,
    /// MiB; the largest process.
    client_rss_max: f64,
    /// % of one core; summed over processes.
    client_cpu: f64,
    etcd_rss_added: f64,
    etcd_cpu: f64,
    close_all: f64,
    leading: usize,
    keys: i64,
    leases: usize,
    heap_per_election: f64,
}

impl Row {
    fn to_line(&self) -> String {
        format!(
            "{LINE}{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.n,
            self.form,
            self.procs,
            self.all_leading,
            self.client_rss,
            self.client_rss_max,
            self.client_cpu,
            self.etcd_rss_added,
            self.etcd_cpu,
            self.close_all,
            self.leading,
            self.keys,
            self.leases,
            self.heap_per_election
        )
    }

    fn from_line(line: &str) -> Res<Row> {
        let f: Vec<&str> = line
            .strip_prefix(LINE)
            .ok_or("not a row")?
            .split('\t')
            .collect();
        if f.len() != 14 {
            return Err(format!("a row has 14 fields: {line}").into());
        }
        Ok(Row {
            n: f[0].parse()?,
            form: f[1].into(),
            procs: f[2].parse()?,
            all_leading: f[3].parse()?,
            client_rss: f[4].parse()?,
            client_rss_max: f[5].parse()?,
            client_cpu: f[6].parse()?,
            etcd_rss_added: f[7].parse()?,
            etcd_cpu: f[8].parse()?,
            close_all: f[9].parse()?,
            leading: f[10].parse()?,
            keys: f[11].parse()?,
            leases: f[12].parse()?,
            heap_per_election: f[13].parse()?,
        })
    }

    fn print(&self) {
        let label = if self.procs > 1 {
            format!("{} x {}", self.procs, self.n / self.procs)
        } else {
            self.n.to_string()
        };
        let rss = if self.procs > 1 {
            format!("{:.1} ({:.1})", self.client_rss, self.client_rss_max)
        } else {
            format!("{:.1}", self.client_rss)
        };
        println!(
            "{label:>10} {:<7} {:>8.2} s {:>17} MiB {:>7.2} % {:>+9.1} MiB {:>7.2} % {:>8.2} s {:>6} {:>5} {:>6} {:>8.0} B",
            self.form,
            self.all_leading,
            rss,
            self.client_cpu,
            self.etcd_rss_added,
            self.etcd_cpu,
            self.close_all,
            self.leading,
            self.keys,
            self.leases,
            self.heap_per_election,
        );
    }
}

fn print_header(cluster: bool) {
    println!(
        "{:>10} {:<7} {:>10} {:>21} {:>9} {:>13} {:>9} {:>10} {:>6} {:>5} {:>6} {:>10}",
        "elections",
        "form",
        "all lead",
        "client RSS",
        "client",
        "etcd RSS",
        "etcd",
        "close all",
        "lead",
        "keys",
        "leases",
        "live heap"
    );
    println!(
        "{:>10} {:<7} {:>10} {:>21} {:>9} {:>13} {:>9} {:>10} {:>6} {:>5} {:>6} {:>10}",
        "",
        "",
        "after",
        if cluster {
            "sum (max 1), hold"
        } else {
            "max over hold"
        },
        "CPU idle",
        "added",
        "CPU idle",
        "",
        "(hold)",
        "left",
        "left",
        "/election"
    );
}

/// Part 1, one row, in its own child process.
async fn row(n: usize, shared: bool, hold: Duration) -> Res<Row> {
    let etcd = Etcd::start().await?;
    let etcd_pid = vec![etcd.pid().ok_or("etcd has no pid")?.to_string()];
    let (_, etcd_rss_before) = snapshot(&etcd_pid);
    let fleet = fleet(etcd.config(), n, shared, "scale").await?;
    // Idle: only keepalives flow.
    let (etcd_cpu_before, _) = snapshot(&etcd_pid);
    let etcd_hold = Instant::now();
    let (client_rss, client_cpu, heap_per_election, leading) = hold_self(&fleet, hold).await;
    let (etcd_cpu_after, etcd_rss_after) = snapshot(&etcd_pid);
    let etcd_cpu = percent(etcd_cpu_after - etcd_cpu_before, etcd_hold.elapsed());
    let closing = Instant::now();
    fleet.client.close().await;
    let close_all = closing.elapsed();
    let (keys, leases) = leftovers(etcd.config()).await?;
    Ok(Row {
        n,
        form: if shared { "shared" } else { "own" }.into(),
        procs: 1,
        all_leading: fleet.all_leading.as_secs_f64(),
        client_rss,
        client_rss_max: client_rss,
        client_cpu,
        etcd_rss_added: etcd_rss_after - etcd_rss_before,
        etcd_cpu,
        close_all: close_all.as_secs_f64(),
        leading,
        keys,
        leases,
        heap_per_election,
    })
}

/// Runs this program again with `env` set; returns the lines of its output
/// that start with [`LINE`], or why it failed.
fn child(env: &str, value: &str) -> Res<Vec<String>> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .env(env, value)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} {}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(text
        .lines()
        .filter(|l| l.starts_with(LINE))
        .map(String::from)
        .collect())
}

/// PASS/MISS of one column against a bound.
fn check(what: &str, value: f64, bound: f64, unit: &str, against: &str) -> bool {
    let pass = value <= bound;
    println!(
        "  {what:<22} {value:>9.2} {unit:<4} {against} {bound:>7.2} {unit:<4} {}",
        if pass { "PASS" } else { "MISS" }
    );
    pass
}

fn check_row(row: &Row, t: &Targets, against: &str) {
    check(
        "all leading after",
        row.all_leading,
        t.all_leading,
        "s",
        against,
    );
    check("client RSS", row.client_rss, t.client_rss, "MiB", against);
    check(
        "client CPU idle",
        row.client_cpu,
        t.client_cpu,
        "%",
        against,
    );
    check(
        "etcd RSS added",
        row.etcd_rss_added,
        t.etcd_rss_added,
        "MiB",
        against,
    );
    check("etcd CPU idle", row.etcd_cpu, t.etcd_cpu, "%", against);
    check("close all", row.close_all, t.close_all, "s", against);
    let clean = row.keys == 0 && row.leases == 0 && row.leading == row.n;
    println!(
        "  {:<22} {:>9} {:<4} {against} {:>7} {:<4} {}",
        "left in etcd, leading",
        format!("{}+{}", row.keys, row.leases),
        "",
        "0+0",
        "",
        if clean { "PASS" } else { "MISS" }
    );
}

fn verdicts(rows: &[Row]) {
    let find = |n: usize, form: &str| rows.iter().find(|r| r.n == n && r.form == form);
    let top = rows.iter().map(|r| r.n).max().unwrap_or(0);
    if let Some(shared) = find(10_000, "shared") {
        println!();
        println!("10,000 elections, one shared session, against issue 16's targets:");
        check_row(shared, &TARGET_SHARED, "target <=");
    }
    if let Some(own) = find(10_000, "own") {
        println!();
        println!("10,000 elections, a session each, against Go concurrency's \"a Session each\":");
        check_row(own, &GO_OWN, "Go");
    }
    if let (Some(own), Some(shared)) = (find(top, "own"), find(top, "shared")) {
        println!();
        println!("{top} elections, own / shared:");
        // "-" where the shared figure is below what /proc can tell (0.01 s of CPU).
        let r = |a: f64, b: f64| {
            if b.abs() > 1e-9 {
                format!("{:.1}x", a / b)
            } else {
                "-".to_owned()
            }
        };
        println!(
            "  all leading {}, client RSS {}, client CPU {}, etcd RSS added {}, etcd CPU {}, close all {}, live heap {}",
            r(own.all_leading, shared.all_leading),
            r(own.client_rss, shared.client_rss),
            r(own.client_cpu, shared.client_cpu),
            r(own.etcd_rss_added, shared.etcd_rss_added),
            r(own.etcd_cpu, shared.etcd_cpu),
            r(own.close_all, shared.close_all),
            r(own.heap_per_election, shared.heap_per_election),
        );
    }
}

// ---------------------------------------------------------------------------
// Part 2: a fleet of processes against a cluster

/// A worker: N elections on one client to the cluster; then waits for
/// "hold" on stdin, holds, reports; waits for "close", closes, reports.
async fn worker(spec: &str) -> Res<()> {
    let mut parts = spec.splitn(4, ',');
    let mut next = || parts.next().ok_or("SCALE_WORKER=index,n,form,endpoints");
    let (index, n, form, endpoints) = (next()?, next()?.parse()?, next()?, next()?);
    let config = Config {
        endpoints: endpoints.split(';').map(String::from).collect(),
        ..Default::default()
    };
    let fleet = fleet(config, n, form == "shared", &format!("scale/{index}")).await?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut out = std::io::stdout();
    writeln!(out, "{LINE}led\t{}", fleet.all_leading.as_secs_f64())?;
    out.flush()?;
    let hold: f64 = match stdin.next_line().await? {
        Some(line) => line.strip_prefix("hold ").ok_or("expected hold")?.parse()?,
        None => return Err("stdin closed".into()),
    };
    let (rss, cpu, heap, leading) = hold_self(&fleet, Duration::from_secs_f64(hold)).await;
    writeln!(out, "{LINE}held\t{rss}\t{cpu}\t{heap}\t{leading}")?;
    out.flush()?;
    if stdin.next_line().await?.as_deref() != Some("close") {
        return Err("expected close".into());
    }
    let closing = Instant::now();
    fleet.client.close().await;
    writeln!(out, "{LINE}closed\t{}", closing.elapsed().as_secs_f64())?;
    out.flush()?;
    Ok(())
}

struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    /// The fields of its next report line tagged `tag`.
    async fn expect(&mut self, tag: &str) -> Res<Vec<f64>> {
        let limit = Duration::from_secs(180);
        loop {
            let line = tokio::time::timeout(limit, self.lines.next_line())
                .await
                .map_err(|_| format!("no {tag} report within {limit:?}"))??
                .ok_or_else(|| format!("worker exited before its {tag} report"))?;
            let Some(rest) = line.strip_prefix(LINE) else {
                continue;
            };
            let mut fields = rest.split('\t');
            if fields.next() != Some(tag) {
                return Err(format!("expected {tag}, got {rest}").into());
            }
            return fields
                .map(|v| v.parse::<f64>().map_err(Into::into))
                .collect();
        }
    }

    async fn send(&mut self, line: &str) -> Res<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }
}

async fn cluster_row(cluster: &Cluster, p: &Params, form: &str) -> Res<Row> {
    let pids: Vec<String> = cluster
        .members()
        .iter()
        .map(|m| m.pid().map(|p| p.to_string()).ok_or("a member has no pid"))
        .collect::<Result<_, _>>()?;
    let (_, etcd_rss_before) = snapshot(&pids);
    let endpoints = cluster.endpoints().join(";");
    let me = std::env::current_exe()?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for i in 0..p.cluster_procs {
        let mut child = tokio::process::Command::new(&me)
            .env(WORKER, format!("{i},{},{form},{endpoints}", p.cluster_n))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        workers.push(Worker {
            child,
            stdin,
            lines,
        });
    }
    for w in &mut workers {
        w.expect("led").await?;
    }
    let all_leading = started.elapsed();
    let (etcd_cpu_before, _) = snapshot(&pids);
    let hold_started = Instant::now();
    for w in &mut workers {
        w.send(&format!("hold {}", p.hold.as_secs_f64())).await?;
    }
    let mut row = Row {
        n: p.cluster_n * p.cluster_procs,
        form: form.into(),
        procs: p.cluster_procs,
        all_leading: all_leading.as_secs_f64(),
        ..Row::default()
    };
    for w in &mut workers {
        let held = w.expect("held").await?;
        row.client_rss += held[0];
        row.client_rss_max = row.client_rss_max.max(held[0]);
        row.client_cpu += held[1];
        row.heap_per_election += held[2] / p.cluster_procs as f64;
        row.leading += held[3] as usize;
    }
    let (etcd_cpu_after, etcd_rss_after) = snapshot(&pids);
    row.etcd_cpu = percent(etcd_cpu_after - etcd_cpu_before, hold_started.elapsed());
    row.etcd_rss_added = etcd_rss_after - etcd_rss_before;
    for w in &mut workers {
        w.send("close").await?;
    }
    for w in &mut workers {
        let closed = w.expect("closed").await?;
        row.close_all = row.close_all.max(closed[0]);
    }
    for w in &mut workers {
        w.child.wait().await?;
    }
    (row.keys, row.leases) = leftovers(cluster.config()).await?;
    Ok(row)
}

async fn cluster_part(p: &Params) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    for form in &p.forms {
        // A fresh cluster per form, so that etcd's RSS added is the form's.
        let cluster = Cluster::start(3).await?;
        let row = cluster_row(&cluster, p, form).await?;
        row.print();
        rows.push(row);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// Part 3: a handover among many elections

/// An observer that records when its candidate first sees itself lead.
fn leader_stamp() -> (EventObserver, tokio::sync::oneshot::Receiver<Instant>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
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

/// One handover: A enters on `session` and leads, B enters on `b_client`,
/// settles, then from `A.close()` to B leading.
async fn handover(session: &Session, b_client: &Client, name: &str) -> Res<Duration> {
    let config = |candidate: &str, observer| ElectionConfig {
        event_observer: observer,
        election: name.into(),
        candidate: candidate.into(),
        ttl: TTL,
        ..Default::default()
    };
    let a = new_election_on(session, config("a", None)).await?;
    if !a.is_leader() {
        return Err("A does not lead a fresh election".into());
    }
    let (observer, stamp) = leader_stamp();
    let b = new_election(b_client, config("b", Some(observer))).await?;
    tokio::time::sleep(SETTLE).await;
    if b.is_leader() {
        return Err("B leads before the handover".into());
    }
    let t0 = Instant::now();
    a.close().await;
    let at = tokio::time::timeout(Duration::from_secs(10), stamp)
        .await
        .map_err(|_| "B did not lead within 10 s of the handover")??;
    b.close().await;
    Ok(at.saturating_duration_since(t0))
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    let n = samples.len();
    match n {
        0 => Duration::ZERO,
        _ if n % 2 == 1 => samples[n / 2],
        _ => (samples[n / 2 - 1] + samples[n / 2]) / 2,
    }
}

fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    let n = samples.len();
    let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n.max(1));
    samples.get(rank - 1).copied().unwrap_or_default()
}

/// The handover child: `reps` handovers among `others` idle elections on
/// A's session, `reps` without (half before, half after).
async fn handover_child(reps: usize, others: usize) -> Res<()> {
    let etcd = Etcd::start().await?;
    let a_client = Client::connect(etcd.config()).await?;
    let b_client = Client::connect(etcd.config()).await?;
    let session_config = SessionConfig {
        ttl: TTL,
        ..Default::default()
    };
    let alone = Session::new(&a_client, session_config.clone())?;
    let mut without = Vec::new();
    for i in 0..reps / 2 {
        without.push(handover(&alone, &b_client, &format!("handover/alone/{i}")).await?);
    }
    let crowded = Session::new(&a_client, session_config)?;
    let mut idle = Vec::with_capacity(others);
    for i in 0..others {
        let config = ElectionConfig {
            election: format!("idle/{i}"),
            candidate: "idle".into(),
            ttl: TTL,
            ..Default::default()
        };
        idle.push(new_election_on_async(&crowded, config)?);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !idle.iter().all(|e| e.is_leader()) {
        if Instant::now() > deadline {
            return Err("the idle elections do not all lead after 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the entry traffic die down.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut among = Vec::new();
    for i in 0..reps {
        among.push(handover(&crowded, &b_client, &format!("handover/among/{i}")).await?);
    }
    let still = idle.iter().filter(|e| e.is_leader()).count();
    crowded.close().await;
    drop(idle);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in reps / 2..reps {
        without.push(handover(&alone, &b_client, &format!("handover/after/{i}")).await?);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{LINE}{}\t{}\t{}\t{}\t{}\t{}\t{still}",
        among.len(),
        ms(median(&mut among)),
        ms(p99(&mut among)),
        without.len(),
        ms(median(&mut without)),
        ms(p99(&mut without)),
    );
    a_client.close().await;
    b_client.close().await;
    Ok(())
}

fn handover_part(p: &Params) -> Res<()> {
    let lines = child(
        HANDOVER,
        &format!("{},{}", p.handover_reps, p.handover_others),
    )?;
    let line = lines
        .first()
        .ok_or("the handover child printed no result")?;
    let f: Vec<f64> = line[LINE.len()..]
        .split('\t')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [
        n_among,
        among_med,
        among_p99,
        n_alone,
        alone_med,
        alone_p99,
        still,
    ] = f[..]
    else {
        return Err(format!("unexpected handover line {line}").into());
    };
    println!(
        "  among {} idle elections on A's session: median {among_med:.3} ms, p99 {among_p99:.3} ms ({n_among} reps; {still} idle still leading after)",
        p.handover_others
    );
    println!(
        "  with no other election:                  median {alone_med:.3} ms, p99 {alone_p99:.3} ms ({n_alone} reps)"
    );
    let x = among_med / alone_med;
    println!(
        "  among / alone: {x:.2}x (target <= 1.5x): {}",
        if x <= 1.5 && still as usize == p.handover_others {
            "PASS"
        } else {
            "MISS"
        }
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The plot

/// Client RSS and etcd CPU (idle) against the number of elections, both
/// forms, Go's 10,000 rows as points; an SVG at `path`.
fn plot(rows: &[Row], path: &std::path::Path) -> Res<()> {
    use plotters::prelude::*;
    let single: Vec<&Row> = rows.iter().filter(|r| r.procs == 1).collect();
    let max_n = single.iter().map(|r| r.n).max().unwrap_or(0).max(10_000) as f64;
    let root = SVGBackend::new(path, (1100, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    type Pick = fn(&Row) -> f64;
    let metrics: [(&str, &str, Pick, f64, f64); 2] = [
        (
            "client RSS (max over a 20 s idle hold)",
            "MiB",
            |r| r.client_rss,
            GO_OWN.client_rss,
            GO_SHARED.client_rss,
        ),
        (
            "etcd CPU while idle",
            "% of one core",
            |r| r.etcd_cpu,
            GO_OWN.etcd_cpu,
            GO_SHARED.etcd_cpu,
        ),
    ];
    for (panel, (title, unit, pick, go_own, go_shared)) in panels.iter().zip(metrics) {
        let top = single
            .iter()
            .map(|r| pick(r))
            .chain([go_own, go_shared])
            .fold(0.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..max_n * 1.05, 0.0..top.max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("elections on one client")
            .y_desc(unit)
            .draw()?;
        for (i, form, label) in [
            (0, "shared", "etcdutil, one shared Session"),
            (1, "own", "etcdutil, a session each"),
        ] {
            let color = Palette99::pick(i).to_rgba();
            let mut points: Vec<(f64, f64)> = single
                .iter()
                .filter(|r| r.form == form)
                .map(|r| (r.n as f64, pick(r)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        for (i, value, label) in [
            (0, go_shared, "Go concurrency, one shared Session"),
            (1, go_own, "Go concurrency, a Session each"),
        ] {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series([TriangleMarker::new((10_000.0, value), 7, color)])?
                .label(label)
                .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 5, color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

// ---------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Res<()> {
    let p = Params::from_env()?;
    if let Ok(spec) = std::env::var(CHILD) {
        let (n, form) = spec.split_once(',').ok_or("SCALE_CHILD=n,form")?;
        println!(
            "{}",
            row(n.parse()?, form == "shared", p.hold).await?.to_line()
        );
        return Ok(());
    }
    if let Ok(spec) = std::env::var(WORKER) {
        return worker(&spec).await;
    }
    if let Ok(spec) = std::env::var(HANDOVER) {
        let (reps, others) = spec.split_once(',').ok_or("SCALE_HANDOVER=reps,others")?;
        return handover_child(reps.parse()?, others.parse()?).await;
    }
    let started = Instant::now();
    println!(
        "etcdutil scale: etcd with fsync, TTL {TTL} s, idle hold {:?}; CPU in % of one core",
        p.hold
    );
    let mut rows = Vec::new();
    if p.wants("rows") {
        println!();
        println!("1. N elections on one client (one process, one single-member etcd each row)");
        print_header(false);
        for &n in &p.counts {
            for form in &p.forms {
                match child(CHILD, &format!("{n},{form}")).and_then(|lines| {
                    Row::from_line(lines.first().ok_or("the child printed no row")?)
                }) {
                    Ok(row) => {
                        row.print();
                        rows.push(row);
                    }
                    Err(e) => println!("{n:>10} {form:<7} FAILED: {e}"),
                }
            }
        }
        verdicts(&rows);
        let svg = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("bench")
            .join("scale.svg");
        std::fs::create_dir_all(svg.parent().expect("a dir"))?;
        match plot(&rows, &svg) {
            Ok(()) => println!("plot: {}", svg.display()),
            Err(e) => println!("plot failed: {e}"),
        }
    }
    if p.wants("cluster") {
        println!();
        println!(
            "2. {} processes x {} elections against a 3-member cluster (client RSS and CPU summed over the processes, max of one in parentheses; etcd summed over the members)",
            p.cluster_procs, p.cluster_n
        );
        print_header(true);
        if let Err(e) = cluster_part(&p).await {
            println!("  FAILED: {e}");
        }
    }
    if p.wants("handover") {
        println!();
        println!(
            "3. settled handover (B waits {} ms, then A.close() -> B leads), one etcd",
            SETTLE.as_millis()
        );
        if let Err(e) = handover_part(&p) {
            println!("  FAILED: {e}");
        }
    }
    println!();
    println!("whole run {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
