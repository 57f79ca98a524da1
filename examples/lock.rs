//! Take a lock, as `etcdctl lock` does, and hold it, or run a command while
//! holding it.
//!
//! ```text
//! cargo run --example lock -- NAME [--ttl SECS] [--grace SECS] [-- COMMAND [ARGS...]]
//! ```
//!
//! The keys are etcd's recipe's, `NAME/<lease hex>`, so this lock, `etcdctl
//! lock NAME`, Go's `concurrency.Mutex` and etcd's Lock service exclude each
//! other. etcd comes from the `ETCD3_*` environment variables (default
//! 127.0.0.1:2379). `--ttl` is the session's lease TTL (default 10, as
//! etcdctl's).
//!
//! - **Without a command**, it prints the key on stdout once it holds the
//!   lock (one line), and holds it until SIGTERM, SIGINT or a line `unlock`
//!   on stdin; then it unlocks and exits 0. End of stdin changes nothing (a
//!   supervisor may give it `/dev/null`): only a signal or `unlock` ends it.
//!   If the lock is lost, it says so on stderr and exits 1.
//! - **With a command**, it runs the command while it holds the lock, with
//!   `ETCD_LOCK_KEY` (the key) and `ETCD_LOCK_REV` (the key's create
//!   revision, the fencing token) in its environment, and stdin, stdout and
//!   stderr its own. When the lock is lost, the child gets SIGTERM at once,
//!   then SIGKILL after `--grace` seconds (default: what remains until etcd
//!   may expire our lease, at least 0). SIGTERM or SIGINT to this process is
//!   forwarded to the child. When the child has exited, it unlocks and exits
//!   with the child's status: its code, or 128 + the signal that ended it.
//!
//! SIGTERM or SIGINT while it waits for the lock withdraws (no key is left)
//! and exits 128 + the signal. A bad argument or `ETCD3_*` value exits 2
//! with the message; an error from etcd, 1.
//!
//! Unlike etcdctl, whose `ETCD_LOCK_REV` is the revision etcd was at when it
//! got the lock (the key's create revision only when nobody waited), ours is
//! always the key's create revision, so the child can fence its writes with
//! `etcdctl txn` on `c("$ETCD_LOCK_KEY") = "$ETCD_LOCK_REV"`.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use etcdutil::{Client, Mutex, Session, SessionConfig, new_client};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

#[path = "common/cli.rs"]
mod cli;
use cli::{error_chain, stdin_lines};

const USAGE: &str = "usage: lock NAME [--ttl SECS] [--grace SECS] [-- COMMAND [ARGS...]]";

/// Exits 2 with the message and the usage.
fn bad_args(message: &str) -> ! {
    eprintln!("lock: {message}\n{USAGE}");
    std::process::exit(2);
}

struct Args {
    name: String,
    ttl: i64,
    grace: Option<Duration>,
    command: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = std::env::args().skip(1);
    let mut name = None;
    let mut ttl = 10;
    let mut grace = None;
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--" => {
                command = args.by_ref().collect();
                if command.is_empty() {
                    bad_args("expected a COMMAND after --");
                }
            }
            "--ttl" => {
                let value = args
                    .next()
                    .unwrap_or_else(|| bad_args("--ttl needs a value"));
                ttl = value.parse().unwrap_or_else(|_| {
                    bad_args(&format!("--ttl {value:?} is not a whole number of seconds"))
                });
            }
            "--grace" => {
                let value = args
                    .next()
                    .unwrap_or_else(|| bad_args("--grace needs a value"));
                let secs: f64 = value.parse().unwrap_or_else(|_| {
                    bad_args(&format!("--grace {value:?} is not a number of seconds"))
                });
                if !(secs.is_finite() && secs >= 0.0) {
                    bad_args(&format!("--grace {value:?} is not 0 or more seconds"));
                }
                grace = Some(Duration::from_secs_f64(secs));
            }
            flag if flag.starts_with("--") => bad_args(&format!("unknown option {flag:?}")),
            _ if name.is_none() => name = Some(arg),
            _ => bad_args(&format!(
                "unexpected argument {arg:?} (put the command after --)"
            )),
        }
    }
    let Some(name) = name else {
        bad_args("expected a lock NAME")
    };
    Args {
        name,
        ttl,
        grace,
        command,
    }
}

/// Closes everything made from the client (unlocks, revokes the lease) and exits.
async fn exit(client: &Client, code: i32) -> ! {
    client.close().await;
    let _ = std::io::stdout().flush();
    // The stdin thread may still be blocked in read(2): exit without it.
    std::process::exit(code);
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    // Before anything else: a signal that comes while the session starts
    // must close it, not kill the process with its lease left in etcd.
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let setup_failed = |error: etcdutil::Error| -> ! {
        eprintln!("lock: {}", error_chain(&error));
        std::process::exit(2);
    };
    // Lazy: returns without waiting for etcd, fails only on a bad config.
    let client = new_client(None).await.unwrap_or_else(|e| setup_failed(e));
    let session = Session::new(
        &client,
        SessionConfig {
            ttl: args.ttl,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| setup_failed(e));
    let mutex = Mutex::new(&session, args.name).unwrap_or_else(|e| setup_failed(e));

    let held = tokio::select! {
        held = mutex.lock() => held,
        _ = interrupt.recv() => exit(&client, 128 + libc::SIGINT).await,
        _ = terminate.recv() => exit(&client, 128 + libc::SIGTERM).await,
    };
    let held = match held {
        Ok(held) => held,
        Err(error) => {
            eprintln!("lock: {}", error_chain(&error));
            exit(&client, 1).await;
        }
    };
    let lost = mutex.lost();

    if args.command.is_empty() {
        {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{}", held.key);
            let _ = stdout.flush();
        }
        let mut lines = stdin_lines();
        let mut stdin_open = true;
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                () = lost.wait() => {
                    eprintln!("lock: lost the lock {}", held.key);
                    exit(&client, 1).await;
                }
                line = lines.recv(), if stdin_open => match line.as_deref().map(str::trim) {
                    Some("unlock") => break,
                    Some("") => {}
                    Some(other) => eprintln!("lock: unknown command {other:?} (unlock)"),
                    // End of stdin changes nothing: hold until a signal.
                    None => stdin_open = false,
                },
            }
        }
        let code = match mutex.unlock().await {
            Ok(_) => 0,
            Err(error) => {
                eprintln!("lock: unlock: {}", error_chain(&error));
                1
            }
        };
        exit(&client, code).await;
    }

    let mut child = match tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("ETCD_LOCK_KEY", &held.key)
        .env("ETCD_LOCK_REV", held.rev.to_string())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => {
            eprintln!("lock: cannot run {:?}: {error}", args.command[0]);
            let _ = mutex.unlock().await;
            exit(&client, 127).await;
        }
    };
    let pid = child.id().expect("running") as i32;
    let send = |signal: i32| {
        // SAFETY: kill(2) on our own child, which we have not reaped yet.
        unsafe { libc::kill(pid, signal) };
    };
    let mut lost_seen = false;
    let mut kill_at: Option<Instant> = None;
    let status: ExitStatus = loop {
        tokio::select! {
            status = child.wait() => break status.expect("wait for the command"),
            _ = interrupt.recv() => send(libc::SIGINT),
            _ = terminate.recv() => send(libc::SIGTERM),
            () = lost.wait(), if !lost_seen => {
                lost_seen = true;
                send(libc::SIGTERM);
                let now = Instant::now();
                let grace = args.grace.unwrap_or_else(|| {
                    let earliest = mutex.next_owner_earliest().unwrap_or(now);
                    earliest.saturating_duration_since(now)
                });
                eprintln!("lock: lost the lock {}; SIGTERM to the command, SIGKILL in {grace:?}", held.key);
                kill_at = Some(now + grace);
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                send(libc::SIGKILL);
                kill_at = None;
            }
        }
    };
    if let Err(error) = mutex.unlock().await {
        eprintln!("lock: unlock: {}", error_chain(&error));
    }
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    exit(&client, code).await;
}
