//! Helpers shared by the integration tests. Every test starts its own etcd
//! (free loopback ports, own data dir) or uses its own election name, so the
//! suite runs in parallel.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcdutil::proto::etcdserverpb::{
    AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, LeaseLeasesRequest,
    LeaseTimeToLiveRequest, RangeRequest,
};
use etcdutil::testing::{Etcd, Proxy};
use etcdutil::{
    Client, Config, ConfigError, Election, ElectionConfig, ElectionEvent, Engine, Error,
    EventObserver, NO_LEASE, SessionObserver, new_config_with_env, new_election,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Fills `cfg`'s blanks from `vars` alone, as `new_client` would from the
/// environment (the tests never touch the process's own).
pub fn fill(cfg: Option<Config>, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    new_config_with_env(cfg, |name| {
        vars.iter()
            .find(|(var, _)| *var == name)
            .map(|(_, value)| value.to_string())
    })
}

/// A config from `vars` alone.
pub fn from_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    fill(None, vars)
}

/// A directory of files for one test, removed on drop.
pub struct TempDir(pub tempfile::TempDir);

impl TempDir {
    pub fn new() -> TempDir {
        TempDir(
            tempfile::Builder::new()
                .prefix("etcdutil-test-")
                .tempdir()
                .expect("temp dir"),
        )
    }

    /// Writes `contents` to the file `name` in it; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> std::path::PathBuf {
        let path = self.missing(name);
        std::fs::write(&path, contents).expect("write a test file");
        path
    }

    /// The path of a file `name` in it, not written.
    pub fn missing(&self, name: &str) -> std::path::PathBuf {
        self.0.path().join(name)
    }
}

/// A real etcd for one test.
pub async fn etcd() -> Etcd {
    Etcd::start().await.expect("start etcd")
}

/// A real etcd serving clients over TLS, requiring a client certificate if
/// `client_cert_auth`.
pub async fn tls_etcd(client_cert_auth: bool) -> Etcd {
    Etcd::builder()
        .tls(true)
        .client_cert_auth(client_cert_auth)
        .start()
        .await
        .expect("start etcd")
}

/// A client of `etcd`, directly.
pub async fn client(etcd: &Etcd) -> Client {
    Client::connect(etcd.config()).await.expect("connect")
}

/// A fault proxy in front of `etcd` and a client that talks through it.
pub async fn proxied_client(etcd: &Etcd) -> (Proxy, Client) {
    let proxy = Proxy::start(etcd.client_addr()).await.expect("start proxy");
    let config = Config {
        endpoints: vec![proxy.endpoint()],
        ..etcd.config()
    };
    let client = Client::connect(config)
        .await
        .expect("connect through proxy");
    (proxy, client)
}

/// Unique per call, so tests never share an election or a key.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits for `fut` up to `secs` seconds, failing the test with `what` if it does not finish.
pub async fn within<T>(secs: f64, what: &str, fut: impl Future<Output = T>) -> T {
    match timeout(Duration::from_secs_f64(secs), fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {secs} s waiting for {what}"),
    }
}

/// Polls `check` every 20 ms until it is true, for at most `secs` seconds.
pub async fn eventually<F, Fut>(secs: f64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(secs, what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Every message of `err`'s chain: itself, its source, the source's source...
pub fn chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut messages = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        messages.push(cause.to_string());
        source = cause.source();
    }
    messages
}

/// The keys and values under `prefix` (all of them for `""`), in key order.
pub async fn kvs_under(client: &Client, prefix: &str) -> Vec<(String, String)> {
    let (key, range_end) = match prefix.as_bytes() {
        [] => (vec![0], vec![0]),
        prefix => {
            let mut end = prefix.to_vec();
            *end.last_mut().unwrap() += 1;
            (prefix.to_vec(), end)
        }
    };
    let range = RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    };
    let response = client.kv().range(range).await.expect("Range").into_inner();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    response
        .kvs
        .iter()
        .map(|kv| (text(&kv.key), text(&kv.value)))
        .collect()
}

/// The keys under `prefix` (all of them for `""`), in key order.
pub async fn keys_under(client: &Client, prefix: &str) -> Vec<String> {
    kvs_under(client, prefix)
        .await
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

/// The ids of every lease etcd holds.
pub async fn lease_ids(client: &Client) -> Vec<i64> {
    let leases = client
        .lease()
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("LeaseLeases");
    leases
        .into_inner()
        .leases
        .iter()
        .map(|lease| lease.id)
        .collect()
}

/// Adds user `name` with `password` and grants it `role` (auth still off).
pub async fn add_user(client: &Client, name: &str, password: &str, role: &str) {
    let user = AuthUserAddRequest {
        name: name.into(),
        password: password.into(),
        options: None,
    };
    client.auth().user_add(user).await.expect("add user");
    let grant = AuthUserGrantRoleRequest {
        user: name.into(),
        role: role.into(),
    };
    client
        .auth()
        .user_grant_role(grant)
        .await
        .expect("grant role");
}

/// Turns etcd's auth on, with a `root` user whose password is `password`.
pub async fn enable_auth(etcd: &Etcd, password: &str) {
    let admin = client(etcd).await;
    add_user(&admin, "root", password, "root").await;
    admin
        .auth()
        .auth_enable(AuthEnableRequest {})
        .await
        .expect("enable auth");
}

/// The TTL etcd reports for a lease: -1 once it is gone.
pub async fn lease_ttl(client: &Client, id: i64) -> i64 {
    let request = LeaseTimeToLiveRequest { id, keys: false };
    client
        .lease()
        .lease_time_to_live(request)
        .await
        .expect("LeaseTimeToLive")
        .into_inner()
        .ttl
}

/// Records a session's observer calls, and fails if two ever overlap.
pub struct Recorder {
    pub events: mpsc::UnboundedReceiver<(i64, Option<Error>)>,
}

impl Recorder {
    pub fn new() -> (SessionObserver, Recorder) {
        let (sender, events) = mpsc::unbounded_channel();
        let inside = Arc::new(AtomicBool::new(false));
        let observer: SessionObserver = Arc::new(move |lease, error| {
            assert!(
                !inside.swap(true, Ordering::SeqCst),
                "observer calls overlap"
            );
            let _ = sender.send((lease, error));
            inside.store(false, Ordering::SeqCst);
        });
        (observer, Recorder { events })
    }

    pub async fn next(&mut self, secs: f64) -> (i64, Option<Error>) {
        within(secs, "a session observer call", self.events.recv())
            .await
            .expect("observer channel open")
    }

    /// Skips to the next lease gained; returns its id.
    pub async fn lease(&mut self, secs: f64) -> i64 {
        within(secs, "a lease", async {
            loop {
                let (lease, _) = self.events.recv().await.expect("observer channel open");
                if lease != NO_LEASE {
                    return lease;
                }
            }
        })
        .await
    }

    /// Skips to the next NO_LEASE; returns its error.
    pub async fn no_lease(&mut self, secs: f64) -> Option<Error> {
        within(secs, "NO_LEASE", async {
            loop {
                let (lease, error) = self.events.recv().await.expect("observer channel open");
                if lease == NO_LEASE {
                    return error;
                }
            }
        })
        .await
    }

    /// Everything reported so far, without waiting.
    pub fn drain(&mut self) -> Vec<(i64, Option<Error>)> {
        let mut all = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            all.push(event);
        }
        all
    }
}

// ---------------------------------------------------------------- elections

/// An election event observer, and the receiver of what it sees.
pub fn recorder() -> (EventObserver, mpsc::UnboundedReceiver<ElectionEvent>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (Arc::new(move |event| drop(sender.send(event))), receiver)
}

tokio::task_local! {
    /// The engine `config` gives elections made in this task: tests that run
    /// with both engines set it (see `both_engines!`).
    pub static ENGINE: Engine;
}

/// The engine of the test running in this task (the default if unset).
pub fn engine() -> Engine {
    ENGINE.try_with(|engine| *engine).unwrap_or_default()
}

/// Runs the test `$name` (an `async fn` without arguments) twice, as the
/// tests `$name::client_side` and `$name::server_side`: every election its
/// task makes with `config` uses that engine.
#[macro_export]
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn client_side() {
                $crate::common::ENGINE.scope(etcdutil::Engine::ClientSide, super::$name()).await
            }
            #[tokio::test]
            async fn server_side() {
                $crate::common::ENGINE.scope(etcdutil::Engine::ServerSide, super::$name()).await
            }
        }
    )*};
}

/// An election config with an observer.
pub fn config(
    election: &str,
    candidate: &str,
    ttl: i64,
    observer: EventObserver,
) -> ElectionConfig {
    ElectionConfig {
        event_observer: Some(observer),
        election: election.into(),
        candidate: candidate.into(),
        ttl,
        engine: engine(),
    }
}

/// Candidate `id` in `election`, once `new_election` returned, and its events.
pub async fn candidate(
    client: &Client,
    election: &str,
    id: &str,
    ttl: i64,
) -> (Election, mpsc::UnboundedReceiver<ElectionEvent>) {
    let (observer, events) = recorder();
    let prefix = format!("/elections/{}/", election.trim_matches('/'));
    let before = keys_under(client, &prefix).await.len();
    let election = new_election(client, config(election, id, ttl, observer))
        .await
        .unwrap_or_else(|e| panic!("candidate {id}: {e}"));
    if engine() == Engine::ServerSide {
        // etcd's Campaign puts our key some time after the first outcome:
        // a test that concedes to this candidate needs it in the race.
        eventually(5.0, "the candidate's key", || async {
            keys_under(client, &prefix).await.len() > before
        })
        .await;
    }
    (election, events)
}

pub async fn next(events: &mut mpsc::UnboundedReceiver<ElectionEvent>, secs: f64) -> ElectionEvent {
    within(secs, "an election event", events.recv())
        .await
        .expect("events open")
}

/// Skips events until one matches; returns it. On timeout, fails with the
/// events it skipped.
pub async fn until(
    events: &mut mpsc::UnboundedReceiver<ElectionEvent>,
    secs: f64,
    what: &str,
    matches: impl Fn(&ElectionEvent) -> bool,
) -> ElectionEvent {
    let mut skipped = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs_f64(secs), async {
        loop {
            let event = events.recv().await.expect("events open");
            if matches(&event) {
                return event;
            }
            skipped.push(event);
        }
    })
    .await;
    match found {
        Ok(event) => event,
        Err(_) => panic!("timed out after {secs} s waiting for {what}; skipped {skipped:#?}"),
    }
}

/// The value of a Prometheus counter on etcd's /metrics (plain HTTP on the
/// client port), summed over the lines that contain every one of `labels`.
pub async fn etcd_metric(etcd: &Etcd, name: &str, labels: &[&str]) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(etcd.client_addr())
        .await
        .expect("connect /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
        .await
        .expect("send /metrics request");
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .await
        .expect("read /metrics");
    body.lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A session of `client` (TTL `ttl`) once it holds its lease.
pub async fn held_session(client: &Client, ttl: i64) -> etcdutil::Session {
    let session = etcdutil::Session::new(
        client,
        etcdutil::SessionConfig {
            ttl,
            ..Default::default()
        },
    )
    .expect("session");
    let mut lease = session.watch_lease();
    within(
        10.0,
        "the session's lease",
        lease.wait_for(|l| *l != NO_LEASE),
    )
    .await
    .expect("lease");
    session
}

/// Keeps the message of every event on the wire target (`WIRE_TARGET`), for
/// the wire-log tests, which install it as the global subscriber.
pub struct WireCapture(pub Arc<std::sync::Mutex<Vec<String>>>);

struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!("{value:?}"));
        }
    }
}

impl tracing::Subscriber for WireCapture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == etcdutil::WIRE_TARGET
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = String::new();
        event.record(&mut Message(&mut line));
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
