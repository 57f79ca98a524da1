//! The server-side engine's own tests: refused with user/password auth, and
//! why (etcd issue 17502, as etcd behaves today); `observe_with`; a Campaign
//! cancelled by a close leaves no key. The election tests that run with both
//! engines are in `election.rs` (`both_engines!`).

use std::time::Duration;

use crate::common::*;
use etcdutil::proto::etcdserverpb::LeaseGrantRequest;
use etcdutil::proto::v3electionpb::{CampaignRequest, ResignRequest};
use etcdutil::testing::Etcd;
use etcdutil::{
    Client, Config, ElectionConfig, Engine, Error, Session, SessionConfig, new_election,
    new_election_async, new_election_on, observe_with,
};
use tokio_stream::StreamExt;

fn as_root(etcd: &Etcd, password: &str) -> Config {
    Config {
        username: Some("root".into()),
        password: Some(password.into()),
        ..etcd.config()
    }
}

fn server_side(election: &str, candidate: &str) -> ElectionConfig {
    ElectionConfig {
        election: election.into(),
        candidate: candidate.into(),
        ttl: 5,
        engine: Engine::ServerSide,
        ..Default::default()
    }
}

/// With a user and password, the server-side engine is refused at
/// construction, with the etcd issue named, and nothing reaches etcd.
#[tokio::test]
async fn server_side_is_refused_with_user_and_password_and_leaves_nothing() {
    let etcd = etcd().await;
    enable_auth(&etcd, "secret").await;
    let client = Client::connect(as_root(&etcd, "secret")).await.unwrap();
    let name = unique("refused");
    let message = |error: Error| {
        let text = error.to_string();
        assert!(matches!(error, Error::InvalidArgument { .. }), "{text}");
        assert!(
            text.contains("17502") && text.contains("ClientSide"),
            "{text}"
        );
    };
    message(new_election_async(&client, server_side(&name, "a")).unwrap_err());
    message(
        new_election(&client, server_side(&name, "a"))
            .await
            .unwrap_err(),
    );
    let session = Session::new(&client, SessionConfig::default()).unwrap();
    message(
        new_election_on(&session, server_side(&name, "a"))
            .await
            .unwrap_err(),
    );
    session.close().await;
    message(observe_with(&client, &name, Engine::ServerSide).unwrap_err());
    assert!(keys_under(&client, "/elections/").await.is_empty());
    assert!(lease_ids(&client).await.is_empty(), "no lease granted");
    // The default engine is fine on the same client.
    let election = new_election(
        &client,
        ElectionConfig {
            engine: Engine::ClientSide,
            ..server_side(&name, "a")
        },
    )
    .await
    .unwrap();
    assert!(election.is_leader());
    election.close().await;
}

/// Why the engine is refused with auth: etcd's server-side Campaign waits
/// on one internal watch stream, opened with the token of the caller whose
/// wait opened it and kept while anyone waits. A candidate that starts to
/// wait once that token has expired breaks it for everyone: the candidate
/// waiting first never leads after the leader resigns (etcd 3.4 retries
/// inside the server without end; 3.5 fails the waits). With the late
/// candidate not waiting, the same handover goes through: the control. A
/// test of etcd's behaviour: it fails, and tells us, the day an etcd fixes
/// issue 17502.
#[tokio::test]
async fn etcds_server_side_campaign_fails_once_the_first_waiters_token_expired() {
    let etcd = Etcd::builder().auth_token_ttl(2).start().await.unwrap();
    enable_auth(&etcd, "secret").await;
    // Separate clients, so separate tokens.
    let connect = || Client::connect(as_root(&etcd, "secret"));
    let resigner = connect().await.unwrap();
    // A leader and a candidate waiting behind it; after 4 s (two token
    // lifetimes), if `late`, a third candidate starts to wait; then the
    // leader resigns. Returns what the first waiting candidate got in 5 s.
    let handover = |late: bool| {
        let resigner = resigner.clone();
        async move {
            let name = format!("/elections/{}", unique("issue-17502"));
            let leader = campaign(connect().await.unwrap(), &name, "leader")
                .await
                .expect("the first candidate leads at once");
            let waiting = tokio::spawn({
                let (client, name) = (connect().await.unwrap(), name.clone());
                async move { campaign(client, &name, "waiting").await }
            });
            let keys = |n: usize| {
                let (resigner, prefix) = (resigner.clone(), format!("{name}/"));
                async move { keys_under(&resigner, &prefix).await.len() == n }
            };
            eventually(5.0, "the waiting key", || keys(2)).await;
            // Not a synchronisation: the token must outlive its TTL.
            tokio::time::sleep(Duration::from_secs(4)).await;
            let _late = if late {
                let (client, name) = (connect().await.unwrap(), name.clone());
                let late = tokio::spawn(async move { campaign(client, &name, "late").await });
                eventually(5.0, "the late key", || keys(3)).await;
                Some(late)
            } else {
                None
            };
            resigner
                .election()
                .resign(ResignRequest {
                    leader: Some(leader),
                })
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(5), waiting).await
        }
    };
    let control = handover(false).await;
    assert!(
        matches!(control, Ok(Ok(Ok(_)))),
        "the handover with no late waiter: {control:?}"
    );
    let broken = handover(true).await;
    match broken {
        Err(_) => println!("the waiting Campaign never returned"),
        Ok(Ok(Err(status))) => println!("the waiting Campaign failed: {status}"),
        other => panic!("etcd led the waiting candidate: issue 17502 may be fixed: {other:?}"),
    }
}

/// etcd's raw Campaign for `value` on a lease of its own.
async fn campaign(
    client: Client,
    name: &str,
    value: &'static str,
) -> Result<etcdutil::proto::v3electionpb::LeaderKey, tonic::Status> {
    let lease = client
        .lease()
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await?
        .into_inner()
        .id;
    let response = client
        .election()
        .campaign(CampaignRequest {
            name: name.to_owned().into(),
            lease,
            value: value.into(),
        })
        .await?;
    Ok(response.into_inner().leader.expect("a leader key"))
}

/// `observe_with(.., Engine::ServerSide)` follows etcd's Observe: each new
/// leader, and a proclaim.
#[tokio::test]
async fn observe_with_the_server_side_engine_sees_each_leader() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("observe-server-side");
    let mut leaders = observe_with(&client, &name, Engine::ServerSide).unwrap();
    let a = new_election(&client, server_side(&name, "a"))
        .await
        .unwrap();
    let first = within(5.0, "a observed", leaders.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.data, "a");
    a.proclaim("a2").await.unwrap();
    let second = within(5.0, "a's proclaim", leaders.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((second.data.as_str(), second.rev), ("a2", first.rev));
    assert!(second.as_of_rev > first.as_of_rev);
    let b = new_election(&client, server_side(&name, "b"))
        .await
        .unwrap();
    a.close().await;
    let third = within(5.0, "b observed", leaders.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.data, "b");
    b.close().await;
}

/// A server-side candidate waiting in etcd's Campaign on a shared session,
/// closed: its Campaign is cancelled and its key deleted, though the
/// session's lease stays.
#[tokio::test]
async fn closing_a_waiting_server_side_candidate_leaves_no_key() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("waiting-server-side");
    let leader = new_election(&client, server_side(&name, "leader"))
        .await
        .unwrap();
    let session = Session::new(
        &client,
        SessionConfig {
            ttl: 5,
            ..Default::default()
        },
    )
    .unwrap();
    let waiting = new_election_on(&session, server_side(&name, "waiting"))
        .await
        .unwrap();
    assert!(!waiting.is_leader());
    let prefix = format!("/elections/{name}/");
    eventually(5.0, "the waiting key", || async {
        keys_under(&client, &prefix).await.len() == 2
    })
    .await;
    waiting.close().await;
    eventually(5.0, "the waiting key gone", || async {
        keys_under(&client, &prefix).await.len() == 1
    })
    .await;
    assert!(leader.is_leader());
    leader.close().await;
    session.close().await;
    assert!(keys_under(&client, &prefix).await.is_empty());
}

/// A server-side candidate waiting in etcd's Campaign whose lease is
/// revoked by someone else: etcd's Campaign would wait on (and later answer
/// for a key that no longer exists); ours is dropped with the lease, and
/// the candidate campaigns again on its session's next lease, then leads
/// with a key that is in etcd.
#[tokio::test]
async fn a_waiting_campaign_is_dropped_with_its_lease_and_campaigns_again() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let other = self::client(&etcd).await;
    let name = unique("revoked-server-side");
    let leader = new_election(&client, server_side(&name, "leader"))
        .await
        .unwrap();
    let waiting = new_election(&client, server_side(&name, "waiting"))
        .await
        .unwrap();
    let prefix = format!("/elections/{name}/");
    eventually(5.0, "the waiting key", || async {
        keys_under(&client, &prefix).await.len() == 2
    })
    .await;
    let keys = keys_under(&client, &prefix).await;
    let leader_key = String::from_utf8_lossy(&leader.leader_key().unwrap().key).into_owned();
    let old_key = keys.into_iter().find(|k| *k != leader_key).unwrap();
    let old_lease = i64::from_str_radix(old_key.rsplit('/').next().unwrap(), 16).unwrap();
    other
        .lease()
        .lease_revoke(etcdutil::proto::etcdserverpb::LeaseRevokeRequest { id: old_lease })
        .await
        .unwrap();
    // Back in the race on a new lease: a new key.
    eventually(10.0, "a new waiting key", || async {
        let keys = keys_under(&client, &prefix).await;
        keys.len() == 2 && !keys.contains(&old_key)
    })
    .await;
    leader.close().await;
    let term = within(10.0, "the waiting candidate leads", waiting.leadership())
        .await
        .unwrap();
    assert_ne!(term.lease(), old_lease, "it leads on its new lease");
    assert!(
        keys_under(&client, &prefix)
            .await
            .contains(&term.key().to_owned()),
        "its key is in etcd"
    );
    waiting.close().await;
    assert!(keys_under(&client, &prefix).await.is_empty());
}
