//! One Watch stream per client, shared by every election's observer.

use std::time::Duration;

use etcdutil::testing::{Cluster, Etcd, Proxy};
use etcdutil::{Client, Config, ElectionConfig, Session, SessionConfig, new_election_on};
use tokio_stream::StreamExt;

use crate::common::*;

async fn watch_streams_started(etcd: &Etcd) -> f64 {
    etcd_metric(
        etcd,
        "grpc_server_started_total",
        &["grpc_method=\"Watch\""],
    )
    .await
}

#[tokio::test]
async fn every_election_of_a_client_watches_on_one_stream() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let before = watch_streams_started(&etcd).await;
    let session = Session::new(
        &client,
        SessionConfig {
            ttl: 5,
            ..Default::default()
        },
    )
    .unwrap();
    let prefix = unique("one-stream");
    let mut elections = Vec::new();
    for i in 0..50 {
        let config = ElectionConfig {
            election: format!("{prefix}/{i}"),
            ..Default::default()
        };
        elections.push(new_election_on(&session, config).await.unwrap());
    }
    // Elections with sessions of their own, and plain observers, too.
    for i in 0..5 {
        let (election, _) = candidate(&client, &format!("{prefix}/own{i}"), "own", 5).await;
        elections.push(election);
    }
    let mut observer = etcdutil::observe(&client, &format!("{prefix}/0")).unwrap();
    within(5.0, "the observer's first leader", observer.next()).await;
    assert!(elections.iter().all(|e| e.is_leader()));
    assert_eq!(
        watch_streams_started(&etcd).await - before,
        1.0,
        "56 watches, one gRPC Watch stream"
    );
    session.close().await;
    client.close().await;
}

/// A 3-member cluster; the observing client reaches each member through a
/// proxy of its own. Mid-stream, the member it watches through is cut off:
/// the shared stream moves to another member and resumes each watch from its
/// next revision, so the observer sees every proclaim once, in order.
#[tokio::test]
async fn failover_mid_stream_loses_and_repeats_no_change() {
    let cluster = Cluster::start(3).await.unwrap();
    let mut proxies = Vec::new();
    for member in cluster.members() {
        proxies.push(Proxy::start(member.client_addr()).await.unwrap());
    }
    let observing = Client::connect(Config {
        endpoints: proxies.iter().map(|p| p.endpoint()).collect(),
        ..cluster.config()
    })
    .await
    .unwrap();
    let writer = Client::connect(cluster.config()).await.unwrap();
    let name = unique("resume");
    let (leader, _) = candidate(&writer, &name, "leader", 5).await;
    let mut seen = etcdutil::observe(&observing, &name).unwrap();
    let first = within(5.0, "the first leader", seen.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.data, "leader");

    let mut proclaimed = Vec::new();
    for i in 0..40 {
        if i == 15 {
            let in_use = observing.transport().current_endpoint().to_string();
            let proxy = proxies
                .iter()
                .find(|p| in_use.contains(&p.addr().to_string()))
                .expect("calls go through a proxy");
            proxy.cut().await;
        }
        let value = format!("v{i}");
        leader.proclaim(value.clone()).await.unwrap();
        proclaimed.push(value);
    }
    let mut observed = Vec::new();
    within(20.0, "every proclaim, through the failover", async {
        while observed.len() < proclaimed.len() {
            match seen.next().await.expect("stream open") {
                Ok(leader) => observed.push(leader.data),
                Err(error) => eprintln!("observer: {error}"),
            }
        }
    })
    .await;
    assert_eq!(observed, proclaimed, "each change once, in etcd's order");
    leader.close().await;
}

/// etcd checks a watch's permission with the token its *stream* was opened
/// with. On a stream older than the token's life, a new watch is refused
/// until the stream is opened again with a renewed token; the watches
/// already on it must go on, missing nothing.
#[tokio::test]
async fn a_new_watch_after_token_expiry_reopens_the_stream_and_loses_no_event() {
    let etcd = Etcd::builder().auth_token_ttl(2).start().await.unwrap();
    enable_auth(&etcd, "secret").await;
    let as_root = Config {
        username: Some("root".into()),
        password: Some("secret".into()),
        ..etcd.config()
    };
    let observing = Client::connect(as_root.clone()).await.unwrap();
    let writer = Client::connect(as_root).await.unwrap();
    let (first, second) = (unique("token-a"), unique("token-b"));
    let (a, _) = candidate(&writer, &first, "a", 5).await;
    let mut a_seen = etcdutil::observe(&observing, &first).unwrap();
    assert_eq!(
        within(5.0, "a's leader", a_seen.next())
            .await
            .unwrap()
            .unwrap()
            .data,
        "a"
    );
    // Two token lifetimes and more: the stream's token is gone.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    a.proclaim("while idle").await.unwrap();

    let (b, _) = candidate(&writer, &second, "b", 5).await;
    let mut b_seen = etcdutil::observe(&observing, &second).unwrap();
    let b_first = within(10.0, "b's leader", b_seen.next()).await.unwrap();
    assert_eq!(b_first.expect("the new watch is not refused").data, "b");
    a.proclaim("after").await.unwrap();
    let mut a_data = Vec::new();
    within(10.0, "a's two proclaims", async {
        while a_data.len() < 2 {
            if let Ok(leader) = a_seen.next().await.expect("open") {
                a_data.push(leader.data);
            }
        }
    })
    .await;
    assert_eq!(a_data, ["while idle", "after"]);
    a.close().await;
    b.close().await;
}

/// etcd cancels one watch (here: a user not allowed to read one election)
/// and the others on the same stream go on.
#[tokio::test]
async fn a_cancelled_watch_leaves_the_others_on_the_stream_alone() {
    let etcd = etcd().await;
    let (allowed, denied) = (unique("allowed"), unique("denied"));
    let admin = client(&etcd).await;
    let role = etcdutil::proto::etcdserverpb::AuthRoleAddRequest {
        name: "elections".into(),
    };
    admin.auth().role_add(role).await.unwrap();
    let allowed_prefix = format!("/elections/{allowed}");
    let permission = etcdutil::proto::authpb::Permission {
        perm_type: etcdutil::proto::authpb::permission::Type::Readwrite as i32,
        key: allowed_prefix.clone().into(),
        range_end: format!("{allowed_prefix}0").into(),
    };
    let grant = etcdutil::proto::etcdserverpb::AuthRoleGrantPermissionRequest {
        name: "elections".into(),
        perm: Some(permission),
    };
    admin.auth().role_grant_permission(grant).await.unwrap();
    add_user(&admin, "limited", "pw", "elections").await;
    enable_auth(&etcd, "secret").await;
    let root = Client::connect(Config {
        username: Some("root".into()),
        password: Some("secret".into()),
        ..etcd.config()
    })
    .await
    .unwrap();
    let limited = Client::connect(Config {
        username: Some("limited".into()),
        password: Some("pw".into()),
        ..etcd.config()
    })
    .await
    .unwrap();
    let (leader, _) = candidate(&root, &allowed, "leader", 5).await;
    let mut seen = etcdutil::observe(&limited, &allowed).unwrap();
    within(5.0, "the allowed election's leader", seen.next())
        .await
        .unwrap()
        .unwrap();
    let mut refused = etcdutil::observe(&limited, &denied).unwrap();
    let error = within(5.0, "the refusal", refused.next())
        .await
        .unwrap()
        .expect_err("the denied election's watch is refused");
    assert!(
        chain(&error).join(": ").contains("permission denied"),
        "{error}"
    );
    leader.proclaim("still here").await.unwrap();
    let next = within(5.0, "the allowed watch goes on", seen.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.data, "still here");
    leader.close().await;
}
