//! The bad input table: one test per bad input a user can hand the crate.
//!
//! Each test asserts the exact message the user sees (`to_string()`), the
//! cause in the `source()` chain where there is one, and that nothing was left
//! behind in etcd: no key the test did not put itself (a Range over the whole
//! keyspace) and no lease (`LeaseLeases`). Every test that needs etcd starts
//! its own.

use std::error::Error as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use etcdutil::proto::authpb::{Permission, permission};
use etcdutil::proto::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, PutRequest,
};
use etcdutil::testing::Etcd;
use etcdutil::{
    Client, Config, ConfigError, ElectionConfig, Error, Session, SessionConfig, TlsConfig,
    new_election, new_election_async,
};

// ---------------------------------------------------------------- helpers

/// Connects with `config`, which must fail with a configuration error at
/// once (nothing dialled); returns the `ConfigError` the user sees as the source.
async fn connect_config_error(config: Config) -> ConfigError {
    let started = Instant::now();
    let err = Client::connect(config)
        .await
        .expect_err("a bad config must be refused");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refusing a bad config took {:?}",
        started.elapsed()
    );
    let Error::Config(config_error) = &err else {
        panic!("expected Error::Config, got {err:?}");
    };
    // The configuration error speaks for itself.
    assert_eq!(err.to_string(), config_error.to_string());
    config_error.clone()
}

/// No key but `ours` and no lease at all in etcd, as seen by `client`.
async fn assert_nothing_left(client: &Client, ours: &[&str]) {
    let stray: Vec<String> = keys_under(client, "")
        .await
        .into_iter()
        .filter(|key| !ours.contains(&key.as_str()))
        .collect();
    assert!(stray.is_empty(), "keys left behind: {stray:?}");
    let leases: Vec<String> = lease_ids(client)
        .await
        .iter()
        .map(|id| format!("{id:x}"))
        .collect();
    assert!(leases.is_empty(), "leases left behind: {leases:?}");
}

/// Gives anything a call may have started in the background time to reach etcd.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

const NO_ENDPOINT: &str = "lists no endpoint, expected host:port[,host:port...]";
const BAD_PORT: &str = "has an invalid port, expected a number from 1 to 65535";

// ---------------------------------------------------------------- 1. empty endpoint list

#[test]
fn empty_endpoint_list_in_etcd3_endpoint_is_refused() {
    let err = from_env(&[("ETCD3_ENDPOINT", " , ")]).unwrap_err();
    assert!(matches!(err, ConfigError::NoEndpoint { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("ETCD3_ENDPOINT=' , ' {NO_ENDPOINT}")
    );
    assert!(err.source().is_none());
}

#[tokio::test]
async fn empty_endpoint_in_config_endpoints_is_refused_by_connect() {
    let err = connect_config_error(Config {
        endpoints: vec!["".into()],
        ..Default::default()
    })
    .await;
    assert!(matches!(err, ConfigError::NoEndpoint { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("Config.endpoints='' {NO_ENDPOINT}")
    );

    let err = connect_config_error(Config {
        endpoints: vec![" ".into(), "".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(
        err.to_string(),
        format!("Config.endpoints=' ,' {NO_ENDPOINT}")
    );
}

// ---------------------------------------------------------------- 2. bad port

#[test]
fn endpoint_with_port_99999_in_etcd3_endpoint_is_refused() {
    let err = from_env(&[("ETCD3_ENDPOINT", "127.0.0.1:99999")]).unwrap_err();
    assert!(matches!(err, ConfigError::EndpointPort { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("endpoint '127.0.0.1:99999' in ETCD3_ENDPOINT {BAD_PORT}")
    );
}

#[test]
fn endpoint_with_port_abc_in_etcd3_endpoint_is_refused() {
    let err = from_env(&[("ETCD3_ENDPOINT", "127.0.0.1:abc")]).unwrap_err();
    assert!(matches!(err, ConfigError::EndpointPort { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("endpoint '127.0.0.1:abc' in ETCD3_ENDPOINT {BAD_PORT}")
    );
}

/// A bad endpoint next to a good one: the whole list is refused before
/// anything is dialled, so the good etcd hears nothing.
#[tokio::test]
async fn endpoint_with_a_bad_port_next_to_a_live_etcd_is_refused_by_connect() {
    let etcd = etcd().await;
    for bad in ["127.0.0.1:99999", "127.0.0.1:abc"] {
        let err = connect_config_error(Config {
            endpoints: vec![etcd.endpoint(), bad.into()],
            ..etcd.config()
        })
        .await;
        assert!(matches!(err, ConfigError::EndpointPort { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("endpoint '{bad}' in Config.endpoints {BAD_PORT}")
        );
    }
    assert_nothing_left(&client(&etcd).await, &[]).await;
}

// ---------------------------------------------------------------- 3. unknown scheme

#[tokio::test]
async fn unknown_scheme_ftp_is_refused() {
    let expected = "has an unknown scheme, expected http:// or https://";
    let err = from_env(&[("ETCD3_ENDPOINT", "ftp://127.0.0.1:2379")]).unwrap_err();
    assert!(matches!(err, ConfigError::EndpointScheme { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("endpoint 'ftp://127.0.0.1:2379' in ETCD3_ENDPOINT {expected}")
    );

    let err = connect_config_error(Config {
        endpoints: vec!["ftp://127.0.0.1:2379".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(
        err.to_string(),
        format!("endpoint 'ftp://127.0.0.1:2379' in Config.endpoints {expected}")
    );
}

// ---------------------------------------------------------------- 4. TTL out of range

const TTL_EXPECTED: &str =
    "is not a TTL in seconds from 1 to 9000000000 (etcd's maximum), or 0 for the default";

/// `Session::new` with `ttl` is refused at once, and etcd never hears of it.
async fn session_ttl_is_refused(ttl: i64) {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let err = Session::new(
        &client,
        SessionConfig {
            ttl,
            ..Default::default()
        },
    )
    .expect_err("a TTL out of range must be refused");
    assert!(
        matches!(
            &err,
            Error::InvalidArgument {
                name: "SessionConfig.ttl",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("SessionConfig.ttl={ttl} {TTL_EXPECTED}")
    );
    assert!(err.source().is_none());
    settle().await;
    assert_nothing_left(&client, &[]).await;
}

#[tokio::test]
async fn session_ttl_below_zero_is_refused_without_a_lease() {
    session_ttl_is_refused(-1).await;
}

#[tokio::test]
async fn session_ttl_above_etcds_maximum_is_refused_without_a_lease() {
    session_ttl_is_refused(9_000_000_001).await;
}

/// 0 is not an error: it means the default of 30 s.
#[tokio::test]
async fn session_ttl_zero_means_the_default_of_30_seconds() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let (observer, mut recorder) = Recorder::new();
    let session = Session::new(&client, SessionConfig { ttl: 0, observer }).unwrap();
    assert_eq!(session.ttl(), 30);
    let lease = recorder.lease(10.0).await;
    let ttl = lease_ttl(&client, lease).await;
    assert!((28..=30).contains(&ttl), "etcd reports a TTL of {ttl}");
    session.close().await;
    assert_nothing_left(&client, &[]).await;
}

/// etcd's maximum itself is granted: the bound the crate checks is etcd's.
#[tokio::test]
async fn session_ttl_of_etcds_maximum_is_granted() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let (observer, mut recorder) = Recorder::new();
    let session = Session::new(
        &client,
        SessionConfig {
            ttl: etcdutil::MAX_LEASE_TTL,
            observer,
        },
    )
    .unwrap();
    let lease = recorder.lease(10.0).await;
    assert!(lease_ttl(&client, lease).await > 8_999_999_000);
    within(5.0, "Session::close", session.close()).await;
    assert_nothing_left(&client, &[]).await;
}

/// `new_election` with `ttl` fails at once, with no key and no lease in etcd.
async fn election_ttl_is_refused(ttl: i64) {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let config = || ElectionConfig {
        election: "ttl-table".into(),
        candidate: "me".into(),
        ttl,
        event_observer: None,
        ..Default::default()
    };
    let expected = format!("ElectionConfig.ttl={ttl} {TTL_EXPECTED}");

    let err = within(1.0, "new_election", new_election(&client, config()))
        .await
        .expect_err("a TTL out of range must be refused");
    assert!(
        matches!(
            &err,
            Error::InvalidArgument {
                name: "ElectionConfig.ttl",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), expected);

    let err = new_election_async(&client, config()).expect_err("refused too");
    assert_eq!(err.to_string(), expected);

    settle().await;
    assert_nothing_left(&client, &[]).await;
}

#[tokio::test]
async fn election_ttl_below_zero_is_refused_without_a_lease() {
    election_ttl_is_refused(-1).await;
}

#[tokio::test]
async fn election_ttl_above_etcds_maximum_is_refused_without_a_lease() {
    election_ttl_is_refused(9_000_000_001).await;
}

// ---------------------------------------------------------------- 5. bad election names

/// `new_election` on `name` fails at once, as do `leader` and `observe`, and
/// etcd is left as it was.
async fn election_name_is_refused(client: &Client, name: &str, expected: &str) {
    let config = ElectionConfig {
        election: name.into(),
        candidate: "me".into(),
        ttl: 5,
        event_observer: None,
        ..Default::default()
    };
    let err = within(1.0, "new_election", new_election(client, config.clone()))
        .await
        .expect_err("a bad election name must be refused");
    assert!(
        matches!(
            &err,
            Error::InvalidArgument {
                name: "ElectionConfig.election",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), expected, "{name:?}");
    let err = new_election_async(client, config).expect_err("refused too");
    assert_eq!(err.to_string(), expected, "{name:?}");
    let err = etcdutil::leader(client, name)
        .await
        .expect_err("refused too");
    assert_eq!(err.to_string(), expected, "{name:?}");
    let err = etcdutil::observe(client, name).expect_err("refused too");
    assert_eq!(err.to_string(), expected, "{name:?}");
}

#[tokio::test]
async fn election_name_with_a_nul_byte_is_refused() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    election_name_is_refused(
        &client,
        "jobs\0x",
        r#"ElectionConfig.election="jobs\0x" is not an election name without NUL bytes"#,
    )
    .await;
    settle().await;
    assert_nothing_left(&client, &[]).await;
}

#[tokio::test]
async fn election_name_empty_after_trimming_is_refused() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    for (name, shown) in [("", r#""""#), ("   ", r#""   ""#), ("/", r#""/""#)] {
        election_name_is_refused(
            &client,
            name,
            &format!("ElectionConfig.election={shown} is not a non-empty election name"),
        )
        .await;
    }
    settle().await;
    assert_nothing_left(&client, &[]).await;
}

// ---------------------------------------------------------------- 6. CA file not PEM

#[tokio::test]
async fn ca_file_that_is_not_pem_is_refused() {
    let etcd = Etcd::builder().tls(true).start().await.expect("start etcd");
    let dir = TempDir::new();
    let garbage = dir.write("ca.pem", "this is not a certificate\n");
    let config = Config {
        tls: Some(TlsConfig {
            ca_file: Some(garbage.clone()),
            ..Default::default()
        }),
        ..etcd.config()
    };
    let err = connect_config_error(config).await;
    assert!(matches!(err, ConfigError::NoCertificate { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "TlsConfig.ca_file='{}' holds no PEM certificate, expected -----BEGIN CERTIFICATE-----",
            garbage.display()
        )
    );

    let err = from_env(&[
        ("ETCD3_ENDPOINT", &etcd.endpoint()),
        ("ETCD3_CA", garbage.to_str().unwrap()),
    ])
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "ETCD3_CA='{}' holds no PEM certificate, expected -----BEGIN CERTIFICATE-----",
            garbage.display()
        )
    );
    assert_nothing_left(&client(&etcd).await, &[]).await;
}

#[test]
fn ca_file_with_broken_base64_is_refused_with_the_pem_error_as_source() {
    let dir = TempDir::new();
    let broken = dir.write(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let err = from_env(&[("ETCD3_CA", broken.to_str().unwrap())]).unwrap_err();
    assert!(matches!(err, ConfigError::InvalidPem { .. }), "{err:?}");
    let messages = chain(&err);
    assert_eq!(
        messages[0],
        format!("ETCD3_CA='{}' is not valid PEM", broken.display())
    );
    assert!(
        messages[1..].iter().any(|m| m.contains("base64")),
        "{messages:?}"
    );
}

#[test]
fn ca_file_with_a_certificate_that_is_not_der_is_refused() {
    let dir = TempDir::new();
    // Valid PEM, valid base64, but the bytes are no X.509 certificate.
    let bogus = dir.write(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    let err = from_env(&[("ETCD3_CA", bogus.to_str().unwrap())]).unwrap_err();
    assert!(
        matches!(err, ConfigError::InvalidCertificate { .. }),
        "{err:?}"
    );
    let messages = chain(&err);
    assert_eq!(
        messages[0],
        format!(
            "ETCD3_CA='{}' holds a certificate that rustls cannot use, expected a DER-encoded X.509 certificate",
            bogus.display()
        )
    );
    assert!(
        messages[1..].iter().any(|m| m.contains("BadEncoding")),
        "{messages:?}"
    );
}

// ---------------------------------------------------------------- 7. key not matching the cert

#[tokio::test]
async fn client_key_that_does_not_match_the_certificate_is_refused() {
    let etcd = tls_etcd(true).await;
    let files = etcd.tls_files().unwrap().clone();
    let config = Config {
        tls: Some(TlsConfig {
            ca_file: Some(files.ca_cert.clone()),
            cert_file: Some(files.client_cert.clone()),
            key_file: Some(files.other_client_key.clone()),
            skip_verify: false,
        }),
        ..etcd.config()
    };
    let err = connect_config_error(config).await;
    assert!(matches!(err, ConfigError::KeyMismatch { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "TlsConfig.key_file='{}' is not the private key of the certificate in TlsConfig.cert_file",
            files.other_client_key.display()
        )
    );

    let err = from_env(&[
        ("ETCD3_ENDPOINT", &etcd.endpoint()),
        ("ETCD3_CA", files.ca_cert.to_str().unwrap()),
        ("ETCD3_TLS_CERT", files.client_cert.to_str().unwrap()),
        ("ETCD3_TLS_KEY", files.other_client_key.to_str().unwrap()),
    ])
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "ETCD3_TLS_KEY='{}' is not the private key of the certificate in ETCD3_TLS_CERT",
            files.other_client_key.display()
        )
    );
    assert_nothing_left(&client(&etcd).await, &[]).await;
}

#[test]
fn client_key_that_rustls_cannot_use_is_refused() {
    let dir = TempDir::new();
    let certified = rcgen::generate_simple_self_signed(vec!["client".to_owned()]).unwrap();
    let cert = dir.write("cert.pem", &certified.cert.pem());
    // Valid PEM, but the bytes are no private key.
    let key = dir.write(
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n",
    );
    let err = from_env(&[
        ("ETCD3_TLS_CERT", cert.to_str().unwrap()),
        ("ETCD3_TLS_KEY", key.to_str().unwrap()),
    ])
    .unwrap_err();
    assert!(matches!(err, ConfigError::UnsupportedKey { .. }), "{err:?}");
    let messages = chain(&err);
    assert_eq!(
        messages[0],
        format!(
            "ETCD3_TLS_KEY='{}' holds a private key that rustls cannot use, expected an RSA, ECDSA P-256/P-384 or Ed25519 key",
            key.display()
        )
    );
    assert!(messages.len() > 1, "no cause given: {messages:?}");
}

// ---------------------------------------------------------------- 8. dial timeout of 0

#[tokio::test]
async fn dial_timeout_of_zero_is_refused() {
    let etcd = etcd().await;
    let err = connect_config_error(Config {
        dial_timeout: Some(Duration::ZERO),
        ..etcd.config()
    })
    .await;
    assert!(
        matches!(err, ConfigError::ZeroDialTimeout { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "Config.dial_timeout='0ns' is zero, expected a dial timeout above zero"
    );

    for zero in ["0s", "0", "0ms"] {
        let err = from_env(&[
            ("ETCD3_ENDPOINT", &etcd.endpoint()),
            ("ETCD3_DIAL_TIMEOUT", zero),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("ETCD3_DIAL_TIMEOUT='{zero}' is zero, expected a dial timeout above zero")
        );
    }
    assert_nothing_left(&client(&etcd).await, &[]).await;
}

// ---------------------------------------------------------------- 9. wrong password

const ROOT_PASSWORD: &str = "root-secret";

/// An etcd with auth enabled: user `root` (password [`ROOT_PASSWORD`], role
/// `root`) and, if `alice`, user `alice` (password `alice-secret`) whose role
/// may read and write `/other/` only. Returns it and a client logged in as root.
async fn etcd_with_auth(alice: bool) -> (Etcd, Client) {
    let etcd = etcd().await;
    let admin = client(&etcd).await;
    add_user(&admin, "root", ROOT_PASSWORD, "root").await;
    let mut auth = admin.auth();
    if alice {
        auth.role_add(AuthRoleAddRequest {
            name: "other-rw".into(),
        })
        .await
        .expect("add role");
        auth.role_grant_permission(AuthRoleGrantPermissionRequest {
            name: "other-rw".into(),
            perm: Some(Permission {
                perm_type: permission::Type::Readwrite as i32,
                key: "/other/".into(),
                range_end: "/other0".into(),
            }),
        })
        .await
        .expect("grant /other/");
        add_user(&admin, "alice", "alice-secret", "other-rw").await;
    }
    auth.auth_enable(AuthEnableRequest {})
        .await
        .expect("enable auth");
    let root = Client::connect(Config {
        username: Some("root".into()),
        password: Some(ROOT_PASSWORD.into()),
        ..etcd.config()
    })
    .await
    .expect("connect as root");
    (etcd, root)
}

#[tokio::test]
async fn wrong_password_is_refused_at_connect() {
    let (etcd, root) = etcd_with_auth(false).await;
    let started = Instant::now();
    let err = within(
        5.0,
        "connect with a wrong password",
        Client::connect(Config {
            username: Some("root".into()),
            password: Some("not-the-password".into()),
            dial_timeout: Some(Duration::from_secs(1)),
            ..etcd.config()
        }),
    )
    .await
    .expect_err("a wrong password must be refused");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(&err, Error::Auth { user, .. } if user == "root"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "etcd rejected the credentials of user 'root'"
    );
    let status = err.status().expect("etcd's status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );
    assert!(
        chain(&err)[1..]
            .iter()
            .any(|m| m.contains("authentication failed")),
        "{:?}",
        chain(&err)
    );
    assert_nothing_left(&root, &[]).await;
}

#[tokio::test]
async fn unknown_user_is_refused_at_connect() {
    let (etcd, root) = etcd_with_auth(false).await;
    let err = within(
        5.0,
        "connect as an unknown user",
        Client::connect(Config {
            username: Some("mallory".into()),
            password: Some("whatever".into()),
            ..etcd.config()
        }),
    )
    .await
    .expect_err("an unknown user must be refused");
    assert!(matches!(&err, Error::Auth { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "etcd rejected the credentials of user 'mallory'"
    );
    assert_nothing_left(&root, &[]).await;
}

#[tokio::test]
async fn right_password_connects_and_puts() {
    let (etcd, root) = etcd_with_auth(false).await;
    let client = within(
        5.0,
        "connect with the right password",
        Client::connect(Config {
            username: Some("root".into()),
            password: Some(ROOT_PASSWORD.into()),
            ..etcd.config()
        }),
    )
    .await
    .expect("the right password is accepted");
    client
        .kv()
        .put(PutRequest {
            key: "/auth/put".into(),
            value: "ok".into(),
            ..Default::default()
        })
        .await
        .expect("Put as root");
    assert_eq!(keys_under(&root, "").await, ["/auth/put"]);
    assert_nothing_left(&root, &["/auth/put"]).await;

    // Without credentials, the same etcd refuses the Put.
    let anonymous = Client::connect(etcd.config()).await.expect("connect");
    let err = anonymous
        .kv()
        .put(PutRequest {
            key: "/auth/anonymous".into(),
            ..Default::default()
        })
        .await
        .expect_err("no token, no Put");
    assert_eq!(err.message(), "etcdserver: user name is empty");
}

// ---------------------------------------------------------------- 10. no permission on /elections

#[tokio::test]
async fn user_without_permission_on_elections_is_refused_and_leaves_nothing() {
    let (etcd, root) = etcd_with_auth(true).await;
    let alice = Client::connect(Config {
        username: Some("alice".into()),
        password: Some("alice-secret".into()),
        ..etcd.config()
    })
    .await
    .expect("connect as alice");
    // Her own prefix works.
    alice
        .kv()
        .put(PutRequest {
            key: "/other/mine".into(),
            ..Default::default()
        })
        .await
        .expect("alice may write /other/");

    let err = within(
        10.0,
        "new_election without permission",
        new_election(
            &alice,
            ElectionConfig {
                election: "jobs".into(),
                candidate: "alice".into(),
                ttl: 30,
                event_observer: None,
                ..Default::default()
            },
        ),
    )
    .await
    .expect_err("alice may not campaign in /elections");
    // The first thing refused is the watch on the candidates, which the
    // candidacy waits for before it writes its key.
    assert!(
        matches!(&err, Error::WatchCanceled { reason, .. } if reason.ends_with("etcdserver: permission denied")),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("etcd canceled the watch: rpc error: code = PermissionDenied"),
        "{err}"
    );
    // Right away: no candidate key and no lease, not even one left to expire.
    assert_nothing_left(&root, &["/other/mine"]).await;
    settle().await;
    assert_nothing_left(&root, &["/other/mine"]).await;
}

// ---------------------------------------------------------------- 11. an etcd that is not etcd

/// A TCP server on a free loopback port: it closes every connection at once
/// if `close`, else holds it open and never writes a byte.
async fn not_etcd(close: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            if !close {
                held.push(stream);
            }
        }
    });
    addr
}

/// `Client::connect` to `addr` with a 1 s dial timeout fails well within 3 s
/// with `Error::Connect` naming the endpoint; the error's chain.
async fn connect_to_not_etcd(addr: SocketAddr) -> Vec<String> {
    let started = Instant::now();
    let result = within(
        10.0,
        "connect to something that is not etcd",
        Client::connect(Config {
            endpoints: vec![addr.to_string()],
            dial_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        }),
    )
    .await;
    let elapsed = started.elapsed();
    let err = result.expect_err("a server that is not etcd must be refused");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert!(
        matches!(&err, Error::Connect { endpoints, .. } if endpoints.contains(&addr.to_string())),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("cannot connect to etcd at http://{addr} within 1s")
    );
    chain(&err)
}

#[tokio::test]
async fn tcp_server_that_closes_at_once_is_refused_as_not_etcd() {
    let addr = not_etcd(true).await;
    let messages = connect_to_not_etcd(addr).await;
    assert!(messages.len() > 1, "no cause given: {messages:?}");
}

#[tokio::test]
async fn tcp_server_that_never_answers_is_refused_as_not_etcd() {
    let addr = not_etcd(false).await;
    connect_to_not_etcd(addr).await;
}

/// With credentials, connecting also authenticates: against a server that
/// never answers, that must not wait beyond the dial timeout either.
#[tokio::test]
async fn tcp_server_that_never_answers_is_refused_as_not_etcd_with_credentials() {
    let addr = not_etcd(false).await;
    let started = Instant::now();
    let result = within(
        20.0,
        "connect with credentials to something that is not etcd",
        Client::connect(Config {
            endpoints: vec![addr.to_string()],
            username: Some("root".into()),
            password: Some("secret".into()),
            dial_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        }),
    )
    .await;
    let elapsed = started.elapsed();
    let err = result.expect_err("a server that is not etcd must be refused");
    assert!(
        elapsed < Duration::from_secs(3),
        "took {elapsed:?} to fail with {:?}",
        chain(&err)
    );
    assert_eq!(
        err.to_string(),
        format!("cannot connect to etcd at http://{addr} within 1s")
    );
}
