//! The one-command demo: a throwaway etcd, three `elect` candidates, a graceful
//! handover and a hard crash. Run it with `bash examples/demo.sh`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use etcdutil::testing::Etcd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const CANDIDATES: [&str; 3] = ["alpha", "bravo", "charlie"];
const TTL: u64 = 2;

struct Candidate {
    name: &'static str,
    child: Child,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let elect = std::env::current_exe()?.with_file_name("elect");
    if !elect.exists() {
        return Err("build the elect example first: cargo build --example elect".into());
    }
    let etcd = Etcd::start().await?;
    println!(
        "etcd {} on {} (data in {})",
        version(),
        etcd.endpoint(),
        etcd.data_dir().display()
    );

    let (leaders, mut leader_events) = mpsc::unbounded_channel();
    let (joined, mut joins) = mpsc::unbounded_channel();
    let mut candidates = Vec::new();
    for name in CANDIDATES {
        let mut child = Command::new(&elect)
            .args(["demo", name, "--ttl", &TTL.to_string()])
            .env("ETCD3_ENDPOINT", etcd.endpoint())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let leaders = leaders.clone();
        let joined = joined.clone();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok(Some(line)) = lines.next_line().await {
                let at = Instant::now();
                println!("  [{name:>7}] {line}");
                if line.contains("\"is_leader\":true") {
                    let _ = leaders.send((name, at));
                }
                if first && !line.contains("\"leader_key\":\"\"") {
                    first = false;
                    let _ = joined.send(name);
                }
            }
        });
        println!(
            "started candidate {name} (pid {})",
            child.id().unwrap_or_default()
        );
        candidates.push(Candidate { name, child });
    }

    let (first, _) = wait_leader(&mut leader_events).await?;
    // Everyone in the race (each has seen the leader) before the leader goes.
    for _ in CANDIDATES {
        tokio::time::timeout(Duration::from_secs(15), joins.recv())
            .await
            .ok()
            .flatten()
            .ok_or("a candidate did not join within 15 s")?;
    }
    // A watch etcd opens behind its current revision (as Observe's are while
    // candidates are still joining) is caught up by etcd's 100 ms sync loop;
    // give it that, so the handover below is the steady-state one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("\n{first} leads; stopping it with `close` on its stdin");

    // A graceful stop: the leader resigns, the next candidate takes over.
    let leader = candidates
        .iter_mut()
        .find(|c| c.name == first)
        .expect("known");
    let stopped_at = Instant::now();
    leader
        .child
        .stdin
        .as_mut()
        .expect("piped")
        .write_all(b"close\n")
        .await?;
    let (second, at) = wait_leader(&mut leader_events).await?;
    println!(
        "\n{first} closed; {second} took over in {:.1} ms (graceful handover: one etcd commit + one watch event)",
        at.duration_since(stopped_at).as_secs_f64() * 1000.0
    );
    leader.child.wait().await?;

    // A crash: SIGKILL, no resign. The lease must expire first.
    let leader = candidates
        .iter_mut()
        .find(|c| c.name == second)
        .expect("known");
    println!("\nkilling {second} with SIGKILL: no resign, its lease must expire");
    let killed_at = Instant::now();
    leader.child.start_kill()?;
    let (third, at) = wait_leader(&mut leader_events).await?;
    println!(
        "\n{second} killed; {third} took over in {:.1} ms (crash failover: bounded by the {TTL} s lease TTL)",
        at.duration_since(killed_at).as_secs_f64() * 1000.0
    );

    for candidate in &mut candidates {
        if let Some(pid) = candidate.child.id() {
            // SIGTERM: elect closes its election and exits 0.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            let _ = candidate.child.wait().await;
        }
    }
    println!("\nall candidates closed; stopping etcd and removing its data dir");
    drop(etcd);
    Ok(())
}

async fn wait_leader(
    events: &mut mpsc::UnboundedReceiver<(&'static str, Instant)>,
) -> Result<(&'static str, Instant), &'static str> {
    let next = tokio::time::timeout(Duration::from_secs(15), events.recv()).await;
    next.ok().flatten().ok_or("no leader within 15 s")
}

fn version() -> String {
    let etcd = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
    std::process::Command::new(etcd)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| {
            text.lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version: ").to_owned())
        })
        .unwrap_or_default()
}
