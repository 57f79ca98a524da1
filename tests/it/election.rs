//! Election against a real etcd: ports of the Go package's tests, and more.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use etcdutil::proto::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest, request_op};
use etcdutil::{
    Client, Election, ElectionConfig, ElectionEvent, Error, EventObserver, NO_LEASE, Session,
    SessionConfig, new_election, new_election_async, new_election_on,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

async fn assert_closing_events(events: &mut mpsc::UnboundedReceiver<ElectionEvent>) {
    // Skip what came before the close (errors while cut off, say).
    let stepped_down = until(events, 3.0, "the closing not-leader event", |e| {
        !e.is_leader && e.err.is_none() && e.leader_key.is_empty()
    })
    .await;
    assert!(!stepped_down.is_done, "{stepped_down:?}");
    let done = next(events, 3.0).await;
    assert!(done.is_done && !done.is_leader, "{done:?}");
    assert!(events.try_recv().is_err(), "nothing after is_done");
}

async fn lone_candidate_leads_and_is_not_leader_after_close() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("lone");
    let (observer, mut events) = recorder();
    let election = within(
        5.0,
        "new_election",
        new_election(&client, config(&name, "me", 5, observer)),
    )
    .await
    .unwrap();
    assert!(election.is_leader());
    let first = next(&mut events, 1.0).await;
    assert!(
        first.is_leader && !first.is_done && first.err.is_none(),
        "{first:?}"
    );
    assert_eq!(first.leader_data, "me");
    assert!(
        first.leader_key.starts_with(&format!("/elections/{name}/")),
        "{}",
        first.leader_key
    );
    let term = election.leader_key().expect("a term while leading");
    assert_eq!(String::from_utf8_lossy(&term.key), first.leader_key);
    assert!(term.rev > 0);

    election.close().await;
    assert!(!election.is_leader());
    assert!(election.leader_key().is_none());
    assert_closing_events(&mut events).await;
    assert!(
        keys_under(&client, "/elections/").await.is_empty(),
        "no key left"
    );
    assert_eq!(lease_ids(&client).await, Vec::<i64>::new(), "no lease left");
}

async fn two_campaigns_see_the_exact_event_sequence() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("two");
    let (a, mut a_events) = candidate(&client, &name, "a", 5).await;
    let a_first = next(&mut a_events, 1.0).await;
    assert!(a_first.is_leader);

    let (b, mut b_events) = candidate(&client, &name, "b", 5).await;
    assert!(!b.is_leader());
    let b_first = next(&mut b_events, 1.0).await;
    assert!(
        !b_first.is_leader && !b_first.is_done && b_first.err.is_none(),
        "{b_first:?}"
    );
    assert_eq!(b_first.leader_key, a_first.leader_key, "B sees A's key");
    assert_eq!(b_first.leader_data, "a");

    let closed_at = Instant::now();
    a.close().await;
    assert_closing_events(&mut a_events).await;
    let b_leads = next(&mut b_events, 3.0).await;
    assert!(b_leads.is_leader, "{b_leads:?}");
    assert_eq!(b_leads.leader_data, "b");
    assert!(b.is_leader());
    assert!(
        closed_at.elapsed() < Duration::from_secs(3),
        "the other wins within 3 s"
    );
    b.close().await;
    assert_closing_events(&mut b_events).await;
}

async fn candidate_that_never_wins_closes_cleanly_and_fast() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("never");
    let (a, _a_events) = candidate(&client, &name, "a", 5).await;
    let (b, mut b_events) = candidate(&client, &name, "b", 5).await;
    assert!(!next(&mut b_events, 1.0).await.is_leader);

    let started = Instant::now();
    b.close().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(200),
        "close of a non-leader took {took:?}"
    );
    assert_closing_events(&mut b_events).await;
    assert!(a.is_leader(), "the leader is untouched");
    assert_eq!(
        keys_under(&client, &format!("/elections/{name}/"))
            .await
            .len(),
        1
    );
    a.close().await;
}

async fn leader_cut_off_steps_down_and_the_other_wins() {
    let etcd = etcd().await;
    let (proxy, cut_client) = proxied_client(&etcd).await;
    let client = client(&etcd).await;
    let name = unique("cut");
    let (a, mut a_events) = candidate(&cut_client, &name, "a", 1).await;
    assert!(a.is_leader());
    let (b, mut b_events) = candidate(&client, &name, "b", 1).await;
    assert!(!b.is_leader());

    proxy.cut().await;
    let cut_at = Instant::now();
    until(&mut a_events, 5.0, "A reports not leader", |e| !e.is_leader).await;
    assert!(!a.is_leader());
    until(&mut b_events, 5.0, "B wins", |e| e.is_leader).await;
    assert!(b.is_leader());
    assert!(cut_at.elapsed() < Duration::from_secs(5));

    // A cut-off former leader closes within 3 s.
    let started = Instant::now();
    a.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "close took {:?}",
        started.elapsed()
    );
    assert_closing_events(&mut a_events).await;
    b.close().await;
}

#[tokio::test]
async fn etcd_unreachable_from_the_start_then_close_is_done_within_3s() {
    let etcd = etcd().await;
    let (proxy, client) = proxied_client(&etcd).await;
    proxy.cut().await;
    let (observer, mut events) = recorder();
    let election =
        new_election_async(&client, config(&unique("unreachable"), "a", 5, observer)).unwrap();
    let error = until(&mut events, 5.0, "an error event", |e| e.err.is_some()).await;
    assert!(!error.is_leader);
    let started = Instant::now();
    election.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "close took {:?}",
        started.elapsed()
    );
    until(&mut events, 3.0, "is_done", |e| e.is_done).await;
}

async fn etcd_down_at_start_and_up_later_elects_us() {
    let etcd = etcd().await;
    let (proxy, client) = proxied_client(&etcd).await;
    proxy.cut().await;
    let (observer, mut events) = recorder();
    let election = new_election_async(&client, config(&unique("late"), "a", 2, observer)).unwrap();
    until(&mut events, 5.0, "an error while etcd is down", |e| {
        e.err.is_some()
    })
    .await;
    proxy.restore().await.unwrap();
    until(
        &mut events,
        3.0,
        "leader within 3 s of etcd coming up",
        |e| e.is_leader,
    )
    .await;
    assert!(election.is_leader());
    election.close().await;
}

async fn concede_hands_over_to_a_waiting_candidate_quickly() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("concede");
    let (a, mut a_events) = candidate(&client, &name, "a", 5).await;
    let (b, mut b_events) = candidate(&client, &name, "b", 5).await;
    next(&mut a_events, 1.0).await;
    next(&mut b_events, 1.0).await;

    let started = Instant::now();
    assert!(a.concede().await.unwrap(), "the leader concedes");
    assert!(!a.is_leader(), "not leader once concede returns");
    until(&mut b_events, 2.0, "B leads", |e| e.is_leader).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "handover took {took:?}");
    assert!(b.is_leader());
    // A campaigns again behind B and sees B lead.
    let seen = until(&mut a_events, 2.0, "A sees B lead", |e| {
        e.leader_data == "b"
    })
    .await;
    assert!(!seen.is_leader);

    // Not leader: concede changes nothing.
    assert!(!a.concede().await.unwrap());
    assert!(b.is_leader());
    a.close().await;
    b.close().await;
}

async fn proclaim_is_seen_by_the_other_candidates() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("proclaim");
    let (a, _a_events) = candidate(&client, &name, "a", 5).await;
    let (b, mut b_events) = candidate(&client, &name, "b", 5).await;
    next(&mut b_events, 1.0).await;

    a.proclaim("a at 10.0.0.7").await.unwrap();
    let seen = until(&mut b_events, 3.0, "the proclaimed data", |e| {
        e.leader_data == "a at 10.0.0.7"
    })
    .await;
    assert!(!seen.is_leader);
    assert_eq!(a.leader().await.unwrap().unwrap().data, "a at 10.0.0.7");
    assert!(
        matches!(b.proclaim("b").await, Err(Error::NotLeader)),
        "only the leader proclaims"
    );
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn foo_and_foobar_are_separate_elections() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let foo = unique("foo");
    let foobar = format!("{foo}bar");
    let (a, _a) = candidate(&client, &foo, "a", 5).await;
    let (b, _b) = candidate(&client, &foobar, "b", 5).await;
    assert!(
        a.is_leader() && b.is_leader(),
        "each leads its own election"
    );
    assert_eq!(a.leader().await.unwrap().unwrap().data, "a");
    assert_eq!(b.leader().await.unwrap().unwrap().data, "b");
    a.close().await;
    b.close().await;
}

async fn stale_leader_cannot_write_through_txn_if_leader() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("fence");
    let key = format!("/{name}/owner");
    let put = |value: &str| TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone().into(),
                value: value.to_owned().into(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let (a, _a) = candidate(&client, &name, "a", 5).await;
    let response = a.txn_if_leader(put("a")).await.unwrap();
    assert!(response.succeeded);
    let term = a.leader_key().unwrap();

    let (b, mut b_events) = candidate(&client, &name, "b", 5).await;
    a.concede().await.unwrap();
    until(&mut b_events, 3.0, "B leads", |e| e.is_leader).await;
    assert!(matches!(
        a.txn_if_leader(put("stale a")).await,
        Err(Error::NotLeader)
    ));

    // Even a term kept from before (a paused process) is fenced by etcd itself.
    let fenced = etcdutil::proto::etcdserverpb::Compare {
        result: etcdutil::proto::etcdserverpb::compare::CompareResult::Equal as i32,
        target: etcdutil::proto::etcdserverpb::compare::CompareTarget::Create as i32,
        key: term.key.clone(),
        target_union: Some(
            etcdutil::proto::etcdserverpb::compare::TargetUnion::CreateRevision(term.rev),
        ),
        range_end: Default::default(),
    };
    let stale = TxnRequest {
        compare: vec![fenced],
        ..put("stale a")
    };
    assert!(!client.kv().txn(stale).await.unwrap().into_inner().succeeded);

    assert!(b.txn_if_leader(put("b")).await.unwrap().succeeded);
    let value = client
        .kv()
        .range(RangeRequest {
            key: key.clone().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(value.into_inner().kvs[0].value, "b");
    a.close().await;
    b.close().await;
}

async fn dropping_an_election_leaves_no_key_behind() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("drop");
    let prefix = format!("/elections/{name}/");
    let (election, _events) = candidate(&client, &name, "a", 30).await;
    assert_eq!(keys_under(&client, &prefix).await.len(), 1);
    drop(election);
    eventually(5.0, "the key is gone", || async {
        keys_under(&client, &prefix).await.is_empty()
    })
    .await;
    eventually(5.0, "the lease is gone", || async {
        lease_ids(&client).await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn dropping_new_election_while_it_waits_withdraws_the_candidacy() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("withdraw");
    let prefix = format!("/elections/{name}/");
    // Without etcd answering, new_election cannot resolve; time it out.
    let (proxy, cut_client) = proxied_client(&etcd).await;
    proxy.blackhole().await.unwrap();
    let (observer, _events) = recorder();
    let attempt = tokio::time::timeout(
        Duration::from_millis(300),
        new_election(&cut_client, config(&name, "a", 2, observer)),
    )
    .await;
    assert!(
        attempt.is_err(),
        "new_election cannot resolve while etcd is unreachable"
    );
    proxy.restore().await.unwrap();
    // Whatever reached etcd is withdrawn: no key, and the lease is revoked or expires.
    eventually(8.0, "no key and no lease left", || async {
        keys_under(&client, &prefix).await.is_empty() && lease_ids(&client).await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn observe_and_leader_without_campaigning() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("observe");
    assert!(etcdutil::leader(&client, &name).await.unwrap().is_none());
    let mut leaders = etcdutil::observe(&client, &name).unwrap();
    let (a, _events) = candidate(&client, &name, "a", 5).await;
    use tokio_stream::StreamExt;
    let seen = within(3.0, "observed leader", leaders.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.data, "a");
    assert_eq!(seen.rev, a.leader_key().unwrap().rev);
    a.proclaim("a2").await.unwrap();
    let seen = within(3.0, "observed proclaim", leaders.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.data, "a2");
    a.close().await;
}

#[tokio::test]
async fn bad_election_config_is_refused_and_leaves_nothing() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let (observer, _events) = recorder();
    let err = new_election(&client, config("a\0b", "x", 5, observer.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "ElectionConfig.election=\"a\\0b\" is not an election name without NUL bytes"
    );
    let err = new_election(&client, config(" / ", "x", 5, observer.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "ElectionConfig.election=\" / \" is not a non-empty election name"
    );
    let err = new_election(&client, config("ok", "x", -1, observer))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "ElectionConfig.ttl",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        lease_ids(&client).await,
        Vec::<i64>::new(),
        "no stray lease"
    );
    assert!(
        keys_under(&client, "/elections/").await.is_empty(),
        "no stray key"
    );
}

/// etcdctl's `elect` and ours take turns in one election.
async fn interop_with_etcdctl_elect() {
    interop_with_etcdctl_elect_as(Form::Own).await;
}

#[tokio::test]
async fn interop_with_etcdctl_elect_on_a_shared_session() {
    interop_with_etcdctl_elect_as(Form::Shared).await;
}

async fn interop_with_etcdctl_elect_as(form: Form) {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let ground = Ground::new(&client, form).await;
    let name = unique("interop");
    let mut etcdctl = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "elect",
            &format!("/elections/{name}"),
            "ctl",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("etcdctl from Debian's etcd-client");
    let mut lines = BufReader::new(etcdctl.stdout.take().unwrap()).lines();
    // etcdctl prints the leader key and value once it leads.
    let key = within(5.0, "etcdctl leads", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(key.starts_with(&format!("/elections/{name}/")), "{key}");

    let (ours, mut events) = ground.stand(&name, "ours").await;
    let first = next(&mut events, 1.0).await;
    assert!(!first.is_leader);
    assert_eq!(
        (first.leader_key.as_str(), first.leader_data.as_str()),
        (key.as_str(), "ctl")
    );

    // etcdctl resigns on SIGINT; we take over.
    let pid = etcdctl.id().unwrap() as i32;
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    until(&mut events, 5.0, "we lead after etcdctl resigns", |e| {
        e.is_leader
    })
    .await;
    within(5.0, "etcdctl exits", etcdctl.wait()).await.unwrap();

    // And etcdctl sees ours as leader: `elect -l` prints the leader.
    let observed = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "elect",
            "-l",
            &format!("/elections/{name}"),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(observed.stdout.unwrap()).lines();
    let leader_key = within(5.0, "etcdctl observes", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let term = ours.leader_key().unwrap();
    assert_eq!(leader_key.as_bytes(), term.key.as_ref());
    let data = within(5.0, "etcdctl observes data", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data, "ours");
    ours.close().await;
    ground.close().await;
}

#[allow(dead_code)]
fn assert_object_safe(_: Arc<dyn etcdutil::LeaderElector>, _: &Election) {}

async fn back_in_the_race_after_etcd_restarts() {
    let mut etcd = etcd().await;
    let client = client(&etcd).await;
    let (election, mut events) = candidate(&client, &unique("restart"), "a", 2).await;
    assert!(election.is_leader());
    etcd.kill().unwrap();
    until(&mut events, 5.0, "not leader once etcd is gone", |e| {
        !e.is_leader
    })
    .await;
    assert!(!election.is_leader());
    etcd.restart().await.expect("restart etcd");
    until(&mut events, 10.0, "leader again after the restart", |e| {
        e.is_leader
    })
    .await;
    assert!(election.is_leader());
    election.close().await;
}

/// `close()` returns only once `is_done` went out, within TTL + 1 s, even
/// when etcd cannot be reached (a blackhole: nothing answers; a cut: every
/// connection is refused).
async fn close_is_done_within_ttl_plus_1s_when_etcd_is_unreachable() {
    let etcd = etcd().await;
    for fault in ["blackhole", "cut"] {
        let (proxy, client) = proxied_client(&etcd).await;
        let (observer, _events) = recorder();
        let ttl = 2;
        let election = new_election(&client, config(&unique(fault), "a", ttl, observer))
            .await
            .unwrap();
        assert!(election.is_leader());
        let mut events = election.subscribe();
        match fault {
            "blackhole" => proxy.blackhole().await.unwrap(),
            _ => proxy.cut().await,
        }
        let started = Instant::now();
        within(10.0, "close", election.close()).await;
        let took = started.elapsed();
        assert!(
            took <= Duration::from_secs(ttl as u64 + 1),
            "{fault}: close took {took:?}"
        );
        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            seen.push(event);
        }
        assert!(
            seen.last().is_some_and(|e| e.is_done),
            "{fault}: is_done was emitted before close returned: {seen:#?}"
        );
    }
}

/// With etcd reachable, `close()` leaves nothing behind the moment it
/// returns: no key, no lease (no waiting for a background revoke).
async fn nothing_is_left_in_etcd_when_close_returns() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("clean");
    let (observer, _events) = recorder();
    let leader = new_election(&client, config(&name, "a", 5, observer.clone()))
        .await
        .unwrap();
    let follower = new_election(&client, config(&name, "b", 5, observer))
        .await
        .unwrap();
    // Closed at once after the start: its grant or candidacy may be in flight.
    let (quick, _) = recorder();
    let starting = new_election_async(&client, config(&name, "c", 5, quick)).unwrap();
    for election in [&starting, &follower, &leader] {
        election.close().await;
    }
    assert_eq!(
        keys_under(&client, "/elections/").await,
        Vec::<String>::new()
    );
    assert_eq!(lease_ids(&client).await, Vec::<i64>::new(), "no lease left");
}

/// How our candidate stands in the tests that share an election with other
/// implementations: both forms must keep the same keys and rules.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// `new_election`: a session of its own.
    Own,
    /// `new_election_on` a caller's session, with another election on it.
    Shared,
}

/// The TTL of our candidates, and of the shared session.
const OUR_TTL: i64 = 5;

/// Where our candidates stand: each on a session of its own, or all on one
/// shared session on which a neighbour, alone in an election of its own,
/// stood first (so the lease is really shared, and in use when ours enter).
struct Ground {
    client: Client,
    /// The shared session, the neighbour and the lease it had at the start.
    shared: Option<(Session, Election, i64)>,
}

impl Ground {
    async fn new(client: &Client, form: Form) -> Ground {
        let shared = match form {
            Form::Own => None,
            Form::Shared => {
                let config = SessionConfig {
                    ttl: OUR_TTL,
                    ..Default::default()
                };
                let session = Session::new(client, config).expect("a session");
                let (observer, _events) = recorder();
                let neighbour = config_for(&unique("neighbour"), "neighbour", observer);
                let neighbour = within(5.0, "the neighbour", new_election_on(&session, neighbour))
                    .await
                    .expect("the neighbour's election");
                assert!(
                    neighbour.is_leader(),
                    "the neighbour is alone in its election"
                );
                let lease = session.lease_id();
                assert_ne!(lease, NO_LEASE);
                Some((session, neighbour, lease))
            }
        };
        Ground {
            client: client.clone(),
            shared,
        }
    }

    /// Candidate `id` in `election`, once its first outcome is known, and its events.
    async fn stand(
        &self,
        election: &str,
        id: &str,
    ) -> (Election, mpsc::UnboundedReceiver<ElectionEvent>) {
        let Some((session, _, _)) = &self.shared else {
            return candidate(&self.client, election, id, OUR_TTL).await;
        };
        let (observer, events) = recorder();
        let config = config_for(election, id, observer);
        let election = within(5.0, "new_election_on", new_election_on(session, config))
            .await
            .unwrap_or_else(|e| panic!("candidate {id}: {e}"));
        (election, events)
    }

    /// Once our candidates closed: closing them left the neighbour leading
    /// on the same lease; then the session closes, and the neighbour with it.
    async fn close(self) {
        let Some((session, neighbour, lease)) = self.shared else {
            return;
        };
        assert!(neighbour.is_leader(), "closing ours unseated the neighbour");
        assert_eq!(
            session.lease_id(),
            lease,
            "closing ours kept the shared lease"
        );
        within(10.0, "the session's close", session.close()).await;
        assert!(!neighbour.is_leader(), "the session closed its elections");
    }
}

/// Our candidates' config (on a shared session, its TTL is the session's).
fn config_for(election: &str, id: &str, observer: EventObserver) -> ElectionConfig {
    config(election, id, OUR_TTL, observer)
}

/// Writes a candidate the way the Go package (`holster/etcdutil`) does: key
/// `/elections/<name><lease hex>`, put if absent under its own lease (kept
/// alive by a session), the candidate's name as the value.
async fn go_candidate(
    client: &etcdutil::Client,
    election: &str,
    candidate: &str,
) -> (etcdutil::Session, String) {
    let session = etcdutil::Session::new(
        client,
        etcdutil::SessionConfig {
            ttl: 5,
            ..Default::default()
        },
    )
    .unwrap();
    let mut lease = session.watch_lease();
    within(
        5.0,
        "the Go candidate's lease",
        lease.wait_for(|id| *id != etcdutil::NO_LEASE),
    )
    .await
    .unwrap();
    let lease = session.lease_id();
    let key = format!("/elections/{election}{lease:x}");
    let put = PutRequest {
        key: key.clone().into(),
        value: candidate.to_owned().into(),
        lease,
        ..Default::default()
    };
    let txn = TxnRequest {
        compare: vec![etcdutil::proto::etcdserverpb::Compare {
            result: etcdutil::proto::etcdserverpb::compare::CompareResult::Equal as i32,
            target: etcdutil::proto::etcdserverpb::compare::CompareTarget::Create as i32,
            key: key.clone().into(),
            target_union: Some(
                etcdutil::proto::etcdserverpb::compare::TargetUnion::CreateRevision(0),
            ),
            range_end: Default::default(),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put)),
        }],
        failure: vec![],
    };
    let response = client.kv().txn(txn).await.unwrap().into_inner();
    assert!(response.succeeded, "the Go candidate's key was absent");
    (session, key)
}

/// The key the Go package takes for the leader: the oldest under the prefix
/// `/elections/<name>` (no `/`, so ours count too).
async fn go_leader(client: &etcdutil::Client, election: &str) -> Option<String> {
    let prefix = format!("/elections/{election}").into_bytes();
    let mut range_end = prefix.clone();
    *range_end.last_mut().unwrap() += 1;
    let range = RangeRequest {
        key: prefix.into(),
        range_end: range_end.into(),
        limit: 1,
        sort_order: etcdutil::proto::etcdserverpb::range_request::SortOrder::Ascend as i32,
        sort_target: etcdutil::proto::etcdserverpb::range_request::SortTarget::Create as i32,
        ..Default::default()
    };
    let response = client.kv().range(range).await.unwrap().into_inner();
    response
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
}

/// A Go candidate that entered first leads: ours defers to it, reports it
/// as the leader, and takes over within 1 s of its key's deletion.
async fn go_package_candidate_entered_first_leads_and_ours_follows() {
    go_package_candidate_entered_first_leads_and_ours_follows_as(Form::Own).await;
}

#[tokio::test]
async fn go_package_candidate_entered_first_leads_and_ours_follows_on_a_shared_session() {
    go_package_candidate_entered_first_leads_and_ours_follows_as(Form::Shared).await;
}

async fn go_package_candidate_entered_first_leads_and_ours_follows_as(form: Form) {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let ground = Ground::new(&client, form).await;
    let name = unique("mixed");
    let (go_session, go_key) = go_candidate(&client, &name, "go-a").await;

    let (ours, mut events) = ground.stand(&name, "rust-b").await;
    assert!(
        !ours.is_leader(),
        "two leaders: the Go candidate entered first"
    );
    let first = next(&mut events, 1.0).await;
    assert!(!first.is_leader && first.err.is_none(), "{first:?}");
    assert_eq!(
        (first.leader_key.as_str(), first.leader_data.as_str()),
        (go_key.as_str(), "go-a")
    );
    assert_eq!(
        go_leader(&client, &name).await.as_deref(),
        Some(go_key.as_str())
    );

    // The Go candidate leaves (its Close revokes its lease).
    go_session.close().await;
    let deleted = Instant::now();
    until(
        &mut events,
        1.0,
        "ours leads within 1 s of the Go key's deletion",
        |e| e.is_leader,
    )
    .await;
    assert!(ours.is_leader(), "after {:?}", deleted.elapsed());
    ours.close().await;
    ground.close().await;
}

/// A Go candidate that enters after ours does not affect us (the Go package
/// sees our older key and defers), and takes over when ours closes.
async fn go_package_candidate_entered_later_defers_to_ours() {
    go_package_candidate_entered_later_defers_to_ours_as(Form::Own).await;
}

#[tokio::test]
async fn go_package_candidate_entered_later_defers_to_ours_on_a_shared_session() {
    go_package_candidate_entered_later_defers_to_ours_as(Form::Shared).await;
}

async fn go_package_candidate_entered_later_defers_to_ours_as(form: Form) {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let ground = Ground::new(&client, form).await;
    let name = unique("mixed-later");
    let (ours, mut events) = ground.stand(&name, "rust-a").await;
    assert!(ours.is_leader());
    let our_key = next(&mut events, 1.0).await.leader_key;
    let (_go_session, go_key) = go_candidate(&client, &name, "go-b").await;
    assert_eq!(
        go_leader(&client, &name).await.as_deref(),
        Some(our_key.as_str()),
        "the Go package sees ours lead"
    );

    // A third candidate joins: its first outcome shows ours still leading.
    let (third_observer, _third_events) = recorder();
    let third = new_election(&client, config(&name, "rust-c", 5, third_observer))
        .await
        .unwrap();
    assert!(!third.is_leader());
    assert!(ours.is_leader(), "the later Go key did not unseat ours");
    assert!(events.try_recv().is_err(), "no event from the later Go key");

    // Ours leaves: the Go candidate is the oldest key, so the Go package's
    // rule elects it; and our third candidate defers to it.
    ours.close().await;
    assert_eq!(
        go_leader(&client, &name).await.as_deref(),
        Some(go_key.as_str())
    );
    assert!(!third.is_leader());
    third.close().await;
    ground.close().await;
}

/// Keys of election "foobar", in our layout and in the Go package's, are not
/// candidates of election "foo" (whose Go range they fall into). On a shared
/// session, foobar's key of ours is even on foo's lease.
#[tokio::test]
async fn foo_ignores_foobar_in_both_layouts() {
    foo_ignores_foobar_in_both_layouts_as(Form::Own).await;
}

#[tokio::test]
async fn foo_ignores_foobar_in_both_layouts_on_a_shared_session() {
    foo_ignores_foobar_in_both_layouts_as(Form::Shared).await;
}

async fn foo_ignores_foobar_in_both_layouts_as(form: Form) {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let ground = Ground::new(&client, form).await;
    let foo_election = unique("foo");
    let foobar = format!("{foo_election}bar");
    let (_go_session, _go_key) = go_candidate(&client, &foobar, "go-foobar").await;
    let (rust_foobar, _) = ground.stand(&foobar, "rust-foobar").await;
    assert!(
        !rust_foobar.is_leader(),
        "the Go candidate of foobar entered first"
    );

    let (ours, _) = ground.stand(&foo_election, "rust-foo").await;
    assert!(ours.is_leader(), "foo's only candidate leads");
    ours.close().await;
    rust_foobar.close().await;
    ground.close().await;
}

/// A candidate whose member goes silent (a blackhole: only HTTP/2 pings,
/// after 10 s or more, would find its streams dead) follows its client to
/// the other member: once back in the race there, it takes over from a
/// leader that closes within seconds, its observer not left behind.
#[tokio::test]
async fn observer_follows_the_client_to_another_member() {
    let etcd = etcd().await;
    let direct = client(&etcd).await;
    let proxies = [
        etcdutil::testing::Proxy::start(etcd.client_addr())
            .await
            .unwrap(),
        etcdutil::testing::Proxy::start(etcd.client_addr())
            .await
            .unwrap(),
    ];
    let b_client = etcdutil::Client::connect(etcdutil::Config {
        endpoints: proxies.iter().map(|p| p.endpoint()).collect(),
        ..etcd.config()
    })
    .await
    .unwrap();
    let name = unique("follow");
    let (a, _a_events) = candidate(&direct, &name, "a", 5).await;
    let (b, mut b_events) = candidate(&b_client, &name, "b", 2).await;
    assert!(a.is_leader() && !b.is_leader());

    let in_use = b_client.transport().current_endpoint().to_string();
    let silent = proxies
        .iter()
        .find(|p| in_use.contains(&p.addr().to_string()))
        .expect("the client uses one of the proxies");
    silent.blackhole().await.unwrap();
    // b loses its lease at its deadline, moves to the other member, and is
    // back in the race behind a.
    until(&mut b_events, 5.0, "b's lease loss", |e| e.err.is_some()).await;
    until(&mut b_events, 5.0, "b back behind a", |e| {
        !e.is_leader && e.leader_data == "a"
    })
    .await;

    a.close().await;
    until(&mut b_events, 5.0, "b leads after a closed", |e| {
        e.is_leader
    })
    .await;
    b.close().await;
}

// The tests that run with both engines (issue: the server-side engine
// passes the same tests as the default).
crate::both_engines!(
    lone_candidate_leads_and_is_not_leader_after_close,
    two_campaigns_see_the_exact_event_sequence,
    candidate_that_never_wins_closes_cleanly_and_fast,
    leader_cut_off_steps_down_and_the_other_wins,
    etcd_down_at_start_and_up_later_elects_us,
    concede_hands_over_to_a_waiting_candidate_quickly,
    proclaim_is_seen_by_the_other_candidates,
    stale_leader_cannot_write_through_txn_if_leader,
    dropping_an_election_leaves_no_key_behind,
    interop_with_etcdctl_elect,
    back_in_the_race_after_etcd_restarts,
    close_is_done_within_ttl_plus_1s_when_etcd_is_unreachable,
    nothing_is_left_in_etcd_when_close_returns,
    go_package_candidate_entered_first_leads_and_ours_follows,
    go_package_candidate_entered_later_defers_to_ours,
);
