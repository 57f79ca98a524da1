//! `Client::connect` against real etcd members: plaintext and TLS that work,
//! and the connections that must fail fast with a clear error (wrong CA,
//! unreachable endpoints, the wrong scheme).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use etcdutil::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseLeasesRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, compare, request_op, response_op,
};
use etcdutil::testing::Etcd;
use etcdutil::{Client, Config, Error, TlsConfig};

// ---------------------------------------------------------------- helpers

/// No lease at all in etcd.
async fn assert_no_lease(client: &Client) {
    let leases = client
        .lease()
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("LeaseLeases")
        .into_inner()
        .leases;
    assert!(leases.is_empty(), "leases left behind: {leases:?}");
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.to_owned().into(),
        value: value.to_owned().into(),
        ..Default::default()
    }
}

/// A Put and a Range of it through `client`; nothing else in etcd after.
async fn put_and_range(client: &Client) {
    client.kv().put(put("/client/k", "v")).await.expect("Put");
    let range = client
        .kv()
        .range(RangeRequest {
            key: "/client/k".into(),
            ..Default::default()
        })
        .await
        .expect("Range")
        .into_inner();
    assert_eq!(range.count, 1);
    assert_eq!(range.kvs[0].value, "v");
    assert_eq!(
        kvs_under(client, "").await,
        [("/client/k".to_owned(), "v".to_owned())]
    );
    assert_no_lease(client).await;
}

/// Two loopback addresses nothing listens on (bound, then released).
fn closed_ports() -> [SocketAddr; 2] {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    [a.local_addr().unwrap(), b.local_addr().unwrap()]
}

/// Connects with `config`, which must fail within 3 s; the error.
async fn connect_fails(config: Config) -> Error {
    let started = Instant::now();
    let result = within(10.0, "a connect that must fail", Client::connect(config)).await;
    let elapsed = started.elapsed();
    let err = result.expect_err("the connection must be refused");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    err
}

// ---------------------------------------------------------------- plaintext

#[tokio::test]
async fn plaintext_put_range_txn_delete_range_through_the_raw_clients() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let mut kv = client.kv();

    let put_response = kv
        .put(put("/plain/a", "1"))
        .await
        .expect("Put")
        .into_inner();
    let revision = put_response.header.expect("header").revision;
    kv.put(put("/plain/b", "2")).await.expect("Put");

    let range = kv
        .range(RangeRequest {
            key: "/plain/".into(),
            range_end: "/plain0".into(),
            ..Default::default()
        })
        .await
        .expect("Range")
        .into_inner();
    let values: Vec<&[u8]> = range.kvs.iter().map(|kv| kv.value.as_ref()).collect();
    assert_eq!(values, [b"1", b"2"]);

    // A Txn: if /plain/a is still at its first revision, put /plain/c and read /plain/a.
    let txn = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: "/plain/a".into(),
            target_union: Some(compare::TargetUnion::ModRevision(revision)),
            range_end: Default::default(),
        }],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestPut(put("/plain/c", "3"))),
            },
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: "/plain/a".into(),
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    let txn = kv.txn(txn).await.expect("Txn").into_inner();
    assert!(txn.succeeded);
    match &txn.responses[1].response {
        Some(response_op::Response::ResponseRange(range)) => assert_eq!(range.kvs[0].value, "1"),
        other => panic!("expected a Range response, got {other:?}"),
    }

    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: "/plain/a".into(),
            range_end: "/plain/c".into(),
            prev_kv: true,
        })
        .await
        .expect("DeleteRange")
        .into_inner();
    assert_eq!(deleted.deleted, 2);
    assert_eq!(deleted.prev_kvs.len(), 2);

    assert_eq!(
        kvs_under(&client, "").await,
        [("/plain/c".to_owned(), "3".to_owned())]
    );
    assert_no_lease(&client).await;
}

#[tokio::test]
async fn unreachable_endpoints_fail_within_the_dial_timeout_naming_both() {
    let [a, b] = closed_ports();
    let err = connect_fails(Config {
        endpoints: vec![a.to_string(), b.to_string()],
        dial_timeout: Some(Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    assert_cannot_connect(&err, &format!("http://{a},http://{b}"));
    let messages = chain(&err);
    assert!(
        messages[1..]
            .iter()
            .any(|m| m.contains("Connection refused")),
        "{messages:?}"
    );
}

// ---------------------------------------------------------------- TLS

#[tokio::test]
async fn tls_with_the_right_ca_and_client_certificate_puts_and_ranges() {
    let etcd = tls_etcd(true).await;
    let files = etcd.tls_files().unwrap();
    let config = etcd.config();
    assert_eq!(
        config.tls,
        Some(TlsConfig {
            ca_file: Some(files.ca_cert.clone()),
            cert_file: Some(files.client_cert.clone()),
            key_file: Some(files.client_key.clone()),
            skip_verify: false,
        })
    );
    let client = Client::connect(config).await.expect("connect over TLS");
    put_and_range(&client).await;
}

#[tokio::test]
async fn tls_with_skip_verify_and_the_client_certificate_puts_and_ranges() {
    let etcd = tls_etcd(true).await;
    let files = etcd.tls_files().unwrap();
    let config = Config {
        tls: Some(TlsConfig {
            ca_file: None,
            cert_file: Some(files.client_cert.clone()),
            key_file: Some(files.client_key.clone()),
            skip_verify: true,
        }),
        ..etcd.config()
    };
    let client = Client::connect(config)
        .await
        .expect("connect over TLS without verifying");
    put_and_range(&client).await;
}

/// `err` says that no endpoint answered within the 1 s dial timeout, naming
/// `endpoints` as the user wrote them.
fn assert_cannot_connect(err: &Error, endpoints: &str) {
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot connect to etcd at {endpoints} within 1s")
    );
}

/// Connects over TLS with `ca` as the only trusted root, which must fail as
/// a connect error naming the endpoint; returns the messages of its causes.
async fn tls_connect_refused(etcd: &Etcd, ca: std::path::PathBuf) -> Vec<String> {
    let err = connect_fails(Config {
        tls: Some(TlsConfig {
            ca_file: Some(ca),
            ..Default::default()
        }),
        dial_timeout: Some(Duration::from_secs(1)),
        ..etcd.config()
    })
    .await;
    assert_cannot_connect(&err, &format!("https://{}", etcd.client_addr()));
    chain(&err)[1..].to_vec()
}

#[tokio::test]
async fn tls_with_a_wrong_ca_fails_naming_the_certificate_problem() {
    let etcd = Etcd::builder().tls(true).start().await.expect("start etcd");
    let files = etcd.tls_files().unwrap();
    let messages = tls_connect_refused(&etcd, files.other_ca_cert.clone()).await;
    assert!(
        messages
            .iter()
            .any(|m| m.contains("invalid peer certificate: UnknownIssuer")),
        "{messages:?}"
    );
    // The right CA still works: nothing was left behind by the failed attempt.
    let client = client(&etcd).await;
    assert!(kvs_under(&client, "").await.is_empty());
    assert_no_lease(&client).await;
}

#[tokio::test]
async fn tls_without_a_client_certificate_is_refused_by_client_cert_auth() {
    let etcd = tls_etcd(true).await;
    let files = etcd.tls_files().unwrap();
    let messages = tls_connect_refused(&etcd, files.ca_cert.clone()).await;
    // TLS 1.3 lets the client finish its handshake before the server checks
    // the certificate: the client learns of the refusal from etcd's alert
    // when it reads it before the connection goes, and otherwise only that
    // etcd closed the connection: on its next read ("connection closed") or
    // its next write ("broken pipe"). Which of the three is a race.
    assert!(
        messages.iter().any(|m| {
            m.contains("received fatal alert: BadCertificate")
                || m.contains("connection closed")
                || m.contains("broken pipe")
        }),
        "{messages:?}"
    );
}

#[tokio::test]
async fn plaintext_client_to_a_tls_etcd_fails_at_connect() {
    let etcd = Etcd::builder().tls(true).start().await.expect("start etcd");
    let err = connect_fails(Config {
        endpoints: vec![etcd.client_addr().to_string()],
        dial_timeout: Some(Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    assert_cannot_connect(&err, &format!("http://{}", etcd.client_addr()));
}

#[tokio::test]
async fn tls_client_to_a_plaintext_etcd_fails_at_connect() {
    let etcd = etcd().await;
    let err = connect_fails(Config {
        endpoints: vec![format!("https://{}", etcd.client_addr())],
        tls: Some(TlsConfig {
            skip_verify: true,
            ..Default::default()
        }),
        dial_timeout: Some(Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    assert_cannot_connect(&err, &format!("https://{}", etcd.client_addr()));
    let messages = chain(&err);
    assert!(messages.len() > 1, "no cause given: {messages:?}");
}

/// 10,000 elections, each on a session of its own, closed at once while
/// their leases renew: 20,000 Resigns and Revokes overflow etcd's proposal
/// queue and it answers "too many requests". Revokes take turns (as grants
/// do) and retry that answer, so no key and no lease is left when
/// `Client::close` returns. (Without either, about half the leases were left
/// in `examples/scale`.)
#[tokio::test]
async fn client_close_of_ten_thousand_elections_leaves_nothing() {
    use etcdutil::{ElectionConfig, new_election_async};
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let watcher = crate::common::client(&etcd).await;
    let prefix = unique("ten-thousand");
    let elections: Vec<_> = (0..10_000)
        .map(|i| {
            let config = ElectionConfig {
                election: format!("{prefix}/{i}"),
                ttl: 10,
                ..Default::default()
            };
            new_election_async(&client, config).unwrap()
        })
        .collect();
    eventually(90.0, "all 10,000 lead", || async {
        elections.iter().all(|e| e.is_leader())
    })
    .await;
    // Close while the leases renew (every TTL/3): the revokes meet a full
    // round of keepalives in etcd.
    eventually(30.0, "a round of 10,000 keepalives", || async {
        let received = etcd_metric(
            &etcd,
            "grpc_server_msg_received_total",
            &["grpc_method=\"LeaseKeepAlive\""],
        );
        received.await >= 10_000.0
    })
    .await;
    within(40.0, "Client::close", client.close()).await;
    assert_eq!(
        keys_under(&watcher, &format!("/elections/{prefix}/"))
            .await
            .len(),
        0,
        "keys left after close"
    );
    assert_eq!(
        lease_ids(&watcher).await.len(),
        0,
        "leases left after close"
    );
}

/// `Client::close` closes everything made from the client, concurrently:
/// with 100 elections and 1,000 sessions open, etcd holds none of their keys
/// or leases once it returns; then new sessions, elections and calls fail
/// with `Error::Closed`, and a second close returns at once.
#[tokio::test]
async fn client_close_closes_every_session_and_election_made_from_it() {
    use etcdutil::{ElectionConfig, NO_LEASE, Session, SessionConfig, new_election_async};
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let watcher = crate::common::client(&etcd).await;
    let ttl = 5;
    let elections: Vec<_> = (0..100)
        .map(|i| {
            new_election_async(
                &client,
                ElectionConfig {
                    election: format!("close-all/{}", i % 10),
                    candidate: format!("c{i}"),
                    ttl,
                    event_observer: None,
                    ..Default::default()
                },
            )
            .unwrap()
        })
        .collect();
    let sessions: Vec<_> = (0..1000)
        .map(|_| {
            Session::new(
                &client,
                SessionConfig {
                    ttl,
                    ..Default::default()
                },
            )
            .unwrap()
        })
        .collect();
    eventually(20.0, "every session and candidate in etcd", || async {
        lease_ids(&watcher).await.len() == 1100
            && keys_under(&watcher, "/elections/close-all/").await.len() == 100
    })
    .await;
    let mut done = elections[0].subscribe();

    let started = Instant::now();
    within(20.0, "Client::close", client.close()).await;
    let took = started.elapsed();
    println!("Client::close of 100 elections and 1,000 sessions: {took:?}");
    assert!(
        took <= Duration::from_secs(ttl as u64 + 1),
        "close took {took:?}"
    );
    assert_eq!(
        keys_under(&watcher, "/elections/").await,
        Vec::<String>::new()
    );
    assert_eq!(lease_ids(&watcher).await, Vec::<i64>::new());
    assert!(sessions.iter().all(|s| s.lease_id() == NO_LEASE));
    assert!(elections.iter().all(|e| !e.is_leader()));
    let mut last = None;
    while let Ok(event) = done.try_recv() {
        last = Some(event);
    }
    assert!(
        last.is_some_and(|e| e.is_done),
        "is_done went out before close returned"
    );

    let refused = Session::new(&client, SessionConfig::default()).unwrap_err();
    assert!(matches!(refused, Error::Closed), "{refused:?}");
    let refused = new_election_async(&client, ElectionConfig::default()).unwrap_err();
    assert!(matches!(refused, Error::Closed), "{refused:?}");
    let status = client.kv().put(put("/closed", "x")).await.unwrap_err();
    assert!(matches!(Error::from(status), Error::Closed));
    assert_eq!(refused.to_string(), "the etcd client was closed");

    let again = Instant::now();
    client.close().await;
    assert!(again.elapsed() < Duration::from_millis(100), "idempotent");
}
