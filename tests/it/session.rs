//! Session against a real etcd: gain, keepalive, loss before expiry, regain, close.

use std::time::{Duration, Instant};

use crate::common::*;
use etcdutil::proto::etcdserverpb::LeaseRevokeRequest;
use etcdutil::{Error, NO_LEASE, Session, SessionConfig};

#[tokio::test]
async fn new_session_gets_a_lease_and_close_revokes_it() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let (observer, mut calls) = Recorder::new();
    let session = Session::new(&client, SessionConfig { ttl: 5, observer }).unwrap();

    let lease = calls.lease(5.0).await;
    assert_ne!(lease, NO_LEASE);
    assert_eq!(session.lease_id(), lease);
    assert!(lease_ttl(&client, lease).await > 0, "etcd knows the lease");

    within(6.0, "close", session.close()).await;
    let (last, error) = calls.next(1.0).await;
    assert_eq!(last, NO_LEASE, "close reports NO_LEASE last");
    assert!(error.is_none(), "a clean close carries no error: {error:?}");
    assert!(calls.drain().is_empty(), "nothing after the final NO_LEASE");
    assert_eq!(session.lease_id(), NO_LEASE);
    assert_eq!(
        lease_ttl(&client, lease).await,
        -1,
        "close revoked the lease on etcd"
    );

    // Idempotent: a second close returns at once and reports nothing.
    within(1.0, "second close", session.close()).await;
    assert!(calls.drain().is_empty());
}

#[tokio::test]
async fn keepalive_outlives_the_ttl() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let (observer, mut calls) = Recorder::new();
    let session = Session::new(&client, SessionConfig { ttl: 2, observer }).unwrap();
    let lease = calls.lease(5.0).await;
    // Three TTLs later the lease is still the same one, alive on etcd.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        assert!(calls.drain().is_empty(), "no loss while connected");
        assert!(lease_ttl(&client, lease).await > 0);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(session.lease_id(), lease);
    session.close().await;
}

#[tokio::test]
async fn many_sessions_share_one_connection_and_one_keepalive_stream() {
    let etcd = etcd().await;
    let (proxy, client) = proxied_client(&etcd).await;
    let labels = ["grpc_method=\"LeaseKeepAlive\""];
    let streams_before = etcd_metric(&etcd, "grpc_server_started_total", &labels).await;

    let mut sessions = Vec::new();
    let mut recorders = Vec::new();
    for _ in 0..200 {
        let (observer, calls) = Recorder::new();
        sessions.push(Session::new(&client, SessionConfig { ttl: 3, observer }).unwrap());
        recorders.push(calls);
    }
    for calls in &mut recorders {
        calls.lease(10.0).await;
    }
    // Wait until etcd has received a renewal of every lease, then count streams.
    let renewals = etcd_metric(&etcd, "grpc_server_msg_received_total", &labels).await;
    eventually(10.0, "every lease renewed once", || async {
        etcd_metric(&etcd, "grpc_server_msg_received_total", &labels).await >= renewals + 200.0
    })
    .await;
    let streams = etcd_metric(&etcd, "grpc_server_started_total", &labels).await - streams_before;
    assert_eq!(streams, 1.0, "200 sessions use one LeaseKeepAlive stream");
    assert_eq!(proxy.connection_count(), 1, "one TCP connection");
    for calls in &mut recorders {
        assert!(
            calls.drain().iter().all(|(lease, _)| *lease != NO_LEASE),
            "no lease lost"
        );
    }
    for session in &sessions {
        session.close().await;
    }
}

/// Port of the Go package's TestConnectivityLost.
#[tokio::test]
async fn connectivity_lost_and_regained() {
    let etcd = etcd().await;
    let (proxy, client) = proxied_client(&etcd).await;
    let (observer, mut calls) = Recorder::new();
    let session = Session::new(&client, SessionConfig { ttl: 1, observer }).unwrap();
    let first = calls.lease(5.0).await;

    proxy.cut().await;
    calls.no_lease(5.0).await;
    assert_eq!(session.lease_id(), NO_LEASE);

    proxy.restore().await.unwrap();
    let second = calls.lease(5.0).await;
    assert_ne!(second, first, "a new lease after the loss");

    within(3.0, "close", session.close()).await;
    let events = calls.drain();
    assert_eq!(
        events.last().map(|e| e.0),
        Some(NO_LEASE),
        "final NO_LEASE: {events:?}"
    );
}

#[tokio::test]
async fn blackhole_reports_no_lease_before_etcd_expires_the_lease() {
    let etcd = etcd().await;
    let direct = client(&etcd).await;
    let (proxy, client) = proxied_client(&etcd).await;
    let (observer, mut calls) = Recorder::new();
    let session = Session::new(&client, SessionConfig { ttl: 3, observer }).unwrap();
    let lease = calls.lease(5.0).await;

    proxy.blackhole().await.unwrap();
    let error = calls.no_lease(10.0).await;
    // At the moment we report the loss, etcd must still hold the lease
    // (LeaseTimeToLive truncates to whole seconds: 0 is "under a second left",
    // -1 is "gone").
    let remaining = lease_ttl(&direct, lease).await;
    assert!(
        remaining >= 0,
        "etcd still holds the lease when NO_LEASE is reported (ttl {remaining})"
    );
    assert!(
        matches!(error, Some(Error::LeaseDeadline { .. })),
        "{error:?}"
    );
    // And etcd does expire it afterwards.
    eventually(10.0, "etcd expires the old lease", || async {
        lease_ttl(&direct, lease).await == -1
    })
    .await;

    proxy.restore().await.unwrap();
    let regained = calls.lease(10.0).await;
    assert_ne!(regained, lease);
    session.close().await;
}

#[tokio::test]
async fn etcd_killed_and_restarted() {
    let mut etcd = etcd().await;
    let client = client(&etcd).await;
    let (observer, mut calls) = Recorder::new();
    let session = Session::new(&client, SessionConfig { ttl: 2, observer }).unwrap();
    let first = calls.lease(5.0).await;

    etcd.kill().unwrap();
    calls.no_lease(5.0).await;
    etcd.restart().await.expect("restart etcd");
    let second = calls.lease(10.0).await;
    assert_ne!(second, first);
    assert!(lease_ttl(&client, second).await > 0);
    session.close().await;
}

#[tokio::test]
async fn lease_revoked_by_someone_else() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let other = crate::common::client(&etcd).await;
    let (observer, mut calls) = Recorder::new();
    let session = Session::new(&client, SessionConfig { ttl: 3, observer }).unwrap();
    let first = calls.lease(5.0).await;

    other
        .lease()
        .lease_revoke(LeaseRevokeRequest { id: first })
        .await
        .unwrap();
    let error = calls.no_lease(5.0).await;
    assert!(
        matches!(error, Some(Error::LeaseExpired { lease }) if lease == first),
        "{error:?}"
    );
    let second = calls.lease(5.0).await;
    assert_ne!(second, first);
    session.close().await;
}

#[tokio::test]
async fn close_while_etcd_is_unreachable_returns_within_ttl_plus_one_second() {
    let etcd = etcd().await;
    let (proxy, client) = proxied_client(&etcd).await;
    let (observer, mut calls) = Recorder::new();
    let session = Session::new(&client, SessionConfig { ttl: 2, observer }).unwrap();
    calls.lease(5.0).await;

    proxy.blackhole().await.unwrap();
    let started = Instant::now();
    session.close().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "close took {took:?}, more than TTL + 1 s"
    );
    assert_eq!(calls.drain().last().map(|e| e.0), Some(NO_LEASE));
}

#[tokio::test]
async fn reset_revokes_and_starts_over() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let (observer, mut calls) = Recorder::new();
    let session = Session::new(&client, SessionConfig { ttl: 5, observer }).unwrap();
    let first = calls.lease(5.0).await;

    session.reset();
    assert_eq!(
        calls.next(5.0).await.0,
        NO_LEASE,
        "reset reports the old lease gone"
    );
    let second = calls.lease(5.0).await;
    assert_ne!(second, first);
    eventually(5.0, "old lease revoked", || async {
        lease_ttl(&client, first).await == -1
    })
    .await;
    session.close().await;
}

#[tokio::test]
async fn dropping_a_session_revokes_its_lease_in_the_background() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let (observer, mut calls) = Recorder::new();
    let session = Session::new(&client, SessionConfig { ttl: 30, observer }).unwrap();
    let lease = calls.lease(5.0).await;
    drop(session);
    assert_eq!(calls.no_lease(5.0).await.map(|e| e.to_string()), None);
    eventually(5.0, "lease revoked after drop", || async {
        lease_ttl(&client, lease).await == -1
    })
    .await;
}

#[tokio::test]
async fn bad_ttl_is_refused_before_anything_is_sent() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let err = Session::new(
        &client,
        SessionConfig {
            ttl: -5,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "SessionConfig.ttl=-5 is not a TTL in seconds from 1 to 9000000000 (etcd's maximum), or 0 for the default"
    );
    let err = Session::new(
        &client,
        SessionConfig {
            ttl: 9_000_000_001,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidArgument {
            name: "SessionConfig.ttl",
            ..
        }
    ));
    let leases = client
        .lease()
        .lease_leases(etcdutil::proto::etcdserverpb::LeaseLeasesRequest {})
        .await
        .unwrap();
    assert!(leases.into_inner().leases.is_empty(), "no stray lease");
}

/// A session closed at once, while its grant may still be in flight, leaves
/// no lease once `close()` returns: the grant is let finish and revoked.
#[tokio::test]
async fn close_right_after_new_leaves_no_lease() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    for round in 0..20 {
        let session = Session::new(
            &client,
            SessionConfig {
                ttl: 5,
                ..Default::default()
            },
        )
        .unwrap();
        if round % 2 == 1 {
            // Let the grant leave, but not come back.
            tokio::task::yield_now().await;
        }
        within(7.0, "close", session.close()).await;
        assert_eq!(
            lease_ids(&client).await,
            Vec::<i64>::new(),
            "round {round}: a lease outlived close()"
        );
    }
}

/// A client made while etcd is down: the session reports each failed grant,
/// then holds a lease within 3 s of etcd coming up.
#[tokio::test]
async fn session_on_a_client_made_before_etcd_gets_a_lease_once_it_is_up() {
    let mut etcd = etcd().await;
    etcd.stop().await.unwrap();
    let client =
        etcdutil::Client::connect_lazy(etcd.config()).expect("a lazy client needs no etcd");
    let (observer, mut calls) = Recorder::new();
    let session = Session::new(&client, SessionConfig { ttl: 2, observer }).unwrap();
    let error = calls
        .no_lease(10.0)
        .await
        .expect("the failed grant's error");
    assert!(error.is_member_failure(), "{error:?}");
    etcd.restart().await.unwrap();
    let lease = calls.lease(3.0).await;
    assert_eq!(session.lease_id(), lease);
    session.close().await;
    assert_eq!(lease_ids(&client).await, Vec::<i64>::new());
}

/// A lease taken for lost whose revoke gave up (etcd out of reach for its
/// whole TTL) may still live on etcd: a leader change extends every lease,
/// and its keys then block elections. Here another client keeps it alive in
/// etcd's place. `close()` must revoke it too.
#[tokio::test]
async fn close_revokes_a_lost_lease_whose_revoke_gave_up() {
    use etcdutil::proto::etcdserverpb::LeaseKeepAliveRequest;
    let etcd = etcd().await;
    let direct = client(&etcd).await;
    let (proxy, client) = proxied_client(&etcd).await;
    let (observer, mut calls) = Recorder::new();
    let ttl = 2;
    let session = Session::new(&client, SessionConfig { ttl, observer }).unwrap();
    let lease = calls.lease(5.0).await;
    // The accomplice: keepalives for our lease from another connection.
    let (requests, outgoing) = tokio::sync::mpsc::channel(4);
    let renew = LeaseKeepAliveRequest { id: lease };
    // etcd answers the stream's headers with its first answer: ask first.
    requests.send(renew).await.unwrap();
    let mut answers = direct
        .lease()
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .expect("the accomplice's keepalive stream")
        .into_inner();
    let accomplice = tokio::spawn(async move {
        while let Ok(Some(_)) = answers.message().await {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if requests.send(renew).await.is_err() {
                return;
            }
        }
    });

    proxy.blackhole().await.unwrap();
    calls.no_lease(10.0).await;
    // The revoke of the lost lease retries for one TTL, then gives up: wait
    // that out (nothing outside the session shows it).
    tokio::time::sleep(Duration::from_secs(ttl as u64) + Duration::from_millis(700)).await;
    assert!(
        lease_ttl(&direct, lease).await > 0,
        "the accomplice keeps it"
    );
    proxy.restore().await.unwrap();
    calls.lease(10.0).await;
    session.close().await;
    accomplice.abort();
    assert_eq!(
        lease_ttl(&direct, lease).await,
        -1,
        "close() revoked the lease it had lost"
    );
}
