//! What the `elect` and `lock` examples share: reading stdin and printing
//! an error with its causes.

use tokio::sync::mpsc;

/// The error with its causes, `outer: inner: ...`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// stdin's lines, read on a thread of their own. tokio's stdin reads on its
/// blocking pool, which the runtime waits for at shutdown: a pipe held open
/// by a supervisor (or a terminal) would keep the process from exiting.
pub fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
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
