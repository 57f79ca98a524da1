//! The metrics (feature `metrics`), read back through `metrics-util`'s
//! debugging recorder after a handover, a blackhole and a token expiry. One
//! test in its own binary, because it installs the global recorder.
#![cfg(feature = "metrics")]

mod common;

use std::time::Duration;

use common::*;
use etcdutil::testing::{Etcd, Proxy};
use etcdutil::{Client, Config, ElectionConfig, Session, SessionConfig, new_election};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Metric name, labels and value, as the debugging recorder gives them.
type Changes = Vec<(String, Vec<(String, String)>, DebugValue)>;

/// What changed since the last look: counters as deltas, the last gauge
/// values, the histogram samples recorded meanwhile.
fn changes(snapshotter: &Snapshotter) -> Changes {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

fn counter(changes: &Changes, name: &str, label: Option<(&str, &str)>) -> u64 {
    changes
        .iter()
        .filter(|(n, labels, _)| {
            n == name && label.is_none_or(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, value)| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

fn samples(changes: &Changes, name: &str) -> usize {
    changes
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, _, value)| match value {
            DebugValue::Histogram(values) => values.len(),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

fn gauge(changes: &Changes, name: &str, label: (&str, &str)) -> Option<f64> {
    changes.iter().find_map(|(n, labels, value)| {
        let labelled = labels.iter().any(|(k, v)| k == label.0 && v == label.1);
        match value {
            DebugValue::Gauge(g) if n == name && labelled => Some(g.into_inner()),
            _ => None,
        }
    })
}

#[tokio::test]
async fn metrics_after_a_handover_a_blackhole_and_a_token_expiry() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this binary");

    // A handover: a leads, b waits, a concedes.
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("metrics");
    let label = ("election", format!("/elections/{name}"));
    let a = new_election(
        &client,
        ElectionConfig {
            election: name.clone(),
            candidate: "a".into(),
            ttl: 2,
            event_observer: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let b = new_election(
        &client,
        ElectionConfig {
            election: name.clone(),
            candidate: "b".into(),
            ttl: 2,
            event_observer: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut b_events = b.subscribe();
    assert!(a.concede().await.unwrap());
    within(5.0, "b leads", async {
        while !b_events.recv().await.unwrap().is_leader {}
    })
    .await;
    let seen = changes(&snapshotter);
    let election = Some((label.0, label.1.as_str()));
    assert_eq!(
        gauge(&seen, "etcdutil_election_is_leader", (label.0, &label.1)),
        Some(1.0),
        "{seen:#?}"
    );
    assert!(
        counter(&seen, "etcdutil_election_leader_changes_total", election) >= 2,
        "{seen:#?}"
    );
    // a led at once, then b after the concede.
    assert!(
        samples(&seen, "etcdutil_election_time_to_lead_seconds") >= 2,
        "{seen:#?}"
    );
    // run_while_leader: b's work ends with b's term (b concedes), and how
    // long it outlived the term goes to the histogram.
    let b = std::sync::Arc::new(b);
    let running = b.clone();
    let runner = tokio::spawn(async move {
        running
            .run_while_leader(Duration::from_secs(1), |leadership| async move {
                leadership.lost().await;
                etcdutil::AfterWork::Stop
            })
            .await
    });
    within(5.0, "b's work runs", b.leadership()).await.unwrap();
    assert!(b.concede().await.unwrap());
    within(10.0, "b's run ends", runner).await.unwrap();
    let seen = changes(&snapshotter);
    assert_eq!(
        samples(&seen, "etcdutil_election_work_overrun_seconds"),
        1,
        "{seen:#?}"
    );
    a.close().await;

    // A blackhole in front of the member a client uses: the lease is lost
    // at its deadline, and calls move to the other endpoint.
    let first = Proxy::start(etcd.client_addr()).await.unwrap();
    let second = Proxy::start(etcd.client_addr()).await.unwrap();
    let proxied = Client::connect(Config {
        endpoints: vec![first.endpoint(), second.endpoint()],
        ..etcd.config()
    })
    .await
    .unwrap();
    let (observer, mut calls) = Recorder::new();
    let session = Session::new(&proxied, SessionConfig { ttl: 2, observer }).unwrap();
    calls.lease(5.0).await;
    // Keepalives go at TTL / 3: wait for one answer before the fault.
    eventually(5.0, "a keepalive answered", || {
        let seen = changes(&snapshotter);
        async move { samples(&seen, "etcdutil_session_keepalive_rtt_seconds") > 0 }
    })
    .await;
    // The client starts on whichever endpoint answered first.
    let in_use = proxied.transport().current_endpoint().to_string();
    let (used, _other) = if in_use.contains(&first.addr().to_string()) {
        (&first, &second)
    } else {
        (&second, &first)
    };
    used.blackhole().await.unwrap();
    calls.no_lease(5.0).await;
    calls.lease(10.0).await;
    let seen = changes(&snapshotter);
    assert_eq!(
        counter(
            &seen,
            "etcdutil_session_lease_lost_total",
            Some(("reason", "keepalive_deadline"))
        ),
        1,
        "{seen:#?}"
    );
    assert_eq!(
        counter(
            &seen,
            "etcdutil_client_failovers_total",
            Some(("endpoint", &used.endpoint()))
        ),
        1,
        "{seen:#?}"
    );
    session.close().await;

    // A token that expired: renewed, and the rejected call counted.
    let etcd = Etcd::builder().auth_token_ttl(1).start().await.unwrap();
    enable_auth(&etcd, "secret").await;
    let authed = Client::connect(Config {
        username: Some("root".into()),
        password: Some("secret".into()),
        ..etcd.config()
    })
    .await
    .unwrap();
    let before = changes(&snapshotter);
    assert_eq!(
        counter(&before, "etcdutil_client_token_renewals_total", None),
        1,
        "connect authenticates once: {before:#?}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await; // the token's TTL passes
    authed
        .kv()
        .put(etcdutil::proto::etcdserverpb::PutRequest {
            key: "/m".into(),
            value: "v".into(),
            ..Default::default()
        })
        .await
        .expect("renewed and retried");
    let seen = changes(&snapshotter);
    assert_eq!(
        counter(&seen, "etcdutil_client_token_renewals_total", None),
        1,
        "{seen:#?}"
    );
    assert_eq!(
        counter(
            &seen,
            "etcdutil_client_rpc_errors_total",
            Some(("kind", "invalid_auth_token"))
        ),
        1,
        "{seen:#?}"
    );
}
