//! The `elect` example driven from outside, as a service supervisor runs it:
//! a child process with stdin a pipe left open, stopped by SIGTERM, SIGINT
//! or `close`, started before etcd. `cargo test` builds the examples first;
//! run `cargo build --all-features --example elect` before `--test cli` alone.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use etcdutil::testing::Etcd;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

const TTL: u64 = 2;

/// `target/<profile>/examples/elect`, beside this test's `deps/` folder.
pub(crate) fn elect_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join("elect");
    assert!(
        path.exists(),
        "{} is missing: cargo build --all-features --example elect",
        path.display()
    );
    path
}

/// One `elect` process and the events it printed.
struct Elect {
    child: Child,
    /// Held open for the process's whole life, as a supervisor's pipe is
    /// (unless the test closed it).
    stdin: Option<ChildStdin>,
    /// Each event, and when it was read.
    events: mpsc::UnboundedReceiver<(Instant, Value)>,
    seen: Vec<Value>,
}

impl Elect {
    fn spawn(endpoint: &str, election: &str, candidate: &str, ttl: u64) -> Elect {
        Elect::spawn_with(endpoint, election, candidate, ttl, Stdio::piped())
    }

    fn spawn_with(
        endpoint: &str,
        election: &str,
        candidate: &str,
        ttl: u64,
        stdin: Stdio,
    ) -> Elect {
        // With the server-side engine (see `both_engines!`), the flag goes
        // between the names and the other options.
        let server_side = (engine() == etcdutil::Engine::ServerSide).then_some("--server-side");
        let mut child = Command::new(elect_binary())
            .args([election, candidate])
            .args(server_side)
            .args(["--ttl", &ttl.to_string()])
            .env("ETCD3_ENDPOINT", endpoint)
            .env("ETCD3_DIAL_TIMEOUT", "1s")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn elect");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let (sender, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let event: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("elect printed {line:?}, not JSON: {e}"));
                if sender.send((Instant::now(), event)).is_err() {
                    return;
                }
            }
        });
        Elect {
            child,
            stdin,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits for an event that matches; returns when it was read.
    async fn until(&mut self, secs: f64, what: &str, matches: impl Fn(&Value) -> bool) -> Instant {
        let seen = &mut self.seen;
        let events = &mut self.events;
        let found = tokio::time::timeout(Duration::from_secs_f64(secs), async {
            while let Some((at, event)) = events.recv().await {
                let matched = matches(&event);
                seen.push(event);
                if matched {
                    return Some(at);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(at)) => at,
            _ => panic!("no {what} within {secs} s; events: {:#?}", self.seen),
        }
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
    }

    /// Waits for the exit; returns its status and every event printed.
    async fn exit(mut self, secs: f64) -> (ExitStatus, Vec<Value>) {
        let status = within(secs, "elect to exit", self.child.wait())
            .await
            .expect("wait for elect");
        while let Some((_, event)) = self.events.recv().await {
            self.seen.push(event);
        }
        drop(self.stdin);
        (status, self.seen)
    }
}

fn is_leader(event: &Value) -> bool {
    event["is_leader"] == true
}

fn is_error(event: &Value) -> bool {
    !event["err"].is_null()
}

/// The last two events are `{is_leader: false, is_done: false}` then `{is_done: true}`.
fn assert_closing_pair(events: &[Value]) {
    let [.., stepped_down, done] = events else {
        panic!("fewer than two events: {events:#?}");
    };
    assert!(
        stepped_down["is_leader"] == false && stepped_down["is_done"] == false,
        "{events:#?}"
    );
    assert!(
        done["is_done"] == true && done["is_leader"] == false,
        "{events:#?}"
    );
}

/// SIGTERM, SIGINT and `close` each end `elect` with exit code 0 within
/// TTL + 1 s while its stdin stays open, after both closing events, leaving
/// nothing in etcd.
async fn elect_exits_on_sigterm_sigint_and_close_with_stdin_left_open() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    for how in ["SIGTERM", "SIGINT", "close"] {
        let name = unique(&format!("cli-{how}"));
        let mut elect = Elect::spawn(&etcd.endpoint(), &name, "a", TTL);
        elect.until(10.0, "leadership", is_leader).await;
        let asked = Instant::now();
        match how {
            "SIGTERM" => elect.signal(libc::SIGTERM),
            "SIGINT" => elect.signal(libc::SIGINT),
            _ => {
                let stdin = elect.stdin.as_mut().expect("piped");
                stdin.write_all(b"close\n").await.unwrap();
            }
        }
        let (status, events) = elect.exit(10.0).await;
        let took = asked.elapsed();
        println!("elect exit on {how} with stdin open: {took:?}");
        assert_eq!(status.code(), Some(0), "{how}: {events:#?}");
        assert!(
            took <= Duration::from_secs(TTL + 1),
            "{how}: exit took {took:?}"
        );
        assert_closing_pair(&events);
        assert_eq!(
            keys_under(&client, &format!("/elections/{name}")).await,
            Vec::<String>::new()
        );
        assert_eq!(
            lease_ids(&client).await,
            Vec::<i64>::new(),
            "{how}: no lease left"
        );
    }
}

/// SIGTERM with stdin at end of file (`/dev/null`) or a pipe the supervisor
/// closed: exit 0 within TTL + 1 s, closing pair printed, nothing left.
#[tokio::test]
async fn elect_exits_on_sigterm_with_stdin_at_end_of_file() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    for stdin in ["closed pipe", "/dev/null"] {
        let name = unique("cli-eof");
        let mut elect = if stdin == "/dev/null" {
            Elect::spawn_with(&etcd.endpoint(), &name, "a", TTL, Stdio::null())
        } else {
            Elect::spawn(&etcd.endpoint(), &name, "a", TTL)
        };
        drop(elect.stdin.take()); // closes the pipe; nothing with /dev/null
        elect.until(10.0, "leadership", is_leader).await;
        let asked = Instant::now();
        elect.signal(libc::SIGTERM);
        let (status, events) = elect.exit(10.0).await;
        let took = asked.elapsed();
        assert_eq!(status.code(), Some(0), "{stdin}: {events:#?}");
        assert!(
            took <= Duration::from_secs(TTL + 1),
            "{stdin}: exit took {took:?}"
        );
        assert_closing_pair(&events);
        assert_eq!(
            lease_ids(&client).await,
            Vec::<i64>::new(),
            "{stdin}: no lease left"
        );
    }
}

/// Started while etcd is down (its port closed): `elect` reports each failed
/// attempt, leads within 3 s of etcd coming up, and exits 0 on SIGTERM. With
/// a TTL of 10 s and five failures first, a grant backoff that grew up to
/// the TTL (as the Go package's does) would wait 8 s.
async fn elect_started_before_etcd_leads_once_etcd_is_up() {
    let mut etcd = Etcd::start().await.expect("start etcd");
    etcd.stop().await.unwrap();
    let ttl = 10;
    let mut elect = Elect::spawn(&etcd.endpoint(), &unique("cli-early"), "early", ttl);
    for n in 1..=5 {
        let what = format!("error event {n} while etcd is down");
        elect.until(10.0, &what, is_error).await;
    }
    let started = Instant::now();
    etcd.restart().await.unwrap();
    let ready = Instant::now();
    let led = elect
        .until(3.0, "leadership within 3 s of etcd coming up", is_leader)
        .await;
    println!(
        "elect started before etcd: leader {:?} after etcd was ready ({:?} after it was started)",
        led.saturating_duration_since(ready),
        led.duration_since(started)
    );
    elect.signal(libc::SIGTERM);
    let (status, events) = elect.exit((ttl + 1) as f64).await;
    assert_eq!(status.code(), Some(0));
    assert_closing_pair(&events);
}

/// SIGTERM while etcd is still down: exit 0 within TTL + 1 s, closing pair printed.
#[tokio::test]
async fn elect_exits_on_sigterm_while_etcd_is_down() {
    let mut etcd = Etcd::start().await.expect("start etcd");
    etcd.stop().await.unwrap();
    let mut elect = Elect::spawn(&etcd.endpoint(), &unique("cli-down"), "a", TTL);
    elect
        .until(10.0, "an error event while etcd is down", is_error)
        .await;
    let asked = Instant::now();
    elect.signal(libc::SIGTERM);
    let (status, events) = elect.exit(10.0).await;
    let took = asked.elapsed();
    println!("elect exit on SIGTERM with etcd down: {took:?}");
    assert_eq!(status.code(), Some(0), "{events:#?}");
    assert!(took <= Duration::from_secs(TTL + 1), "exit took {took:?}");
    assert_closing_pair(&events);
}

/// A bad `ETCD3_*` value exits at once with code 2 and names the variable.
#[tokio::test]
async fn elect_with_a_bad_setting_exits_2_with_the_message() {
    let output = Command::new(elect_binary())
        .args(["jobs", "a"])
        .env("ETCD3_DIAL_TIMEOUT", "soon")
        .stdin(Stdio::null())
        .output();
    let output = within(10.0, "elect to exit", output).await.unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ETCD3_DIAL_TIMEOUT='soon'"), "{stderr}");
}

/// `--server-side` with a user and password: refused at once, exit 2, the
/// etcd issue named; the flag is accepted after the options too.
#[tokio::test]
async fn elect_server_side_with_a_user_exits_2_naming_the_etcd_issue() {
    let output = Command::new(elect_binary())
        .args(["jobs", "a", "--ttl", "2", "--server-side"])
        .env("ETCD3_ENDPOINT", "127.0.0.1:1")
        .env("ETCD3_USER", "root")
        .env("ETCD3_PASSWORD", "secret")
        .stdin(Stdio::null())
        .output();
    let output = within(10.0, "elect to exit", output).await.unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("17502") && stderr.contains("Engine::ServerSide"),
        "{stderr}"
    );
}

crate::both_engines!(
    elect_exits_on_sigterm_sigint_and_close_with_stdin_left_open,
    elect_started_before_etcd_leads_once_etcd_is_up,
);
