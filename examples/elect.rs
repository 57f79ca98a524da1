//! Campaign in an election and print every event as one JSON line.
//!
//! ```text
//! cargo run --example elect -- ELECTION CANDIDATE [--ttl SECS]
//! ```
//!
//! etcd comes from the `ETCD3_*` environment variables (default
//! 127.0.0.1:2379). Reads commands from stdin, one per line: `concede`,
//! `proclaim DATA`, `close`. End of stdin changes nothing. SIGINT or SIGTERM
//! closes the election (both closing events are printed) and exits 0.

use std::io::Write;
use std::sync::Arc;

use etcdutil::{ElectionConfig, ElectionEvent, new_client, new_election_async};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::signal::unix::{SignalKind, signal};

fn usage() -> ! {
    eprintln!("usage: elect ELECTION CANDIDATE [--ttl SECS]");
    std::process::exit(2);
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
    let err = match &event.err {
        Some(error) => json_string(&error_chain(error)),
        None => "null".into(),
    };
    let line = format!(
        "{{\"is_leader\":{},\"is_done\":{},\"leader_key\":{},\"leader_data\":{},\"err\":{}}}",
        event.is_leader,
        event.is_done,
        json_string(&event.leader_key),
        json_string(&event.leader_data),
        err
    );
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
        match (arg.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--ttl", Some(secs)) => ttl = secs,
            _ => usage(),
        }
    }

    let client = match new_client(None).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("elect: {}", error_chain(&error));
            std::process::exit(1);
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
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
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
                Ok(None) | Err(_) => stdin_open = false,
            },
        }
    }
    election.close().await;
}
