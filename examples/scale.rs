//! Many elections on one client: what they cost this process and etcd.
//!
//! ```sh
//! cargo run --release --example scale                     # 1,000, 5,000 and 10,000, both forms
//! SCALE_N=10000 SCALE_FORM=shared cargo run --release --example scale
//! ```
//!
//! For each count and form it starts a fresh single-member etcd (with fsync,
//! etcd's default) and one `Client`, then makes N elections, each alone in
//! its own election (so each leads):
//!
//! - `shared`: all on one `Session` (TTL 10 s), `new_election_on_async`;
//! - `own`: the default way, `new_election_async`, a session each (TTL 10 s).
//!
//! It prints, per row: the time until all lead; this process's RSS and CPU
//! over a 20 s idle hold (from `/proc/self`); etcd's RSS added since before
//! the elections and its CPU over the same hold (from `/proc/<etcd pid>`);
//! the time `Client::close()` takes; and the keys and leases left in etcd
//! after it (must be 0); and the heap still allocated per election at the
//! end of the hold (counted by this program's allocator, so it shows what
//! RSS hides behind freed pages the allocator keeps). CPU is given in % of one core.
//!
//! Each row runs in a child process of its own (this program again, with
//! `SCALE_CHILD` set), so memory figures are that row's alone.

use std::time::{Duration, Instant};

use etcdutil::proto::etcdserverpb::{LeaseLeasesRequest, RangeRequest};
use etcdutil::testing::Etcd;
use etcdutil::{
    Client, Election, ElectionConfig, Session, SessionConfig, new_election_async,
    new_election_on_async,
};

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
const HOLD: Duration = Duration::from_secs(20);
const CHILD: &str = "SCALE_CHILD";

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

async fn row(n: usize, shared: bool) -> Res<String> {
    let etcd = Etcd::start().await?;
    let etcd_pid = etcd.pid().ok_or("etcd has no pid")?.to_string();
    let client = Client::connect(etcd.config()).await?;
    let etcd_rss_before = rss_mib(&etcd_pid);
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
            election: format!("scale/{i}"),
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
    let all_leading = started.elapsed();
    // Idle: only keepalives flow.
    let (self_cpu, etcd_cpu) = (cpu("self"), cpu(&etcd_pid));
    let mut client_rss = 0.0f64;
    let hold_start = Instant::now();
    while hold_start.elapsed() < HOLD {
        tokio::time::sleep(Duration::from_millis(500)).await;
        client_rss = client_rss.max(rss_mib("self"));
    }
    let held = hold_start.elapsed();
    let heap_per_election = (live_heap().saturating_sub(heap_before)) as f64 / n as f64;
    let client_cpu = percent(cpu("self") - self_cpu, held);
    let etcd_cpu = percent(cpu(&etcd_pid) - etcd_cpu, held);
    let etcd_rss_added = rss_mib(&etcd_pid) - etcd_rss_before;
    let leading = elections.iter().filter(|e| e.is_leader()).count();
    let closing = Instant::now();
    client.close().await;
    let close_all = closing.elapsed();
    let inspector = Client::connect(etcd.config()).await?;
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
    Ok(format!(
        "{n:>6} {:<7} {:>9.2} s {:>8.1} MiB {:>7.2} % {:>+9.1} MiB {:>7.2} % {:>8.2} s {:>6} {:>6} {:>6} {:>9.0} B",
        if shared { "shared" } else { "own" },
        all_leading.as_secs_f64(),
        client_rss,
        client_cpu,
        etcd_rss_added,
        etcd_cpu,
        close_all.as_secs_f64(),
        leading,
        keys,
        leases,
        heap_per_election,
    ))
}

#[tokio::main]
async fn main() -> Res<()> {
    if let Ok(spec) = std::env::var(CHILD) {
        let (n, form) = spec.split_once(',').ok_or("SCALE_CHILD=n,form")?;
        println!("{}", row(n.parse()?, form == "shared").await?);
        return Ok(());
    }
    let counts: Vec<usize> = match std::env::var("SCALE_N") {
        Ok(n) => vec![n.parse()?],
        Err(_) => vec![1_000, 5_000, 10_000],
    };
    let forms: Vec<&str> = match std::env::var("SCALE_FORM").as_deref() {
        Ok("shared") => vec!["shared"],
        Ok("own") => vec!["own"],
        _ => vec!["shared", "own"],
    };
    println!(
        "{:>6} {:<7} {:>11} {:>12} {:>9} {:>13} {:>9} {:>10} {:>6} {:>6} {:>6} {:>11}",
        "n",
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
        "{:>6} {:<7} {:>11} {:>12} {:>9} {:>13} {:>9} {:>10} {:>6} {:>6} {:>6} {:>11}",
        "",
        "",
        "after",
        "(max, hold)",
        "CPU idle",
        "added",
        "CPU idle",
        "",
        "(hold)",
        "left",
        "left",
        "/election"
    );
    let me = std::env::current_exe()?;
    for n in counts {
        for form in &forms {
            let out = std::process::Command::new(&me)
                .env(CHILD, format!("{n},{form}"))
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() {
                print!("{text}");
            } else {
                println!(
                    "{n:>6} {form:<7} FAILED: {}{}",
                    text.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    Ok(())
}
