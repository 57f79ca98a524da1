//! The deterministic simulator: the crate's election and lease cores, driven
//! through the same glue as the election and session tasks, against a model
//! of etcd (`etcd.rs`), with faults chosen by a seeded PRNG (`world.rs`).
//!
//! Each run: 3 to 5 candidates (each with its own clock, within ±500 ppm of
//! etcd's), one or three members, a TTL of 1 to 3 s, and 60 simulated
//! seconds of faults: cuts, blackholes, members down or without a leader,
//! expired tokens, latency spikes, lost requests and answers lost after
//! etcd applied them, concedes, closes and rejoins, proclaims, and
//! Go-package candidates coming and going. Then every fault heals, one
//! leader must stand within TTL + 2 s, every candidate closes, and nothing
//! may be left in etcd. The invariants are checked after every step.
//!
//! ```text
//! # CI: 60 s of wall time
//! cargo test --all-features --test sim -- --nocapture
//! # longer, faster
//! SIM_SECS=600 cargo test --release --all-features --test sim -- --nocapture
//! # replay one run, with its whole trace
//! SIM_SEED=1234 cargo test --all-features --test sim -- --nocapture
//! ```

mod etcd;
mod world;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use etcdutil::testing::core::Sabotage;

use world::{Outcome, Settings, World};

/// Simulated seconds of faults per run.
const FAULT_TIME: Duration = Duration::from_secs(60);

/// Seeds that once failed, kept so they never do again. None broke a core:
/// each found a fault of the simulator's own glue or model, fixed there
/// (1066: a stale re-check of Go candidates; 1652: a 12 s hop, longer than
/// HTTP/2 pings allow; 52818: single keepalive messages lost from a
/// stream; 72950: the Go-candidate watch never renewing its token).
const REGRESSIONS: &[u64] = &[1066, 1652, 52818, 72950];

/// How many seeds a negative control may take. The rarest (stale-report)
/// fails about one seed in 75, so missing it in 2,000 has odds near e^-26.
const CONTROL_SEEDS: u64 = 2000;

/// The negative controls: each breaks a core in one way the simulator
/// must catch.
const CONTROLS: [(Sabotage, &str); 4] = [
    (Sabotage::DeadlineFromAnswer, "deadline-from-answer"),
    (Sabotage::ZeroMargin, "zero-margin"),
    (Sabotage::AcceptStaleReport, "stale-report"),
    (Sabotage::SkipGoCheck, "skip-go-check"),
];

fn settings(seed: u64, sabotage: Sabotage) -> Settings {
    Settings {
        seed,
        fault_time: FAULT_TIME,
        sabotage,
        pause: false,
        trace: false,
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
    })
}

fn print_failure(what: &str, outcome: &Outcome) {
    eprintln!(
        "{what}: seed {} ({} candidates, {} members, TTL {} s): {}",
        outcome.seed,
        outcome.candidates,
        outcome.members,
        outcome.ttl,
        outcome.violation.as_deref().unwrap_or("none")
    );
    eprintln!("last steps:");
    for line in &outcome.trace {
        eprintln!("  {line}");
    }
    eprintln!(
        "replay: SIM_SEED={} cargo test --all-features --test sim -- --nocapture",
        outcome.seed
    );
}

/// The seeds of one wall-clock session: from `SIM_SEED_BASE`, or the time.
fn first_seed() -> u64 {
    env_u64("SIM_SEED_BASE").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

/// Runs seeds with `sabotage` until one shows a violation; how many it took.
fn seeds_to_failure(sabotage: Sabotage, first: u64) -> Option<(u64, Outcome)> {
    (1..=CONTROL_SEEDS).find_map(|n| {
        let outcome = World::new(settings(first.wrapping_add(n), sabotage)).run();
        outcome.violation.is_some().then_some((n, outcome))
    })
}

#[test]
fn simulate() {
    if let Some(seed) = env_u64("SIM_SEED") {
        return replay(seed);
    }
    let wall = Duration::from_secs(env_u64("SIM_SECS").unwrap_or(60));
    let start = Instant::now();
    let first = first_seed();

    // The negative controls first: each must fail.
    let mut controls = Vec::new();
    let mut missed = Vec::new();
    for (i, (sabotage, name)) in CONTROLS.into_iter().enumerate() {
        let base = first.wrapping_add(1_000_000 * (i as u64 + 1));
        match seeds_to_failure(sabotage, base) {
            Some((n, outcome)) => {
                println!(
                    "control {name}: caught after {n} seeds (seed {}): {}",
                    outcome.seed,
                    outcome.violation.as_deref().unwrap_or_default()
                );
                controls.push(format!("{name} {n}"));
            }
            None => missed.push(name),
        }
    }

    // Where the guarantee ends: a process paused past its TTL.
    let pause = World::new(Settings {
        pause: true,
        ..settings(first, Sabotage::None)
    })
    .run_pause();

    // Random faults, for the rest of the time.
    let mut runs = 0u64;
    let mut simulated = Duration::ZERO;
    let mut faults = 0;
    let mut leader_changes = 0;
    let mut steps = 0;
    let mut min_margin: Option<Duration> = None;
    let mut schedules = HashSet::new();
    let mut failures = Vec::new();
    let sim_start = Instant::now();
    let seeds = REGRESSIONS
        .iter()
        .copied()
        .chain((1..).map(|n| first.wrapping_add(n)));
    for seed in seeds {
        if start.elapsed() >= wall && runs >= REGRESSIONS.len() as u64 {
            break;
        }
        let outcome = World::new(settings(seed, Sabotage::None)).run();
        runs += 1;
        simulated += outcome.simulated;
        faults += outcome.faults;
        leader_changes += outcome.leader_changes;
        steps += outcome.steps;
        schedules.insert(outcome.fingerprint);
        if let Some(margin) = outcome.min_margin {
            min_margin = Some(min_margin.map_or(margin, |m| m.min(margin)));
        }
        if outcome.violation.is_some() {
            print_failure("VIOLATION", &outcome);
            failures.push(outcome.seed);
        }
    }
    let sim_wall = sim_start.elapsed();
    let hours = simulated.as_secs_f64() / 3600.0;
    let per_minute = hours / sim_wall.as_secs_f64() * 60.0;
    println!(
        "sim: {runs} runs, {hours:.1} simulated hours ({per_minute:.1} per wall minute on one core), \
         {faults} faults, {steps} steps, {} distinct schedules, {leader_changes} leader changes, \
         min step-down margin {} on etcd's clock, {} violations; \
         controls (seeds to failure): {}; pause past the TTL: {:.1} s of two believing leaders, \
         {}/{} fenced writes refused",
        schedules.len(),
        min_margin.map_or("none".into(), |m| format!("{} ms", m.as_millis())),
        failures.len(),
        if missed.is_empty() {
            controls.join(", ")
        } else {
            format!("{}; NOT CAUGHT: {}", controls.join(", "), missed.join(", "))
        },
        pause.overlap.as_secs_f64(),
        pause.fenced_refused,
        pause.fenced_writes,
    );
    println!(
        "run alone: SIM_SECS=600 cargo test --release --all-features --test sim -- --nocapture; \
         replay a seed: SIM_SEED=N cargo test --all-features --test sim -- --nocapture"
    );
    assert!(failures.is_empty(), "violations with seeds {failures:?}");
    assert!(
        missed.is_empty(),
        "negative controls not caught in {CONTROL_SEEDS} seeds: {missed:?}"
    );
    assert!(
        pause.overlap > Duration::ZERO,
        "a leader paused past its TTL never overlapped another: the pause scenario tests nothing"
    );
    assert!(
        pause.fenced_writes > 0 && pause.fenced_refused == pause.fenced_writes,
        "the paused leader's fenced writes: {} of {} refused",
        pause.fenced_refused,
        pause.fenced_writes
    );
}

/// `SIM_SEED=N`: one run, with its whole trace.
fn replay(seed: u64) {
    let sabotage = match std::env::var("SIM_SABOTAGE").as_deref() {
        Ok(name) => {
            CONTROLS
                .iter()
                .find(|(_, n)| *n == name)
                .unwrap_or_else(|| panic!("SIM_SABOTAGE={name:?} is none of {CONTROLS:?}"))
                .0
        }
        Err(_) => Sabotage::None,
    };
    let outcome = World::new(Settings {
        trace: true,
        ..settings(seed, sabotage)
    })
    .run();
    for line in &outcome.trace {
        println!("{line}");
    }
    println!(
        "sim: seed {seed}: {} candidates, {} members, TTL {} s, {} faults, {} leader changes, {:?} simulated, violation: {}",
        outcome.candidates,
        outcome.members,
        outcome.ttl,
        outcome.faults,
        outcome.leader_changes,
        outcome.simulated,
        outcome.violation.as_deref().unwrap_or("none")
    );
    assert!(outcome.violation.is_none() || sabotage != Sabotage::None);
}

/// The same seed, the same run, step for step.
#[test]
fn a_seed_replays_exactly() {
    let a = World::new(settings(42, Sabotage::None)).run();
    let b = World::new(settings(42, Sabotage::None)).run();
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_eq!(a.trace, b.trace);
    let c = World::new(settings(43, Sabotage::None)).run();
    assert_ne!(a.fingerprint, c.fingerprint);
}
