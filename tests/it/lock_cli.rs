//! The `lock` example driven from outside, as `etcdctl lock` is: it prints
//! its key and holds the lock until `unlock` or a signal, or runs a command
//! while it holds it, and it excludes `etcdctl lock` both ways. `cargo test`
//! builds the examples first; run `cargo build --all-features --example
//! lock` before `--test it lock_cli::` alone.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use crate::common::*;
use crate::mutex::{lock_keys, lock_name, signal, until_waiters};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// `target/<profile>/examples/lock`, beside this test's `deps/` folder.
fn lock_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join("lock");
    assert!(
        path.exists(),
        "{} is missing: cargo build --all-features --example lock",
        path.display()
    );
    path
}

/// `lock ARGS...` against `endpoint`, stdin and stdout piped.
fn spawn_lock(endpoint: &str, args: &[&str]) -> Child {
    Command::new(lock_binary())
        .args(args)
        .env("ETCD3_ENDPOINT", endpoint)
        .env("ETCD3_DIAL_TIMEOUT", "1s")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn lock")
}

/// The first line `child` prints.
async fn first_line(child: &mut Child, what: &str) -> String {
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    within(10.0, what, lines.next_line())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no line: {what}"))
}

/// The lines of `path`, or none if it does not exist yet.
fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Waits until `path` has a line equal to `line`.
async fn until_line(path: &Path, line: &str) {
    eventually(10.0, &format!("{line:?} in {}", path.display()), || async {
        lines_of(path).iter().any(|l| l == line)
    })
    .await;
}

/// Without a command: prints the key once it holds the lock, and holds it
/// until `unlock` on stdin (EOF changes nothing); then exits 0, no key left.
#[tokio::test]
async fn prints_the_key_and_holds_until_unlock_on_stdin() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("cli-unlock");
    let mut lock = spawn_lock(&etcd.endpoint(), &[&name, "--ttl", "5"]);
    let key = first_line(&mut lock, "the key").await;
    assert!(key.starts_with(&format!("{name}/")), "{key}");
    assert_eq!(lock_keys(&client, &name).await, vec![key.clone()]);
    let mut stdin = lock.stdin.take().unwrap();
    stdin.write_all(b"unlock\n").await.unwrap();
    let status = within(10.0, "lock exits", lock.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(lock_keys(&client, &name).await.is_empty());
    assert!(lease_ids(&client).await.is_empty(), "the lease is revoked");
}

/// SIGTERM and SIGINT unlock and exit 0, with stdin at EOF all along.
#[tokio::test]
async fn sigterm_and_sigint_unlock_and_exit_0() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let name = lock_name("cli-signal");
        let mut lock = spawn_lock(&etcd.endpoint(), &[&name]);
        drop(lock.stdin.take()); // EOF: changes nothing
        let key = first_line(&mut lock, "the key").await;
        assert_eq!(lock_keys(&client, &name).await, vec![key]);
        signal(&lock, sig);
        let status = within(10.0, "lock exits", lock.wait()).await.unwrap();
        assert_eq!(status.code(), Some(0), "signal {sig}");
        assert!(lock_keys(&client, &name).await.is_empty());
    }
}

/// With a command: the child gets `ETCD_LOCK_KEY` and `ETCD_LOCK_REV` (the
/// key's create revision), and its exit code is the CLI's.
#[tokio::test]
async fn a_command_gets_the_key_and_rev_and_its_exit_code_is_ours() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("cli-command");
    let dir = TempDir::new();
    let seen = dir.missing("seen");
    let script = format!(
        "etcdctl --endpoints {} get --write-out=fields \"$ETCD_LOCK_KEY\" | grep CreateRevision > '{}'; echo \"$ETCD_LOCK_KEY $ETCD_LOCK_REV\" >> '{}'; exit 3",
        etcd.endpoint(),
        seen.display(),
        seen.display()
    );
    let lock = spawn_lock(&etcd.endpoint(), &[&name, "--", "sh", "-c", &script]);
    let output = within(10.0, "lock exits", lock.wait_with_output())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let lines = lines_of(&seen);
    let [create_rev, env] = &lines[..] else {
        panic!("{lines:?}")
    };
    let (key, rev) = env.split_once(' ').unwrap();
    assert!(key.starts_with(&format!("{name}/")), "{key}");
    assert_eq!(create_rev.trim(), format!("\"CreateRevision\" : {rev}"));
    assert!(lock_keys(&client, &name).await.is_empty());

    // A child killed by a signal: 128 + the signal.
    let lock = spawn_lock(
        &etcd.endpoint(),
        &[&name, "--", "sh", "-c", "kill -KILL $$"],
    );
    let output = within(10.0, "lock exits", lock.wait_with_output())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(128 + libc::SIGKILL));
}

/// A child that records the TERM it gets, then exits `code`.
fn trapping_child(dir: &TempDir, code: i32) -> (String, PathBuf) {
    let log = dir.missing("log");
    let script = format!(
        "trap 'echo term >> \"{log}\"; exit {code}' TERM; echo started >> \"{log}\"; while :; do sleep 0.05; done",
        log = log.display()
    );
    (script, log)
}

/// SIGTERM to the CLI reaches the child; the CLI exits with its code, unlocked.
#[tokio::test]
async fn sigterm_to_the_cli_reaches_the_command() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("cli-forward");
    let dir = TempDir::new();
    let (script, log) = trapping_child(&dir, 7);
    let lock = spawn_lock(&etcd.endpoint(), &[&name, "--", "sh", "-c", &script]);
    until_line(&log, "started").await;
    signal(&lock, libc::SIGTERM);
    let output = within(10.0, "lock exits", lock.wait_with_output())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(7));
    assert_eq!(lines_of(&log), vec!["started", "term"]);
    assert!(lock_keys(&client, &name).await.is_empty());
}

/// The lock lost to a blackhole: the child gets SIGTERM while etcd still
/// holds our lease and key (so before anyone else can get the lock).
#[tokio::test]
async fn a_lost_lock_stops_the_command_before_etcd_expires_the_lease() {
    let etcd = etcd().await;
    let direct = client(&etcd).await;
    let proxy = etcdutil::testing::Proxy::start(etcd.client_addr())
        .await
        .unwrap();
    let name = lock_name("cli-lost");
    let dir = TempDir::new();
    let (script, log) = trapping_child(&dir, 0);
    let lock = spawn_lock(
        &proxy.endpoint(),
        &[&name, "--ttl", "3", "--", "sh", "-c", &script],
    );
    until_line(&log, "started").await;
    let key = lock_keys(&direct, &name).await.pop().expect("our key");
    proxy.blackhole().await.unwrap();
    let blackholed_at = Instant::now();
    eventually(10.0, "the child gets SIGTERM", || async {
        lines_of(&log).iter().any(|l| l == "term")
    })
    .await;
    let termed_at = Instant::now();
    let keys = lock_keys(&direct, &name).await;
    assert!(
        keys.contains(&key),
        "etcd expired our lease first: {keys:?}"
    );
    println!(
        "lock CLI: child got SIGTERM {:?} after the blackhole (TTL 3 s); our key was still in etcd",
        termed_at - blackholed_at
    );
    let status = within(10.0, "lock exits", lock.wait_with_output())
        .await
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(0), "the child's code");
}

/// `etcdctl lock` and ours, both running a command that appends to one
/// file while it holds the lock, in both orders: the second's command runs
/// only after the first's ended. The first's command ends only once the
/// second is queued in etcd, so the second really waited.
#[tokio::test]
async fn ours_and_etcdctl_lock_exclude_each_other_in_both_orders() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    for ours_first in [true, false] {
        let name = lock_name("cli-interop");
        let dir = TempDir::new();
        let log = dir.missing("log");
        let go = dir.missing("go");
        let holder = |who: &str| {
            format!(
                "echo start {who} >> '{log}'; while [ ! -e '{go}' ]; do sleep 0.02; done; echo end {who} >> '{log}'",
                log = log.display(),
                go = go.display()
            )
        };
        let (ours_script, ctl_script) = (holder("ours"), holder("ctl"));
        let spawn_ours = || spawn_lock(&etcd.endpoint(), &[&name, "--", "sh", "-c", &ours_script]);
        let spawn_ctl = || {
            Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &etcd.endpoint(), "lock", &name])
                .args(["--", "sh", "-c", &ctl_script])
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("etcdctl")
        };
        let (first, second, order) = if ours_first {
            let first = spawn_ours();
            until_line(&log, "start ours").await;
            (first, spawn_ctl(), ["ours", "ctl"])
        } else {
            let first = spawn_ctl();
            until_line(&log, "start ctl").await;
            (first, spawn_ours(), ["ctl", "ours"])
        };
        until_waiters(&client, &name, 2).await;
        assert_eq!(lines_of(&log), vec![format!("start {}", order[0])]);
        std::fs::write(&go, "").unwrap();
        for child in [first, second] {
            let output = within(10.0, "a holder exits", child.wait_with_output())
                .await
                .unwrap();
            assert!(output.status.success(), "{order:?}: {:?}", output.status);
        }
        let [a, b] = order;
        assert_eq!(
            lines_of(&log),
            vec![
                format!("start {a}"),
                format!("end {a}"),
                format!("start {b}"),
                format!("end {b}")
            ],
            "ours first: {ours_first}"
        );
        assert!(lock_keys(&client, &name).await.is_empty());
    }
}

/// Bad arguments exit 2 with a message naming what is wrong.
#[tokio::test]
async fn bad_arguments_exit_2_with_the_message() {
    for (args, message) in [
        (&[][..], "expected a lock NAME"),
        (&["jobs", "--ttl", "soon"][..], "--ttl \"soon\" is not"),
        (&["jobs", "--ttl", "-1"][..], "SessionConfig.ttl=-1"),
        (
            &["jobs", "--grace", "-2"][..],
            "--grace \"-2\" is not 0 or more",
        ),
        (&["jobs", "--"][..], "expected a COMMAND after --"),
        (&["jobs", "--bogus"][..], "unknown option \"--bogus\""),
        (&[""][..], "Mutex name=\"\" is not a non-empty lock name"),
    ] {
        let output = Command::new(lock_binary())
            .args(args)
            .env("ETCD3_ENDPOINT", "127.0.0.1:1")
            .stdin(Stdio::null())
            .output();
        let output = within(10.0, "lock to exit", output).await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let output = Command::new(lock_binary())
        .args(["jobs"])
        .env("ETCD3_DIAL_TIMEOUT", "soon")
        .stdin(Stdio::null())
        .output();
    let output = within(10.0, "lock to exit", output).await.unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ETCD3_DIAL_TIMEOUT='soon'"), "{stderr}");
}
