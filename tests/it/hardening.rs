//! Production hardening against real etcd: auth tokens that expire while
//! sessions and elections run, and the loss of the member a client uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use etcdutil::proto::etcdserverpb::PutRequest;
use etcdutil::testing::{Cluster, Etcd};
use etcdutil::{Client, Config, ElectionConfig, NO_LEASE, Session, SessionConfig, new_election};

fn as_user(etcd: &Etcd, user: &str, password: &str) -> Config {
    Config {
        username: Some(user.into()),
        password: Some(password.into()),
        ..etcd.config()
    }
}

/// With a 1 s token TTL, every call after a second of quiet carries an
/// expired token: each must be renewed transparently, and neither the lease
/// nor the leadership may be lost meanwhile.
#[tokio::test]
async fn session_and_election_ride_through_token_expiries() {
    let etcd = Etcd::builder().auth_token_ttl(1).start().await.unwrap();
    enable_auth(&etcd, "secret").await;
    let client = Client::connect(as_user(&etcd, "root", "secret"))
        .await
        .unwrap();

    let (observer, mut calls) = Recorder::new();
    let session = Session::new(&client, SessionConfig { ttl: 3, observer }).unwrap();
    let lease = calls.lease(5.0).await;

    let losses = Arc::new(AtomicUsize::new(0));
    let counted = losses.clone();
    let config = ElectionConfig {
        election: unique("auth"),
        candidate: "a".into(),
        ttl: 3,
        event_observer: Some(Arc::new(move |event| {
            if !event.is_leader && !event.is_done {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        })),
        ..Default::default()
    };
    let election = new_election(&client, config).await.unwrap();
    assert!(election.is_leader());

    for round in 0..4 {
        // Let the token expire (TTL 1 s, etcd checks expiry every ~second).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let put = PutRequest {
            key: format!("/auth/{round}").into(),
            value: "v".into(),
            ..Default::default()
        };
        client
            .kv()
            .put(put)
            .await
            .expect("a Put with an expired token is renewed and retried");
        election
            .proclaim(format!("round {round}"))
            .await
            .expect("a Proclaim with an expired token");
        assert!(
            election.is_leader(),
            "still leading after token expiry {round}"
        );
        assert_eq!(
            session.lease_id(),
            lease,
            "same lease after token expiry {round}"
        );
    }
    assert!(
        calls.drain().iter().all(|(id, _)| *id != NO_LEASE),
        "the lease was never lost"
    );
    assert_eq!(
        losses.load(Ordering::SeqCst),
        0,
        "leadership was never lost"
    );
    assert_eq!(election.leader().await.unwrap().unwrap().data, "round 3");
    election.close().await;
    session.close().await;
}

/// Kills whichever member the client talks to: calls move to another.
#[tokio::test]
async fn killing_the_member_in_use_fails_over() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let client = Client::connect(cluster.config()).await.unwrap();
    let (observer, mut calls) = Recorder::new();
    let session = Session::new(&client, SessionConfig { ttl: 3, observer }).unwrap();
    calls.lease(5.0).await;
    let name = unique("cluster");
    let a = new_election(
        &client,
        ElectionConfig {
            election: name.clone(),
            candidate: "a".into(),
            ttl: 3,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let other = Client::connect(cluster.config()).await.unwrap();
    let b = new_election(
        &other,
        ElectionConfig {
            election: name.clone(),
            candidate: "b".into(),
            ttl: 3,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let in_use = client.transport().current_endpoint().to_string();
    let index = cluster
        .endpoints()
        .iter()
        .position(|e| in_use.starts_with(e.trim_end_matches('/')))
        .expect("a member");
    cluster.member_mut(index).kill().unwrap();

    let started = Instant::now();
    let put = PutRequest {
        key: "/after-kill".into(),
        value: "v".into(),
        ..Default::default()
    };
    // Retry until it works, remembering why each attempt failed. Each attempt
    // is bounded, as a caller's deadline would: a Put that reached a follower
    // which still believed in the killed leader waits for etcd's own request
    // timeout (about 7 s), since its proposal was dropped with the leader.
    let mut failures = Vec::new();
    let worked = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let attempt = Instant::now();
            let mut kv = client.kv();
            match tokio::time::timeout(Duration::from_secs(1), kv.put(put.clone())).await {
                Ok(Ok(_)) => return,
                Ok(Err(status)) => failures.push(format!(
                    "{:?} after {:?}: {}",
                    status.code(),
                    attempt.elapsed(),
                    status.message()
                )),
                Err(_) => failures.push("no answer within 1 s".to_string()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        worked.is_ok(),
        "no Put worked within 5 s of the kill: {failures:#?}"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "Put works again within the dial timeout ({took:?})"
    );
    assert_ne!(client.transport().current_endpoint().to_string(), in_use);

    // The session keeps its lease or quickly regains one.
    eventually(8.0, "a lease after the kill", || async {
        session.lease_id() != NO_LEASE
    })
    .await;
    // Exactly one leader, never two at once, while it settles.
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut leaders_seen = 0;
    while Instant::now() < deadline {
        let leaders = [a.is_leader(), b.is_leader()]
            .iter()
            .filter(|l| **l)
            .count();
        assert!(leaders <= 1, "two leaders at once");
        leaders_seen = leaders;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(leaders_seen, 1, "exactly one leader after the kill");
    a.close().await;
    b.close().await;
    session.close().await;
}

/// etcd's Election service forwards an expired token as gRPC Unknown with
/// etcd's message. A leader left idle (only keepalives flowing, which do not
/// renew the token) for three token lifetimes: each Election call must still
/// succeed on the caller's first try, with no error event and no failover.
#[tokio::test]
async fn idle_leader_election_calls_ride_through_token_expiry() {
    let etcd = Etcd::builder().auth_token_ttl(2).start().await.unwrap();
    enable_auth(&etcd, "secret").await;
    let a_client = Client::connect(as_user(&etcd, "root", "secret"))
        .await
        .unwrap();
    let b_client = Client::connect(Config {
        debug: true,
        ..as_user(&etcd, "root", "secret")
    })
    .await
    .unwrap();
    let name = unique("idle-auth");
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (a_events, mut a_rx) = tokio::sync::mpsc::unbounded_channel();
    let counted = errors.clone();
    let config =
        |candidate: &str, events: tokio::sync::mpsc::UnboundedSender<etcdutil::ElectionEvent>| {
            let counted = counted.clone();
            ElectionConfig {
                election: name.clone(),
                candidate: candidate.into(),
                ttl: 5,
                event_observer: Some(Arc::new(move |event: etcdutil::ElectionEvent| {
                    if let Some(error) = &event.err {
                        counted.lock().unwrap().push(chain(error).join(": "));
                    }
                    let _ = events.send(event);
                })),
                ..Default::default()
            }
        };
    let a = new_election(&a_client, config("a", a_events))
        .await
        .unwrap();
    assert!(a.is_leader());

    let kv_calls = || {
        etcd_metric(
            &etcd,
            "grpc_server_started_total",
            &["grpc_service=\"etcdserverpb.KV\""],
        )
    };
    let authentications = || {
        etcd_metric(
            &etcd,
            "grpc_server_started_total",
            &["grpc_method=\"Authenticate\""],
        )
    };
    // The leader's observer reads the candidates, then watches them: only
    // then is it idle.
    eventually(5.0, "the leader's watch is open", || async {
        etcd_metric(
            &etcd,
            "grpc_server_started_total",
            &["grpc_method=\"Watch\""],
        )
        .await
            >= 1.0
    })
    .await;
    let kv_before = kv_calls().await;
    let auth_before = authentications().await;
    // Three token lifetimes of quiet (etcd sweeps expired tokens each second).
    tokio::time::sleep(Duration::from_millis(3 * 2000 + 1200)).await;
    assert_eq!(
        kv_calls().await,
        kv_before,
        "no KV call ran while the leader was idle"
    );

    a.proclaim("after-expiry")
        .await
        .expect("Proclaim on the first try");
    let leader = a
        .leader()
        .await
        .expect("Leader on the first try")
        .expect("a leader");
    assert_eq!(leader.data, "after-expiry");

    let (b_events, mut b_rx) = tokio::sync::mpsc::unbounded_channel();
    let b = new_election(&b_client, config("b", b_events))
        .await
        .expect("a second candidate's new_election");
    let first = b_rx.recv().await.unwrap();
    assert!(!first.is_leader);
    assert_eq!(
        first.leader_data, "after-expiry",
        "the other candidate sees the proclaim"
    );

    assert!(
        a.concede().await.expect("Concede on the first try"),
        "a led"
    );
    if tokio::time::timeout(Duration::from_secs(5), async {
        while !b_rx.recv().await.unwrap().is_leader {}
    })
    .await
    .is_err()
    {
        for line in etcd.logs() {
            eprintln!("ETCDLOG {line}");
        }
        panic!("b did not lead");
    }
    // a's Observe, whose token expired, reopened and shows b.
    within(5.0, "a sees b lead", async {
        loop {
            let event = a_rx.recv().await.unwrap();
            if !event.is_leader && event.leader_data == "b" {
                return;
            }
        }
    })
    .await;
    assert_eq!(
        *errors.lock().unwrap(),
        Vec::<String>::new(),
        "no error event"
    );
    let renewals = authentications().await - auth_before;
    println!("token renewals across the expiry: {renewals}");
    assert!(
        renewals >= 2.0,
        "both clients renewed their token: {renewals}"
    );
    assert!(
        renewals <= 8.0,
        "renewed once per client and stream, not in a loop: {renewals}"
    );
    a.close().await;
    b.close().await;
}
