//! Elections standing on a shared `Session`: one lease for many elections.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcdutil::proto::etcdserverpb::LeaseRevokeRequest;
use etcdutil::{
    ElectionConfig, ElectionEvent, Error, EventObserver, NO_LEASE, new_election_on,
    new_election_on_async,
};

use crate::common::*;

/// Every event an election emits, with the instant it was emitted.
type Timeline = Arc<Mutex<Vec<(Instant, ElectionEvent)>>>;

fn timeline() -> (EventObserver, Timeline) {
    let events: Timeline = Arc::default();
    let sink = events.clone();
    let observer: EventObserver = Arc::new(move |event| {
        sink.lock().unwrap().push((Instant::now(), event));
    });
    (observer, events)
}

fn on(election: &str, candidate: &str, observer: EventObserver) -> ElectionConfig {
    ElectionConfig {
        event_observer: Some(observer),
        election: election.into(),
        candidate: candidate.into(),
        engine: engine(),
        ..Default::default()
    }
}

/// When the election first stopped leading after `after`.
fn stepped_down_at(events: &Timeline, after: Instant) -> Option<Instant> {
    let events = events.lock().unwrap();
    events
        .iter()
        .find(|(at, e)| *at >= after && !e.is_leader)
        .map(|(at, _)| *at)
}

fn led_at(events: &Timeline, after: Instant) -> Option<Instant> {
    let events = events.lock().unwrap();
    events
        .iter()
        .find(|(at, e)| *at >= after && e.is_leader)
        .map(|(at, _)| *at)
}

async fn elections_on_a_blackholed_session_step_down_together_before_others_lead() {
    let etcd = etcd().await;
    let (proxy, cut_client) = proxied_client(&etcd).await;
    let client = client(&etcd).await;
    let names: Vec<String> = (0..3).map(|i| unique(&format!("together{i}"))).collect();
    let ttl = 2;
    let shared = held_session(&cut_client, ttl).await;
    let first_lease = shared.lease_id();
    let mut ours = Vec::new();
    for name in &names {
        let (observer, events) = timeline();
        let election = new_election_on(&shared, on(name, "shared", observer))
            .await
            .expect("election on the session");
        assert!(election.is_leader(), "{name}: alone, it leads");
        ours.push((election, events));
    }
    let mut theirs = Vec::new();
    for name in &names {
        let (observer, events) = timeline();
        let config = ElectionConfig {
            ttl,
            ..on(name, "other", observer)
        };
        let election = etcdutil::new_election(&client, config)
            .await
            .expect("other");
        assert!(!election.is_leader());
        theirs.push((election, events));
    }

    proxy.blackhole().await.expect("blackhole");
    let cut_at = Instant::now();
    for ((_, our_events), (other, other_events)) in ours.iter().zip(&theirs) {
        eventually(10.0, "the other candidate leads", || async {
            other.is_leader()
        })
        .await;
        let down = stepped_down_at(our_events, cut_at).expect("ours stepped down");
        let up = led_at(other_events, cut_at).expect("the other led");
        assert!(
            down < up,
            "ours stepped down {down:?}, the other led {up:?}"
        );
    }
    for (election, _) in &ours {
        assert!(!election.is_leader());
    }

    // Back: the session takes a new lease, and every election campaigns on it.
    proxy.restore().await.expect("restore");
    let mut lease = shared.watch_lease();
    within(
        10.0,
        "a new lease",
        lease.wait_for(|id| *id != NO_LEASE && *id != first_lease),
    )
    .await
    .expect("session alive");
    let new_lease = shared.lease_id();
    for name in &names {
        let key = format!("/elections/{name}/{new_lease:x}");
        eventually(5.0, "our key on the new lease", || async {
            keys_under(&client, &format!("/elections/{name}/"))
                .await
                .contains(&key)
        })
        .await;
    }
    for (election, _) in theirs {
        election.close().await;
    }
    shared.close().await;
    for (election, _) in &ours {
        assert!(!election.is_leader());
    }
}

#[tokio::test]
async fn a_thousand_elections_on_one_session_all_report_a_revoked_lease() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let prefix = unique("thousand");
    let shared = held_session(&client, 5).await;
    let lease = shared.lease_id();
    let mut elections = Vec::new();
    for i in 0..1000 {
        let (observer, events) = timeline();
        let config = on(&format!("{prefix}/{i}"), "shared", observer);
        elections.push((
            new_election_on_async(&shared, config).expect("election"),
            events,
        ));
    }
    eventually(60.0, "all 1000 lead", || async {
        elections.iter().all(|(e, _)| e.is_leader())
    })
    .await;

    let revoked_at = Instant::now();
    client
        .lease()
        .lease_revoke(LeaseRevokeRequest { id: lease })
        .await
        .expect("revoke by someone else");
    eventually(10.0, "every election reports the loss", || async {
        elections.iter().all(|(_, events)| {
            events
                .lock()
                .unwrap()
                .iter()
                .any(|(at, e)| *at >= revoked_at && !e.is_leader && e.err.is_some())
        })
    })
    .await;
    // They all lead again on the session's next lease.
    eventually(60.0, "all 1000 lead again", || async {
        elections.iter().all(|(e, _)| e.is_leader())
    })
    .await;
    assert_ne!(shared.lease_id(), lease);

    let closed_at = Instant::now();
    shared.close().await;
    assert!(
        closed_at.elapsed() < Duration::from_secs(6),
        "closing the session and its 1000 elections took {:?}",
        closed_at.elapsed()
    );
    for (election, events) in &elections {
        assert!(!election.is_leader());
        let last = events.lock().unwrap().last().map(|(_, e)| e.is_done);
        assert_eq!(
            last,
            Some(true),
            "{}: is_done is the last event",
            election.name()
        );
    }
    assert!(
        keys_under(&client, &format!("/elections/{prefix}/"))
            .await
            .is_empty()
    );
    assert!(lease_ids(&client).await.is_empty());
}

#[tokio::test]
async fn closing_one_election_resigns_it_and_keeps_the_session_and_the_others() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let (a_name, b_name) = (unique("resign-a"), unique("resign-b"));
    let shared = held_session(&client, 5).await;
    let lease = shared.lease_id();
    let (observer, _) = timeline();
    let a = new_election_on(&shared, on(&a_name, "shared", observer.clone()))
        .await
        .expect("a");
    let b = new_election_on(&shared, on(&b_name, "shared", observer))
        .await
        .expect("b");
    assert!(a.is_leader() && b.is_leader());
    let (waiting, mut waiting_events) = candidate(&client, &a_name, "waiting", 5).await;
    assert!(!waiting.is_leader());

    a.close().await;
    until(
        &mut waiting_events,
        5.0,
        "the waiting candidate leads",
        |e| e.is_leader,
    )
    .await;
    assert!(!a.is_leader());
    assert!(
        b.is_leader(),
        "the other election on the session still leads"
    );
    assert_eq!(shared.lease_id(), lease);
    assert!(
        lease_ids(&client).await.contains(&lease),
        "the lease is not revoked"
    );
    assert_eq!(
        keys_under(&client, &format!("/elections/{b_name}/")).await,
        [format!("/elections/{b_name}/{lease:x}")]
    );

    waiting.close().await;
    shared.close().await;
    assert!(!b.is_leader());
    assert!(
        keys_under(&client, &format!("/elections/{b_name}/"))
            .await
            .is_empty()
    );
    assert!(!lease_ids(&client).await.contains(&lease));
}

#[tokio::test]
async fn closing_the_session_resigns_its_elections_then_revokes_within_ttl_plus_1s() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let names: Vec<String> = (0..3).map(|i| unique(&format!("close{i}"))).collect();
    let ttl = 3;
    let shared = held_session(&client, ttl).await;
    let lease = shared.lease_id();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for name in &names {
        let (observer, events) = timeline();
        ours.push((
            new_election_on(&shared, on(name, "shared", observer))
                .await
                .expect("ours"),
            events,
        ));
        theirs.push(candidate(&client, name, "other", ttl).await);
    }

    let started = Instant::now();
    shared.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(ttl as u64 + 1),
        "close took {:?}",
        started.elapsed()
    );
    for (election, events) in &ours {
        assert!(!election.is_leader());
        let events = events.lock().unwrap();
        assert!(events.last().is_some_and(|(_, e)| e.is_done));
    }
    assert!(!lease_ids(&client).await.contains(&lease));
    for (other, events) in &mut theirs {
        until(events, 5.0, "the other leads", |e| e.is_leader).await;
        assert!(other.is_leader());
    }
    // A resign, not a lease expiry: the others led long before the TTL.
    assert!(started.elapsed() < Duration::from_secs(ttl as u64));
    for (other, _) in theirs {
        other.close().await;
    }
    for name in &names {
        assert!(
            keys_under(&client, &format!("/elections/{name}/"))
                .await
                .is_empty()
        );
    }
}

#[tokio::test]
async fn client_close_closes_shared_sessions_and_their_elections() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let inspector = crate::common::client(&etcd).await;
    let prefix = unique("client-close");
    let shared = held_session(&client, 5).await;
    let mut elections = Vec::new();
    for i in 0..10 {
        let (observer, _) = timeline();
        let config = on(&format!("{prefix}/{i}"), "shared", observer);
        elections.push(new_election_on(&shared, config).await.expect("election"));
    }
    client.close().await;
    assert!(elections.iter().all(|e| !e.is_leader()));
    assert!(
        keys_under(&inspector, &format!("/elections/{prefix}/"))
            .await
            .is_empty()
    );
    assert!(lease_ids(&inspector).await.is_empty());
    let (observer, _) = timeline();
    let refused = new_election_on_async(&shared, on(&prefix, "late", observer));
    assert!(matches!(refused, Err(Error::Closed)), "{refused:?}");
}

#[tokio::test]
async fn bad_input_on_a_shared_session_is_refused_and_leaves_nothing() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let shared = held_session(&client, 5).await;
    let (observer, _) = timeline();
    let bad_name = new_election_on_async(&shared, on(" / ", "x", observer.clone()));
    assert_eq!(
        bad_name.unwrap_err().to_string(),
        "ElectionConfig.election=\" / \" is not a non-empty election name"
    );
    let bad_ttl = new_election_on_async(
        &shared,
        ElectionConfig {
            ttl: -1,
            ..on("fine", "x", observer.clone())
        },
    );
    assert!(
        bad_ttl
            .unwrap_err()
            .to_string()
            .starts_with("ElectionConfig.ttl=-1 is not a TTL in seconds"),
    );
    assert!(keys_under(&client, "/elections/").await.is_empty());
    shared.close().await;
    let closed = new_election_on_async(&shared, on("fine", "x", observer));
    assert!(matches!(closed, Err(Error::Closed)), "{closed:?}");
}

// With both engines: a shared session's step-down does not depend on how
// its elections campaign.
crate::both_engines!(elections_on_a_blackholed_session_step_down_together_before_others_lead);
