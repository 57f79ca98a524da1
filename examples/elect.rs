//! Campaign in an election and print every event as one JSON line.
//!
//! ```text
//! cargo run --example elect -- ELECTION CANDIDATE [--ttl SECS]
//! cargo run --example elect --features metrics -- ELECTION CANDIDATE --metrics 127.0.0.1:9900
//! cargo run --example elect -- ELECTION CANDIDATE [--ttl SECS] [--grace SECS] -- COMMAND [ARGS...]
//! ```
//!
//! **With a command**, it runs the command as a child process while it
//! leads, with `ETCD_ELECTION_KEY` (our key) and `ETCD_ELECTION_REV` (its
//! create revision, the fencing token) in its environment, after `etcdctl
//! lock`'s `ETCD_LOCK_KEY` and `ETCD_LOCK_REV`. The child has stdin, stdout
//! and stderr; the events go to stderr.
//! - When leadership is lost, the child gets SIGTERM at once, then SIGKILL
//!   after `--grace` seconds (default: what remains until another candidate
//!   can lead, at least 0). Once the child has exited, it campaigns again,
//!   and runs the command again when it leads again.
//! - When the child exits by itself, it hands over (resigns), closes, and
//!   exits with the child's status: its code, or 128 + the signal.
//! - SIGTERM or SIGINT is forwarded to the child; once the child has
//!   exited, it closes and exits with the child's status. While no child
//!   runs, it closes and exits 128 + the signal.
//!
//! With `--server-side`, the election campaigns through etcd's own
//! `Campaign` and follows through its `Observe` (see `Engine::ServerSide`;
//! refused with a user and password). A flag with no value, accepted
//! anywhere after the two names.
//!
//! With `--metrics ADDR` (feature `metrics`), the crate's metrics are served
//! as Prometheus text on `http://ADDR/metrics`.
//!
//! etcd comes from the `ETCD3_*` environment variables (default
//! 127.0.0.1:2379); etcd need not be up yet: the candidate joins once it is,
//! printing an error event per failed attempt meanwhile. Reads commands from
//! stdin, one per line: `concede`, `proclaim DATA`, `close`. End of stdin
//! changes nothing. SIGINT, SIGTERM or `close` closes the election (both
//! closing events are printed) and exits 0 within TTL + 1 s, whatever stdin
//! is (a terminal, a pipe left open, /dev/null). A bad `ETCD3_*` value or
//! argument exits 2 with the message.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use etcdutil::{Election, ElectionConfig, ElectionEvent, Engine, new_client, new_election_async};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

#[path = "common/cli.rs"]
mod cli;
use cli::{error_chain, stdin_lines};

const USAGE: &str = "usage: elect ELECTION CANDIDATE [--ttl SECS] [--server-side] [--metrics ADDR] [--grace SECS] [-- COMMAND [ARGS...]]";

/// Exits 2 with the message and the usage.
fn bad_args(message: &str) -> ! {
    eprintln!("elect: {message}\n{USAGE}");
    std::process::exit(2);
}

/// Serves the metrics as Prometheus text on `http://addr/metrics`.
#[cfg(feature = "metrics")]
fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "metrics"))]
fn serve_metrics(_: std::net::SocketAddr) -> Result<(), String> {
    Err("built without the `metrics` feature (cargo run --features metrics ...)".into())
}

fn print_event(event: &ElectionEvent, to_stderr: bool) {
    let line = serde_json::json!({
        "is_leader": event.is_leader,
        "is_done": event.is_done,
        "leader_key": event.leader_key,
        "leader_data": event.leader_data,
        "err": event.err.as_ref().map(|error| error_chain(error)),
    });
    if to_stderr {
        eprintln!("{line}");
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// SIGINT and SIGTERM, listened for from the start.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

struct Args {
    election: String,
    candidate: String,
    ttl: i64,
    grace: Option<Duration>,
    engine: Engine,
    command: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = std::env::args().skip(1);
    let mut names = Vec::new();
    let mut ttl = 5;
    let mut grace = None;
    let mut engine = Engine::ClientSide;
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .unwrap_or_else(|| bad_args(&format!("{flag} needs a value")))
        };
        match arg.as_str() {
            "--" => {
                command = args.by_ref().collect();
                if command.is_empty() {
                    bad_args("expected a COMMAND after --");
                }
            }
            "--server-side" => engine = Engine::ServerSide,
            "--ttl" => {
                let v = value("--ttl");
                ttl = v.parse().unwrap_or_else(|_| {
                    bad_args(&format!("--ttl {v:?} is not a whole number of seconds"))
                });
            }
            "--grace" => {
                let v = value("--grace");
                let secs: f64 = v.parse().unwrap_or_else(|_| {
                    bad_args(&format!("--grace {v:?} is not a number of seconds"))
                });
                if !(secs.is_finite() && secs >= 0.0) {
                    bad_args(&format!("--grace {v:?} is not 0 or more seconds"));
                }
                grace = Some(Duration::from_secs_f64(secs));
            }
            "--metrics" => {
                let v = value("--metrics");
                let addr = v.parse().unwrap_or_else(|_| {
                    bad_args(&format!(
                        "--metrics {v:?} is not an address like 127.0.0.1:9900"
                    ))
                });
                if let Err(error) = serve_metrics(addr) {
                    eprintln!("elect: --metrics {v}: {error}");
                    std::process::exit(2);
                }
            }
            flag if flag.starts_with("--") => bad_args(&format!("unknown option {flag:?}")),
            _ if names.len() < 2 => names.push(arg),
            _ => bad_args(&format!(
                "unexpected argument {arg:?} (put the command after --)"
            )),
        }
    }
    let [election, candidate]: [String; 2] = names
        .try_into()
        .unwrap_or_else(|_| bad_args("expected ELECTION and CANDIDATE"));
    Args {
        election,
        candidate,
        ttl,
        grace,
        engine,
        command,
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    // Before anything else: a SIGTERM that comes while the election starts
    // must close it, not kill the process with the key left in etcd.
    let mut signals = Signals {
        interrupt: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        terminate: signal(SignalKind::terminate()).expect("SIGTERM handler"),
    };
    let with_command = !args.command.is_empty();

    // Lazy: returns without waiting for etcd, fails only on a bad config.
    let client = match new_client(None).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("elect: {}", error_chain(&error));
            std::process::exit(2);
        }
    };
    let config = ElectionConfig {
        event_observer: Some(Arc::new(move |event| print_event(&event, with_command))),
        election: args.election.clone(),
        candidate: args.candidate.clone(),
        ttl: args.ttl,
        engine: args.engine,
    };
    let election = match new_election_async(&client, config) {
        Ok(election) => election,
        Err(error) => {
            eprintln!("elect: {}", error_chain(&error));
            std::process::exit(2);
        }
    };
    let code = if with_command {
        run_command(&election, &args, &mut signals).await
    } else {
        follow_stdin(&election, &mut signals).await
    };
    // Closes the election (and anything else made from the client): resign,
    // revoke, both closing events, within TTL + 1 s.
    client.close().await;
    drop(election);
    // The stdin thread may still be blocked in read(2): exit without it.
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Campaigns, taking commands from stdin, until a signal or `close`.
async fn follow_stdin(election: &Election, signals: &mut Signals) -> i32 {
    let Signals {
        interrupt,
        terminate,
    } = signals;
    let mut lines = stdin_lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = interrupt.recv() => return 0,
            _ = terminate.recv() => return 0,
            line = lines.recv(), if stdin_open => match line {
                Some(line) => {
                    let line = line.trim();
                    match line.split_once(' ').unwrap_or((line, "")) {
                        ("concede", _) => {
                            if let Err(error) = election.concede().await {
                                eprintln!("elect: concede: {}", error_chain(&error));
                            }
                        }
                        ("proclaim", data) => {
                            if let Err(error) = election.proclaim(data).await {
                                eprintln!("elect: proclaim: {}", error_chain(&error));
                            }
                        }
                        ("close", _) => return 0,
                        ("", _) => {}
                        (other, _) => eprintln!("elect: unknown command {other:?} (concede|proclaim DATA|close)"),
                    }
                }
                // End of stdin changes nothing: keep campaigning until a signal.
                None => stdin_open = false,
            },
        }
    }
}

/// Runs the command each time we lead, until it exits by itself or a signal
/// comes; returns the exit code.
async fn run_command(election: &Election, args: &Args, signals: &mut Signals) -> i32 {
    let Signals {
        interrupt,
        terminate,
    } = signals;
    loop {
        let leadership = tokio::select! {
            leadership = election.leadership() => leadership,
            _ = interrupt.recv() => return 128 + libc::SIGINT,
            _ = terminate.recv() => return 128 + libc::SIGTERM,
        };
        let Ok(leadership) = leadership else {
            return 1; // closed: nothing more to lead
        };
        let mut child = match tokio::process::Command::new(&args.command[0])
            .args(&args.command[1..])
            .env("ETCD_ELECTION_KEY", leadership.key())
            .env("ETCD_ELECTION_REV", leadership.rev().to_string())
            .spawn()
        {
            Ok(child) => child,
            Err(error) => {
                eprintln!("elect: cannot run {:?}: {error}", args.command[0]);
                return 127;
            }
        };
        let pid = child.id().expect("running") as i32;
        let send = |signal: i32| {
            // SAFETY: kill(2) on our own child, which we have not reaped yet.
            unsafe { libc::kill(pid, signal) };
        };
        let lost = leadership.lost();
        let mut lost_seen = false;
        let mut signalled = false;
        let mut kill_at: Option<Instant> = None;
        let status: ExitStatus = loop {
            tokio::select! {
                status = child.wait() => break status.expect("wait for the command"),
                _ = interrupt.recv() => { signalled = true; send(libc::SIGINT) }
                _ = terminate.recv() => { signalled = true; send(libc::SIGTERM) }
                () = lost.wait(), if !lost_seen => {
                    lost_seen = true;
                    send(libc::SIGTERM);
                    let now = Instant::now();
                    let grace = args.grace.unwrap_or_else(|| {
                        let earliest = election.next_leader_earliest().unwrap_or(now);
                        earliest.saturating_duration_since(now)
                    });
                    eprintln!("elect: leadership lost ({}); SIGTERM to the command, SIGKILL in {grace:?}", leadership.key());
                    kill_at = Some(now + grace);
                }
                () = tokio::time::sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                    send(libc::SIGKILL);
                    kill_at = None;
                }
            }
        };
        let code = status
            .code()
            .or_else(|| status.signal().map(|signal| 128 + signal))
            .unwrap_or(1);
        if lost_seen && !signalled {
            continue; // campaign again; the command runs again when we lead
        }
        // It exited by itself (or on our signal): hand over and exit as it did.
        return code;
    }
}
