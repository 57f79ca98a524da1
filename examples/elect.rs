//! Campaign in an election and print every event as one JSON line.
//!
//! ```text
//! cargo run --example elect -- ELECTION CANDIDATE [--ttl SECS]
//! cargo run --example elect --features metrics -- ELECTION CANDIDATE --metrics 127.0.0.1:9900
//! ```
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
use std::sync::Arc;

use etcdutil::{ElectionConfig, ElectionEvent, new_client, new_election_async};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

fn usage() -> ! {
    eprintln!("usage: elect ELECTION CANDIDATE [--ttl SECS] [--metrics ADDR]");
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

/// The error with its causes, `outer: inner: ...`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn print_event(event: &ElectionEvent) {
    let line = serde_json::json!({
        "is_leader": event.is_leader,
        "is_done": event.is_done,
        "leader_key": event.leader_key,
        "leader_data": event.leader_data,
        "err": event.err.as_ref().map(|error| error_chain(error)),
    });
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(election), Some(candidate)) = (args.next(), args.next()) else {
        usage()
    };
    let mut ttl = 5;
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--ttl" => ttl = value.parse().unwrap_or_else(|_| usage()),
            "--metrics" => {
                let addr = value.parse().unwrap_or_else(|_| usage());
                if let Err(error) = serve_metrics(addr) {
                    eprintln!("elect: --metrics {value}: {error}");
                    std::process::exit(2);
                }
            }
            _ => usage(),
        }
    }

    // Lazy: returns without waiting for etcd, fails only on a bad config.
    let client = match new_client(None).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("elect: {}", error_chain(&error));
            std::process::exit(2);
        }
    };
    let config = ElectionConfig {
        event_observer: Some(Arc::new(|event| print_event(&event))),
        election,
        candidate,
        ttl,
    };
    let election = match new_election_async(&client, config) {
        Ok(election) => election,
        Err(error) => {
            eprintln!("elect: {}", error_chain(&error));
            std::process::exit(2);
        }
    };

    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut lines = stdin_lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
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
                        ("close", _) => break,
                        ("", _) => {}
                        (other, _) => eprintln!("elect: unknown command {other:?} (concede|proclaim DATA|close)"),
                    }
                }
                // End of stdin changes nothing: keep campaigning until a signal.
                None => stdin_open = false,
            },
        }
    }
    // Closes the election (and anything else made from the client): resign,
    // revoke, both closing events, within TTL + 1 s.
    client.close().await;
    drop(election);
    // The stdin thread may still be blocked in read(2): exit without it.
    let _ = std::io::stdout().flush();
    std::process::exit(0);
}

/// stdin's lines, read on a thread of their own. tokio's stdin reads on its
/// blocking pool, which the runtime waits for at shutdown: a pipe held open
/// by a supervisor (or a terminal) would keep the process from exiting.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (sender, lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}
