//! The wire log: every RPC's method, request and response at debug level on
//! the tracing target `etcdutil::wire`, with passwords and tokens redacted.
//! One test in its own binary, because it installs the global subscriber.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use etcdutil::proto::etcdserverpb::PutRequest;
use etcdutil::{Client, Config};

#[tokio::test]
async fn every_rpc_is_logged_with_secrets_redacted() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::set_global_default(WireCapture(lines.clone())).unwrap();

    let etcd = etcd().await;
    enable_auth(&etcd, "hunter2").await;

    let config = Config {
        username: Some("root".into()),
        password: Some("hunter2".into()),
        ..etcd.config()
    };
    let client = Client::connect(config).await.unwrap();
    let put = PutRequest {
        key: "/wire/key".into(),
        value: "wire-value".into(),
        ..Default::default()
    };
    client.kv().put(put).await.unwrap();

    let lines = lines.lock().unwrap().clone();
    let has = |needle: &str| lines.iter().any(|line| line.contains(needle));
    assert!(has("call /etcdserverpb.KV/Put"), "the method: {lines:#?}");
    // Keys and values print as escaped byte strings, not lists of numbers.
    assert!(
        has("send etcdserverpb.PutRequest")
            && has(r#"key: b"/wire/key""#)
            && has(r#"value: b"wire-value""#),
        "the request: {lines:#?}"
    );
    let numbers = format!("{:?}", b"/wire/key".to_vec());
    assert!(!has(&numbers[..12]), "a key as numbers: {lines:#?}");
    assert!(
        has("recv etcdserverpb.PutResponse"),
        "the response: {lines:#?}"
    );
    assert!(has("done /etcdserverpb.KV/Put"), "the outcome: {lines:#?}");
    assert!(has("send etcdserverpb.AuthenticateRequest"), "{lines:#?}");
    assert!(has("recv etcdserverpb.AuthenticateResponse"), "{lines:#?}");
    assert!(has("<redacted>"), "{lines:#?}");
    assert!(!has("hunter2"), "a password reached the log: {lines:#?}");
    let tokens: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("token: \"") && !l.contains("token: \"<redacted>\""))
        .collect();
    assert!(tokens.is_empty(), "a token reached the log: {tokens:#?}");
}
