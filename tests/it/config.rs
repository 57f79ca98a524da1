//! `new_config_with_env`: filling a `Config` from `ETCD3_*` variables, and the
//! errors for bad values. The environment is a map; the real one is not touched.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use etcdutil::{Config, ConfigError, TlsConfig};

use crate::common::{TempDir, fill, from_env};

/// Fills from the environment alone; the config must be accepted.
fn filled(vars: &[(&str, &str)]) -> Config {
    from_env(vars).unwrap_or_else(|err| panic!("{vars:?}: {err}"))
}

/// The message of the error that filling gives.
fn error(cfg: Option<Config>, vars: &[(&str, &str)]) -> String {
    match fill(cfg, vars) {
        Ok(cfg) => panic!("{vars:?} was accepted: {cfg:?}"),
        Err(err) => err.to_string(),
    }
}

fn env_error(vars: &[(&str, &str)]) -> String {
    error(None, vars)
}

/// A self-signed certificate and its key, in PEM.
struct Pair {
    cert: String,
    key: String,
}

fn pair() -> Pair {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    Pair {
        cert: certified.cert.pem(),
        key: certified.signing_key.serialize_pem(),
    }
}

/// A directory with `ca.pem`, and `cert.pem` + `key.pem` of another pair.
struct Files {
    dir: TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn files() -> Files {
    let dir = TempDir::new();
    let (ca, client) = (pair(), pair());
    let ca = dir.write("ca.pem", &ca.cert);
    let cert = dir.write("cert.pem", &client.cert);
    let key = dir.write("key.pem", &client.key);
    Files { dir, ca, cert, key }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

// ---------------------------------------------------------------- defaults

#[test]
fn defaults_with_empty_environment() {
    let cfg = filled(&[]);
    assert_eq!(cfg.endpoints, ["127.0.0.1:2379"]);
    assert_eq!(cfg.username, None);
    assert_eq!(cfg.password, None);
    assert_eq!(cfg.tls, None);
    assert_eq!(cfg.dial_timeout, Some(Duration::from_secs(5)));
    assert!(!cfg.debug);
    assert_eq!(cfg.endpoints, [etcdutil::DEFAULT_ENDPOINT]);
    assert_eq!(cfg.dial_timeout, Some(etcdutil::DEFAULT_DIAL_TIMEOUT));
}

#[test]
fn empty_variables_count_as_unset() {
    let vars = [
        "ETCD3_ENDPOINT",
        "ETCD3_USER",
        "ETCD3_PASSWORD",
        "ETCD3_TLS_CERT",
        "ETCD3_TLS_KEY",
        "ETCD3_CA",
        "ETCD3_SKIP_VERIFY",
        "ETCD3_ENABLE_TLS",
        "ETCD3_DIAL_TIMEOUT",
        "ETCD3_DEBUG",
    ]
    .map(|name| (name, ""));
    assert_eq!(filled(&vars), filled(&[]));
}

#[test]
fn a_filled_config_fills_to_itself() {
    let f = files();
    let filled = filled(&[
        ("ETCD3_ENDPOINT", "https://a:1, b:2"),
        ("ETCD3_USER", "root"),
        ("ETCD3_PASSWORD", "secret"),
        ("ETCD3_CA", s(&f.ca)),
        ("ETCD3_TLS_CERT", s(&f.cert)),
        ("ETCD3_TLS_KEY", s(&f.key)),
        ("ETCD3_DIAL_TIMEOUT", "1m"),
        ("ETCD3_DEBUG", "1"),
    ]);
    assert_eq!(fill(Some(filled.clone()), &[]).unwrap(), filled);
}

// ---------------------------------------------------------------- each variable alone

#[test]
fn endpoint_list() {
    let cfg = filled(&[("ETCD3_ENDPOINT", " a:1, http://b:2 ,c:3,")]);
    assert_eq!(cfg.endpoints, ["a:1", "http://b:2", "c:3"]);
    assert_eq!(cfg.tls, None);

    let cfg = filled(&[("ETCD3_ENDPOINT", "[::1]:2379")]);
    assert_eq!(cfg.endpoints, ["[::1]:2379"]);
}

#[test]
fn https_endpoint_turns_tls_on() {
    let cfg = filled(&[("ETCD3_ENDPOINT", "https://a:1,b:2")]);
    assert_eq!(cfg.endpoints, ["https://a:1", "b:2"]);
    assert_eq!(cfg.tls, Some(TlsConfig::default()));
}

#[test]
fn user_and_password() {
    let cfg = filled(&[("ETCD3_USER", "root"), ("ETCD3_PASSWORD", "secret")]);
    assert_eq!(cfg.username.as_deref(), Some("root"));
    assert_eq!(cfg.password.as_deref(), Some("secret"));
    assert!(!format!("{cfg:?}").contains("secret"), "{cfg:?}");
    assert!(format!("{cfg:?}").contains("<redacted>"), "{cfg:?}");
}

#[test]
fn ca_file() {
    let f = files();
    let cfg = filled(&[("ETCD3_CA", s(&f.ca))]);
    assert_eq!(
        cfg.tls,
        Some(TlsConfig {
            ca_file: Some(f.ca.clone()),
            ..Default::default()
        })
    );
}

#[test]
fn client_certificate() {
    let f = files();
    let cfg = filled(&[("ETCD3_TLS_CERT", s(&f.cert)), ("ETCD3_TLS_KEY", s(&f.key))]);
    let tls = TlsConfig {
        cert_file: Some(f.cert.clone()),
        key_file: Some(f.key.clone()),
        ..Default::default()
    };
    assert_eq!(cfg.tls, Some(tls));
}

#[test]
fn ca_and_client_certificate() {
    let f = files();
    let cfg = filled(&[
        ("ETCD3_CA", s(&f.ca)),
        ("ETCD3_TLS_CERT", s(&f.cert)),
        ("ETCD3_TLS_KEY", s(&f.key)),
    ]);
    let tls = TlsConfig {
        ca_file: Some(f.ca.clone()),
        cert_file: Some(f.cert.clone()),
        key_file: Some(f.key.clone()),
        skip_verify: false,
    };
    assert_eq!(cfg.tls, Some(tls));
}

#[test]
fn skip_verify() {
    let cfg = filled(&[("ETCD3_SKIP_VERIFY", "1")]);
    assert_eq!(
        cfg.tls,
        Some(TlsConfig {
            skip_verify: true,
            ..Default::default()
        })
    );
    assert_eq!(cfg.endpoints, ["127.0.0.1:2379"]);

    let f = files();
    let cfg = filled(&[
        ("ETCD3_SKIP_VERIFY", "yes"),
        ("ETCD3_TLS_CERT", s(&f.cert)),
        ("ETCD3_TLS_KEY", s(&f.key)),
    ]);
    assert!(cfg.tls.unwrap().skip_verify);
}

#[test]
fn enable_tls() {
    let cfg = filled(&[("ETCD3_ENABLE_TLS", "true")]);
    assert_eq!(cfg.tls, Some(TlsConfig::default()));
}

/// The Go-duration grammar itself is tested with its parser (`src/parse.rs`).
#[test]
fn dial_timeout() {
    let cfg = filled(&[("ETCD3_DIAL_TIMEOUT", "15s")]);
    assert_eq!(cfg.dial_timeout, Some(Duration::from_secs(15)));
}

#[test]
fn debug() {
    assert!(filled(&[("ETCD3_DEBUG", "1")]).debug);
    assert!(
        filled(&[("ETCD3_DEBUG", "false")]).debug,
        "any non-empty value"
    );
}

// ---------------------------------------------------------------- the caller wins

#[test]
fn caller_fields_beat_the_environment() {
    let f = files();
    let caller = Config {
        endpoints: vec!["caller:1".into()],
        username: Some("alice".into()),
        password: Some("alice-secret".into()),
        tls: Some(TlsConfig {
            ca_file: Some(f.ca.clone()),
            ..Default::default()
        }),
        dial_timeout: Some(Duration::from_secs(2)),
        debug: true,
    };
    let cfg = fill(
        Some(caller.clone()),
        &[
            ("ETCD3_ENDPOINT", "env:2"),
            ("ETCD3_USER", "bob"),
            ("ETCD3_PASSWORD", "bob-secret"),
            ("ETCD3_CA", s(&f.dir.missing("env-ca.pem"))),
            ("ETCD3_DIAL_TIMEOUT", "abc"),
        ],
    )
    .unwrap();
    assert_eq!(cfg, caller);
}

#[test]
fn caller_tls_gets_only_its_blanks_from_the_environment() {
    let f = files();
    let caller = Config {
        tls: Some(TlsConfig {
            ca_file: Some(f.ca.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let cfg = fill(
        Some(caller),
        &[
            ("ETCD3_TLS_CERT", s(&f.cert)),
            ("ETCD3_TLS_KEY", s(&f.key)),
            ("ETCD3_SKIP_VERIFY", "1"),
        ],
    )
    .unwrap();
    let tls = TlsConfig {
        ca_file: Some(f.ca.clone()),
        cert_file: Some(f.cert.clone()),
        key_file: Some(f.key.clone()),
        skip_verify: true,
    };
    assert_eq!(cfg.tls, Some(tls));
}

#[test]
fn caller_debug_stays_true_and_user_may_take_password_from_env() {
    let caller = Config {
        debug: true,
        username: Some("root".into()),
        ..Default::default()
    };
    let cfg = fill(Some(caller), &[("ETCD3_PASSWORD", "secret")]).unwrap();
    assert!(cfg.debug);
    assert_eq!(cfg.username.as_deref(), Some("root"));
    assert_eq!(cfg.password.as_deref(), Some("secret"));
}

#[test]
fn caller_https_endpoint_turns_tls_on() {
    let caller = Config {
        endpoints: vec!["https://a:2379".into()],
        ..Default::default()
    };
    assert_eq!(
        fill(Some(caller), &[]).unwrap().tls,
        Some(TlsConfig::default())
    );
}

// ---------------------------------------------------------------- bad values

#[test]
fn bad_dial_timeouts() {
    assert_eq!(
        env_error(&[("ETCD3_DIAL_TIMEOUT", "abc")]),
        "ETCD3_DIAL_TIMEOUT='abc' is not a duration (1m|15s|24h)"
    );
    assert_eq!(
        env_error(&[("ETCD3_DIAL_TIMEOUT", "15")]),
        "ETCD3_DIAL_TIMEOUT='15' is not a duration (1m|15s|24h)"
    );
    assert_eq!(
        env_error(&[("ETCD3_DIAL_TIMEOUT", "-1s")]),
        "ETCD3_DIAL_TIMEOUT='-1s' is not a duration (1m|15s|24h)"
    );
    assert_eq!(
        env_error(&[("ETCD3_DIAL_TIMEOUT", "0s")]),
        "ETCD3_DIAL_TIMEOUT='0s' is zero, expected a dial timeout above zero"
    );
    let caller = Config {
        dial_timeout: Some(Duration::ZERO),
        ..Default::default()
    };
    assert_eq!(
        error(Some(caller), &[]),
        "Config.dial_timeout='0ns' is zero, expected a dial timeout above zero"
    );
}

#[test]
fn bad_endpoints() {
    let cases = [
        (
            " , ",
            "ETCD3_ENDPOINT=' , ' lists no endpoint, expected host:port[,host:port...]",
        ),
        (
            "a:1,ftp://x:1",
            "endpoint 'ftp://x:1' in ETCD3_ENDPOINT has an unknown scheme, expected http:// or https://",
        ),
        (
            "host:99999",
            "endpoint 'host:99999' in ETCD3_ENDPOINT has an invalid port, expected a number from 1 to 65535",
        ),
        (
            "host:abc",
            "endpoint 'host:abc' in ETCD3_ENDPOINT has an invalid port, expected a number from 1 to 65535",
        ),
        (
            "host:0",
            "endpoint 'host:0' in ETCD3_ENDPOINT has an invalid port, expected a number from 1 to 65535",
        ),
        (
            "host",
            "endpoint 'host' in ETCD3_ENDPOINT has no port, expected host:port",
        ),
        (
            "http://host:",
            "endpoint 'http://host:' in ETCD3_ENDPOINT has no port, expected host:port",
        ),
        (
            ":2379",
            "endpoint ':2379' in ETCD3_ENDPOINT has no valid host, expected host:port",
        ),
        (
            "https://:2379",
            "endpoint 'https://:2379' in ETCD3_ENDPOINT has no valid host, expected host:port",
        ),
        (
            "http://a:1/v3",
            "endpoint 'http://a:1/v3' in ETCD3_ENDPOINT has a path, expected nothing after host:port",
        ),
        (
            "http://a:1,https://b:2",
            "ETCD3_ENDPOINT='http://a:1,https://b:2' mixes http:// and https:// endpoints, expected one scheme for all",
        ),
    ];
    for (value, expected) in cases {
        assert_eq!(env_error(&[("ETCD3_ENDPOINT", value)]), expected, "{value}");
    }
}

#[test]
fn bad_caller_endpoints() {
    let caller = |endpoints: &[&str]| Config {
        endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        ..Default::default()
    };
    assert_eq!(
        error(Some(caller(&[""])), &[("ETCD3_ENDPOINT", "a:1")]),
        "Config.endpoints='' lists no endpoint, expected host:port[,host:port...]"
    );
    assert_eq!(
        error(Some(caller(&[" ", ""])), &[]),
        "Config.endpoints=' ,' lists no endpoint, expected host:port[,host:port...]"
    );
    assert_eq!(
        error(Some(caller(&["a:1", "b"])), &[]),
        "endpoint 'b' in Config.endpoints has no port, expected host:port"
    );
    assert_eq!(
        error(Some(caller(&["http://a:1"])), &[("ETCD3_SKIP_VERIFY", "1")]),
        "endpoint 'http://a:1' in Config.endpoints is http:// but ETCD3_SKIP_VERIFY turns TLS on, expected https:// or host:port"
    );
}

#[test]
fn http_endpoint_contradicts_tls() {
    assert_eq!(
        env_error(&[("ETCD3_ENDPOINT", "http://a:1"), ("ETCD3_ENABLE_TLS", "1")]),
        "endpoint 'http://a:1' in ETCD3_ENDPOINT is http:// but ETCD3_ENABLE_TLS turns TLS on, expected https:// or host:port"
    );
    let caller = Config {
        tls: Some(TlsConfig::default()),
        ..Default::default()
    };
    assert_eq!(
        error(Some(caller), &[("ETCD3_ENDPOINT", "http://a:1")]),
        "endpoint 'http://a:1' in ETCD3_ENDPOINT is http:// but Config.tls turns TLS on, expected https:// or host:port"
    );
}

#[test]
fn half_credentials() {
    assert_eq!(
        env_error(&[("ETCD3_USER", "root")]),
        "ETCD3_USER='root' has no password, expected Config.password or ETCD3_PASSWORD too"
    );
    assert_eq!(
        env_error(&[("ETCD3_PASSWORD", "secret")]),
        "ETCD3_PASSWORD is set without a user name, expected Config.username or ETCD3_USER too"
    );
    let caller = Config {
        username: Some("root".into()),
        ..Default::default()
    };
    assert_eq!(
        error(Some(caller), &[]),
        "Config.username='root' has no password, expected Config.password or ETCD3_PASSWORD too"
    );
    let caller = Config {
        password: Some("secret".into()),
        ..Default::default()
    };
    let message = error(Some(caller), &[]);
    assert_eq!(
        message,
        "Config.password is set without a user name, expected Config.username or ETCD3_USER too"
    );
}

// ---------------------------------------------------------------- bad TLS files

#[test]
fn unreadable_ca_file() {
    let dir = TempDir::new();
    let ca = dir.missing("no-such-ca.pem");
    let err = fill(None, &[("ETCD3_CA", s(&ca))]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot read ETCD3_CA='{}'", ca.display())
    );
    let source = err.source().expect("the io error is the source");
    let io = source
        .downcast_ref::<Arc<std::io::Error>>()
        .expect("an Arc<io::Error>");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    assert!(matches!(&err, ConfigError::ReadFile { source, .. } if source.kind() == io.kind()));

    let caller = Config {
        tls: Some(TlsConfig {
            ca_file: Some(ca.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        error(Some(caller), &[]),
        format!("cannot read TlsConfig.ca_file='{}'", ca.display())
    );
}

#[test]
fn ca_file_not_pem() {
    let dir = TempDir::new();
    let ca = dir.write("ca.pem", "this is not a certificate\n");
    assert_eq!(
        env_error(&[("ETCD3_CA", s(&ca))]),
        format!(
            "ETCD3_CA='{}' holds no PEM certificate, expected -----BEGIN CERTIFICATE-----",
            ca.display()
        )
    );
}

#[test]
fn ca_file_broken_pem() {
    let dir = TempDir::new();
    let ca = dir.write(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let err = fill(None, &[("ETCD3_CA", s(&ca))]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("ETCD3_CA='{}' is not valid PEM", ca.display())
    );
    assert!(err.source().is_some());
}

#[test]
fn ca_file_holding_only_a_key() {
    let f = files();
    assert_eq!(
        env_error(&[("ETCD3_CA", s(&f.key))]),
        format!(
            "ETCD3_CA='{}' holds no PEM certificate, expected -----BEGIN CERTIFICATE-----",
            f.key.display()
        )
    );
}

#[test]
fn cert_without_key() {
    let f = files();
    assert_eq!(
        env_error(&[("ETCD3_TLS_CERT", s(&f.cert))]),
        format!(
            "ETCD3_TLS_CERT='{}' is a client certificate without a key, expected TlsConfig.key_file or ETCD3_TLS_KEY too",
            f.cert.display()
        )
    );
}

#[test]
fn key_without_cert() {
    let f = files();
    let caller = Config {
        tls: Some(TlsConfig {
            key_file: Some(f.key.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        error(Some(caller), &[]),
        format!(
            "TlsConfig.key_file='{}' is a client key without a certificate, expected TlsConfig.cert_file or ETCD3_TLS_CERT too",
            f.key.display()
        )
    );
}

#[test]
fn key_not_matching_cert() {
    let f = files();
    let other = f.dir.write("other-key.pem", &pair().key);
    assert_eq!(
        env_error(&[("ETCD3_TLS_CERT", s(&f.cert)), ("ETCD3_TLS_KEY", s(&other))]),
        format!(
            "ETCD3_TLS_KEY='{}' is not the private key of the certificate in ETCD3_TLS_CERT",
            other.display()
        )
    );
}

#[test]
fn cert_file_without_certificate() {
    let f = files();
    assert_eq!(
        env_error(&[("ETCD3_TLS_CERT", s(&f.key)), ("ETCD3_TLS_KEY", s(&f.key))]),
        format!(
            "ETCD3_TLS_CERT='{}' holds no PEM certificate, expected -----BEGIN CERTIFICATE-----",
            f.key.display()
        )
    );
}

#[test]
fn key_file_without_key() {
    let f = files();
    assert_eq!(
        env_error(&[
            ("ETCD3_TLS_CERT", s(&f.cert)),
            ("ETCD3_TLS_KEY", s(&f.cert))
        ]),
        format!(
            "ETCD3_TLS_KEY='{}' holds no PEM private key, expected -----BEGIN PRIVATE KEY-----",
            f.cert.display()
        )
    );
}

#[test]
fn unreadable_key_file() {
    let f = files();
    let key = f.dir.missing("no-such-key.pem");
    assert_eq!(
        env_error(&[("ETCD3_TLS_CERT", s(&f.cert)), ("ETCD3_TLS_KEY", s(&key))]),
        format!("cannot read ETCD3_TLS_KEY='{}'", key.display())
    );
}

#[test]
fn temp_files_are_removed() {
    let f = files();
    let dir = f.dir.0.path().to_owned();
    assert!(dir.exists());
    drop(f);
    assert!(!dir.exists());
}

// ---------------------------------------------------------------- the crate's error

#[test]
fn config_error_is_the_source_of_error_config() {
    let err = fill(None, &[("ETCD3_DIAL_TIMEOUT", "abc")]).unwrap_err();
    let err = etcdutil::Error::from(err);
    // The configuration error speaks for itself.
    assert_eq!(
        err.to_string(),
        "ETCD3_DIAL_TIMEOUT='abc' is not a duration (1m|15s|24h)"
    );
    assert!(matches!(err, etcdutil::Error::Config(_)));
    let _clone = err.clone();
}
