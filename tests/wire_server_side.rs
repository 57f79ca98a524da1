//! The server-side engine on the wire: an election's whole life shows etcd's
//! Election service (`Campaign`, `Observe`, `Proclaim`, `Resign`, `Leader`)
//! and the lease calls, and no `KV/Txn` or `Watch` of ours; its only KV call
//! is the read of the Go package's candidates (`/elections/<name>0` to
//! `/elections/<name>g`), which etcd's Campaign cannot see. A binary of its
//! own, because it installs the global tracing subscriber.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use etcdutil::{ElectionConfig, Engine, new_election};

#[tokio::test]
async fn a_server_side_election_uses_the_election_service_and_leases_only() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::set_global_default(WireCapture(lines.clone())).unwrap();

    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("wire-server-side");
    let config = |candidate: &str| ElectionConfig {
        election: name.clone(),
        candidate: candidate.into(),
        ttl: 5,
        engine: Engine::ServerSide,
        ..Default::default()
    };
    let a = within(5.0, "a leads", new_election(&client, config("a")))
        .await
        .unwrap();
    assert!(a.is_leader());
    let b = within(5.0, "b joins", new_election(&client, config("b")))
        .await
        .unwrap();
    a.proclaim("ready").await.unwrap();
    let leader = a.leader().await.unwrap().expect("a leads");
    assert_eq!(leader.data, "ready");
    assert!(a.concede().await.unwrap());
    within(5.0, "b leads", b.leadership()).await.unwrap();
    a.close().await;
    b.close().await;
    client.close().await;

    let lines = lines.lock().unwrap().clone();
    let methods: std::collections::BTreeSet<String> = lines
        .iter()
        .filter_map(|line| line.split("call /").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
        .collect();
    for wanted in [
        "v3electionpb.Election/Campaign",
        "v3electionpb.Election/Observe",
        "v3electionpb.Election/Proclaim",
        "v3electionpb.Election/Resign",
        "v3electionpb.Election/Leader",
        "etcdserverpb.Lease/LeaseGrant",
        "etcdserverpb.Lease/LeaseRevoke",
    ] {
        assert!(methods.contains(wanted), "no {wanted}: {methods:#?}");
    }
    let allowed = |m: &str| {
        m.starts_with("v3electionpb.Election/")
            || m.starts_with("etcdserverpb.Lease/")
            || m == "etcdserverpb.KV/Range"
            || m == "etcdserverpb.Maintenance/Status"
    };
    assert!(
        methods.iter().all(|m| allowed(m)),
        "a call outside the Election service and leases: {methods:#?}"
    );
    // Every KV read is the Go package's candidate range.
    let go_range = format!(r#"key: b"/elections/{name}0""#);
    let reads: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains("send etcdserverpb.RangeRequest"))
        .collect();
    assert!(
        !reads.is_empty(),
        "the Go-candidate read after each Campaign"
    );
    for read in reads {
        assert!(read.contains(&go_range), "a read of something else: {read}");
    }
}
