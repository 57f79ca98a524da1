//! `elect ELECTION CANDIDATE -- COMMAND`, driven from outside: the command
//! runs only while its `elect` leads, learns its key and fencing token from
//! the environment, and is stopped when leadership is lost, before another
//! candidate's command starts.

use std::path::Path;
use std::process::Stdio;

use crate::cli::elect_binary;
use crate::common::*;
use etcdutil::proto::etcdserverpb::{DeleteRangeRequest, RangeRequest};
use tokio::process::{Child, Command};

/// `elect NAME ID --ttl TTL [extra...] -- sh -c SCRIPT` in `dir`.
fn elect_sh(
    endpoint: &str,
    name: &str,
    id: &str,
    ttl: u64,
    extra: &[&str],
    dir: &Path,
    script: &str,
) -> Child {
    Command::new(elect_binary())
        .args([name, id, "--ttl", &ttl.to_string()])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .current_dir(dir)
        .env("ETCD3_ENDPOINT", endpoint)
        .env("ETCD3_DIAL_TIMEOUT", "1s")
        .env("ID", id)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn elect")
}

fn signal(child: &Child, signal: i32) {
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The pids children logged as `pid ID PID`; asserts none is still running.
fn assert_no_child_left(log: &Path) {
    let pids: Vec<i32> = lines(log)
        .iter()
        .filter_map(|l| l.strip_prefix("pid "))
        .filter_map(|rest| rest.split(' ').nth(1)?.parse().ok())
        .collect();
    assert!(!pids.is_empty(), "the children logged their pids");
    for pid in pids {
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "child {pid} still runs after its elect exited");
    }
}

async fn wait_for_line(
    path: &Path,
    secs: f64,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> String {
    let mut found = None;
    eventually(secs, what, || {
        found = lines(path).into_iter().find(|l| matches(l));
        std::future::ready(found.is_some())
    })
    .await;
    found.expect("found")
}

/// The command sees our key and its create revision; when it exits by
/// itself, `elect` hands over and exits with its code, and the waiting
/// `elect` runs its command only then.
#[tokio::test]
async fn the_command_runs_on_one_host_at_a_time_with_its_fencing_token() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let dir = TempDir::new();
    let name = unique("cron");
    let log = dir.0.path().join("log");
    // Logs its start, waits for the file `go-$ID`, logs its end, exits 3.
    let script = r#"echo "pid $ID $$" >> log
        echo "start $ID $ETCD_ELECTION_KEY $ETCD_ELECTION_REV" >> log
        while [ ! -e "go-$ID" ]; do sleep 0.02; done
        echo "end $ID" >> log; exit 3"#;
    let endpoint = etcd.endpoint();
    let mut a = elect_sh(&endpoint, &name, "a", 5, &[], dir.0.path(), script);
    let started = wait_for_line(&log, 10.0, "a's command", |l| l.starts_with("start a")).await;
    let mut b = elect_sh(&endpoint, &name, "b", 5, &[], dir.0.path(), script);
    let fields: Vec<&str> = started.split(' ').collect();
    let (key, rev) = (fields[2], fields[3].parse::<i64>().expect("a revision"));
    assert!(key.starts_with(&format!("/elections/{name}/")), "{started}");
    let kv = client
        .kv()
        .range(RangeRequest {
            key: key.to_owned().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs
        .pop()
        .expect("a's key in etcd");
    assert_eq!(
        kv.create_revision, rev,
        "ETCD_ELECTION_REV is the key's create revision"
    );
    assert_eq!(&kv.value[..], b"a");

    std::fs::write(dir.0.path().join("go-a"), "").unwrap();
    let status = within(10.0, "a to exit", a.wait()).await.unwrap();
    assert_eq!(status.code(), Some(3), "a exits with its command's code");
    wait_for_line(&log, 10.0, "b's command", |l| l.starts_with("start b")).await;
    let order: Vec<String> = lines(&log)
        .iter()
        .filter(|l| !l.starts_with("pid "))
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        order,
        ["start a", "end a", "start b"],
        "one command at a time"
    );
    std::fs::write(dir.0.path().join("go-b"), "").unwrap();
    let status = within(10.0, "b to exit", b.wait()).await.unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(
        keys_under(&client, &format!("/elections/{name}/"))
            .await
            .is_empty()
    );
    assert!(lease_ids(&client).await.is_empty(), "no lease left");
    assert_no_child_left(&log);
}

/// Leadership lost (our key deleted by someone): the command gets SIGTERM,
/// `elect` campaigns again and runs it again on its next term. SIGTERM to
/// `elect` is forwarded; it exits with the command's status.
#[tokio::test]
async fn a_lost_term_stops_the_command_and_the_next_term_runs_it_again() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let dir = TempDir::new();
    let name = unique("rerun");
    let log = dir.0.path().join("log");
    let script = r#"trap 'echo "term $ETCD_ELECTION_REV" >> log; exit 0' TERM
        echo "pid $ID $$" >> log
        echo "start $ETCD_ELECTION_KEY $ETCD_ELECTION_REV" >> log
        while :; do sleep 0.02; done"#;
    // A deleted key lets another lead at once: the default grace is 0.
    let elect = elect_sh(
        &etcd.endpoint(),
        &name,
        "a",
        5,
        &["--grace", "5"],
        dir.0.path(),
        script,
    );
    let first = wait_for_line(&log, 10.0, "the first run", |l| l.starts_with("start")).await;
    let key = first.split(' ').nth(1).unwrap().to_owned();
    let rev1: i64 = first.split(' ').nth(2).unwrap().parse().unwrap();
    client
        .kv()
        .delete_range(DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for_line(&log, 10.0, "SIGTERM on the loss", |l| {
        l == format!("term {rev1}")
    })
    .await;
    let second = wait_for_line(&log, 10.0, "the second run", |l| {
        l.starts_with("start") && !l.ends_with(&format!(" {rev1}"))
    })
    .await;
    let rev2: i64 = second.split(' ').nth(2).unwrap().parse().unwrap();
    assert!(rev2 > rev1);
    signal(&elect, libc::SIGTERM);
    let mut elect = elect;
    let status = within(10.0, "elect to exit", elect.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0), "the command's status");
    assert!(
        lines(&log).contains(&format!("term {rev2}")),
        "SIGTERM forwarded: {:?}",
        lines(&log)
    );
    assert!(
        keys_under(&client, &format!("/elections/{name}/"))
            .await
            .is_empty()
    );
    assert_no_child_left(&log);
}

/// A leader cut off from etcd (a blackhole) whose command ignores SIGTERM:
/// the command gets SIGTERM, then SIGKILL, before the other candidate's
/// command starts (`etcdctl lock -- COMMAND` lets it run on). Prints the
/// time from the blackhole to the SIGTERM, and the margin between the
/// first command's last sign of life and the second's start.
#[tokio::test]
async fn a_cut_off_leaders_command_is_killed_before_the_next_leaders_starts() {
    let etcd = etcd().await;
    let proxy = etcdutil::testing::Proxy::start(etcd.client_addr())
        .await
        .unwrap();
    let dir = TempDir::new();
    let name = unique("blackhole-cmd");
    let log = dir.0.path().join("log");
    // Logs SIGTERM but carries on, and ticks into the log (with the time in
    // ns) while it runs, until the file `stop` exists.
    let script = r#"trap 'echo "term $ID $(date +%s%N)" >> log' TERM
        echo "pid $ID $$" >> log
        echo "start $ID $(date +%s%N)" >> log
        while [ ! -e stop ]; do echo "tick $ID $(date +%s%N)" >> log; sleep 0.01; done"#;
    let mut a = elect_sh(&proxy.endpoint(), &name, "a", 2, &[], dir.0.path(), script);
    wait_for_line(&log, 10.0, "a's command", |l| l.starts_with("start a")).await;
    let mut b = elect_sh(&etcd.endpoint(), &name, "b", 2, &[], dir.0.path(), script);
    let now_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64
    };
    proxy.blackhole().await.unwrap();
    let blackholed = now_ns();
    wait_for_line(&log, 15.0, "b's command", |l| l.starts_with("start b")).await;
    let all = lines(&log);
    let at = |line: &str| -> i64 { line.rsplit(' ').next().unwrap().parse().unwrap() };
    let b_started = all.iter().position(|l| l.starts_with("start b")).unwrap();
    assert!(
        !all[b_started..].iter().any(|l| l.starts_with("tick a")),
        "a's command still ran after b's started"
    );
    let term = all
        .iter()
        .find(|l| l.starts_with("term a"))
        .expect("a's command got SIGTERM");
    let last_tick = all[..b_started]
        .iter()
        .rfind(|l| l.starts_with("tick a"))
        .expect("a's command ticked");
    let ms = |ns: i64| ns as f64 / 1e6;
    println!(
        "blackhole at 0: SIGTERM to a's command at {:.0} ms, its last tick at {:.0} ms, \
         b's command started at {:.0} ms (margin {:.0} ms)",
        ms(at(term) - blackholed),
        ms(at(last_tick) - blackholed),
        ms(at(&all[b_started]) - blackholed),
        ms(at(&all[b_started]) - at(last_tick)),
    );
    proxy.restore().await.unwrap();
    std::fs::write(dir.0.path().join("stop"), "").unwrap();
    signal(&a, libc::SIGTERM);
    signal(&b, libc::SIGTERM);
    within(10.0, "a to exit", a.wait()).await.unwrap();
    within(10.0, "b to exit", b.wait()).await.unwrap();
    assert_no_child_left(&log);
}
