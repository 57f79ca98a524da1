//! A test harness running **real etcd** processes, for testing leader logic
//! (and anything else built on this crate) against the real thing: no mocks.
//!
//! Compiled only with the `test-util` feature; enable it for your tests:
//!
//! ```toml
//! [dev-dependencies]
//! etcdutil = { version = "0.1", features = ["test-util"] }
//! ```
//!
//! # What it provides
//!
//! - [`Etcd`]: one etcd member process, plaintext or TLS (see
//!   [`EtcdBuilder`]), that a test can [`kill`](Etcd::kill),
//!   [`stop`](Etcd::stop), [`pause`](Etcd::pause) /
//!   [`resume`](Etcd::resume) and [`restart`](Etcd::restart) on the same
//!   ports and data.
//! - [`Cluster`]: several members forming one cluster.
//! - [`Proxy`]: a loopback TCP proxy to put between the code under test and
//!   etcd, to [`cut`](Proxy::cut) or [`blackhole`](Proxy::blackhole) the
//!   link and [`restore`](Proxy::restore) it.
//! - [`TlsFiles`]: the throw-away CA, server and client certificates of a
//!   TLS member, plus an unrelated CA for "wrong CA" tests.
//!
//! # How it runs etcd
//!
//! - **Binary**: `$ETCD_BIN` if set, else `etcd` from `PATH` (or
//!   [`EtcdBuilder::binary`]). Tested with etcd 3.4 and written for 3.5 as
//!   well: readiness is read from the log lines both print, in text or JSON.
//!   To test against another version, point `ETCD_BIN` at its binary:
//!   `ETCD_BIN=/opt/etcd-v3.5.17/etcd cargo test`. `ETCD_*` variables of
//!   the environment are not passed to etcd (it would take them as flags),
//!   except `ETCD_UNSUPPORTED_ARCH`.
//! - **Ports**: free loopback ports, found by binding `127.0.0.1:0` and
//!   releasing them; no fixed port, so tests run in parallel. Should another
//!   process grab a port before etcd binds it, the start is retried with new
//!   ports.
//! - **Data**: each member gets a private temp directory (under
//!   [`std::env::temp_dir`]), kept across restarts and removed on drop.
//! - **Readiness**: etcd's output is drained continuously (the last 200
//!   lines are kept, see [`Etcd::logs`], and put into start errors); a member
//!   is ready once it logged that it serves clients and its client port
//!   accepts TCP. Starting fails if etcd exits first or after 20 s (see
//!   [`EtcdBuilder::start_timeout`]).
//! - **Cleanup**: dropping an [`Etcd`] or a [`Cluster`] SIGKILLs the
//!   processes and removes their directories; dropping a [`Proxy`] closes
//!   its connections. Unix only (signals).
//!
//! Enable `tracing` at `TRACE` for target `etcdutil::testing::etcd` to see
//! etcd's output live.
//!
//! # Example
//!
//! ```no_run
//! use etcdutil::testing::{Cluster, Etcd, Proxy};
//!
//! # async fn demo() -> std::io::Result<()> {
//! // One member; its `config()` is ready for the code under test.
//! let mut etcd = Etcd::start().await?;
//! let config = etcd.config();
//!
//! // Crash it and bring it back on the same port with the same data.
//! etcd.kill()?;
//! etcd.restart().await?;
//!
//! // Put a proxy in between to cut the network.
//! let proxy = Proxy::start(etcd.client_addr()).await?;
//! let mut via_proxy = etcd.config();
//! via_proxy.endpoints = vec![proxy.endpoint()];
//! proxy.cut().await;
//! proxy.restore().await?;
//!
//! // Three members.
//! let cluster = Cluster::start(3).await?;
//! let all = cluster.config();
//! # Ok(()) }
//! ```

pub(crate) mod certs;
mod cluster;
mod etcd;
mod proxy;
mod util;

pub use certs::TlsFiles;
pub use cluster::Cluster;
pub use etcd::{ETCD_BIN, Etcd, EtcdBuilder};
pub use proxy::{Proxy, ProxyState};

/// The pure cores and the drivers' glue, for the deterministic simulator
/// (`tests/sim`): the same decisions and the same request builders and
/// answer parsers that the election and session tasks use, with no I/O.
///
/// ```
/// use etcdutil::testing::core::{Candidacy, LeaseCore};
/// let now = tokio::time::Instant::now();
/// let mut lease = LeaseCore::new(5, now);
/// lease.start(now);
/// assert!(lease.poll_action().is_some()); // a LeaseGrant to send
/// let candidacy = Candidacy::new("/elections/jobs".into());
/// assert!(!candidacy.is_leader());
/// ```
pub mod core {
    pub use crate::election::candidacy::{candidacy_txn, entered, is_go_candidate};
    pub use crate::election::core::{Action, Candidacy, Entered, Phase, RETRY};
    pub use crate::election::observe::{Follower, Report, deletes_watch, left_of};
    pub use crate::sabotage::Sabotage;
    pub use crate::session::core::{LeaseAction, LeaseCore, LeasePhase, safety_margin};
    pub use crate::session::keepalive::renew_interval;
}
