//! Signals for operators: metrics through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`), Prometheus-style names with the `etcdutil_`
//! prefix. Without the feature every function here is empty.
//!
//! | metric | kind | labels | meaning |
//! |---|---|---|---|
//! | `etcdutil_election_is_leader` | gauge | `election` | 1 while this candidate leads, else 0 |
//! | `etcdutil_election_leader_changes_total` | counter | `election` | times this candidate saw the leader change |
//! | `etcdutil_election_time_to_lead_seconds` | histogram | `election` | from our key entering the race to our leading |
//! | `etcdutil_election_work_overrun_seconds` | histogram | `election` | how long `run_while_leader`'s work ran on after its term ended |
//! | `etcdutil_session_lease_lost_total` | counter | `reason` | leases lost: `keepalive_deadline`, `stream_error`, `revoked`, `expired` |
//! | `etcdutil_session_keepalive_rtt_seconds` | histogram | | keepalive request to etcd's answer |
//! | `etcdutil_client_failovers_total` | counter | `endpoint` | calls moved off the member at `endpoint` |
//! | `etcdutil_client_token_renewals_total` | counter | | auth tokens fetched again after etcd rejected one |
//! | `etcdutil_client_rpc_errors_total` | counter | `kind` | calls that failed, by etcd's error kind (or `transport`) |
//!
//! State changes also go out as `tracing` events on the target `etcdutil`
//! (the wire log is `etcdutil::wire`), with structured fields.

use std::time::Duration;

/// Target of this crate's state-change events.
pub(crate) const TARGET: &str = "etcdutil";

/// Whether this candidate leads `election` now.
pub(crate) fn is_leader(election: &str, leads: bool) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("etcdutil_election_is_leader", "election" => election.to_owned())
        .set(if leads { 1.0 } else { 0.0 });
    #[cfg(not(feature = "metrics"))]
    let _ = (election, leads);
}

/// This candidate saw the leader of `election` change.
pub(crate) fn leader_changed(election: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("etcdutil_election_leader_changes_total", "election" => election.to_owned())
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = election;
}

/// From our key entering the race to our leading.
pub(crate) fn time_to_lead(election: &str, took: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("etcdutil_election_time_to_lead_seconds", "election" => election.to_owned())
        .record(took.as_secs_f64());
    #[cfg(not(feature = "metrics"))]
    let _ = (election, took);
}

/// `run_while_leader`'s work returned (or was dropped) this long after its
/// term ended.
pub(crate) fn work_overrun(election: &str, overrun: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("etcdutil_election_work_overrun_seconds", "election" => election.to_owned())
        .record(overrun.as_secs_f64());
    #[cfg(not(feature = "metrics"))]
    let _ = (election, overrun);
}

/// A session lost its lease, for `reason`.
pub(crate) fn lease_lost(reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("etcdutil_session_lease_lost_total", "reason" => reason).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}

/// etcd answered a keepalive this long after it was sent.
pub(crate) fn keepalive_rtt(rtt: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("etcdutil_session_keepalive_rtt_seconds").record(rtt.as_secs_f64());
    #[cfg(not(feature = "metrics"))]
    let _ = rtt;
}

/// Calls moved off the member at `endpoint`.
pub(crate) fn failover(endpoint: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("etcdutil_client_failovers_total", "endpoint" => endpoint.to_owned())
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = endpoint;
}

/// An auth token was fetched again.
pub(crate) fn token_renewed() {
    #[cfg(feature = "metrics")]
    metrics::counter!("etcdutil_client_token_renewals_total").increment(1);
}

/// A call failed, with etcd's error `kind` (or `transport`).
pub(crate) fn rpc_error(kind: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("etcdutil_client_rpc_errors_total", "kind" => kind).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = kind;
}
