//! Tests of `etcdutil::testing` against a real etcd (`$ETCD_BIN` or `etcd`
//! from `PATH`). Every test starts its own members on free ports, so they
//! run in parallel. Nothing sleeps to synchronise: waits have deadlines.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use etcdutil::testing::{Cluster, Etcd, Proxy, ProxyState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Upper bound for anything that should happen "soon".
const DEADLINE: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

// base64 of the keys and values used with etcd's JSON gateway.
const FOO: &str = "Zm9v"; // "foo"
const BAR: &str = "YmFy"; // "bar"
const BAZ: &str = "YmF6"; // "baz"

fn request(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Reads until EOF (or an error after some data, e.g. a TLS peer closing
/// without close_notify).
async fn read_all(mut s: impl AsyncRead + Unpin) -> io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) if !out.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// One HTTP/1.1 request over `stream`; returns the raw response.
async fn http_on(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    method: &str,
    path: &str,
    body: &str,
) -> io::Result<String> {
    stream
        .write_all(request(method, path, body).as_bytes())
        .await?;
    read_all(stream).await
}

/// One plaintext HTTP/1.1 request to etcd's client port (etcd serves its
/// JSON gateway and /version next to gRPC).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> io::Result<String> {
    timeout(DEADLINE, async {
        http_on(TcpStream::connect(addr).await?, method, path, body).await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "HTTP request timed out"))?
}

async fn version(addr: SocketAddr) -> String {
    http(addr, "GET", "/version", "")
        .await
        .expect("GET /version")
}

async fn put(addr: SocketAddr, key: &str, value: &str) {
    let body = format!(r#"{{"key":"{key}","value":"{value}"}}"#);
    let resp = http(addr, "POST", "/v3/kv/put", &body).await.expect("put");
    assert!(resp.starts_with("HTTP/1.1 200"), "put failed: {resp}");
}

async fn get(addr: SocketAddr, key: &str) -> String {
    let body = format!(r#"{{"key":"{key}"}}"#);
    let resp = http(addr, "POST", "/v3/kv/range", &body)
        .await
        .expect("range");
    assert!(resp.starts_with("HTTP/1.1 200"), "range failed: {resp}");
    resp
}

/// The value of `"field":"..."` in a JSON response.
fn json_str<'a>(resp: &'a str, field: &str) -> &'a str {
    let pat = format!("\"{field}\":\"");
    let start = resp
        .find(&pat)
        .unwrap_or_else(|| panic!("no {field} in {resp}"))
        + pat.len();
    let len = resp[start..].find('"').unwrap();
    &resp[start..start + len]
}

/// Which member leads, from the members' status.
async fn leader_index(cluster: &Cluster) -> usize {
    let status = |addr| async move {
        http(addr, "POST", "/v3/maintenance/status", "{}")
            .await
            .expect("status")
    };
    let resp = status(cluster.member(0).client_addr()).await;
    let leader = json_str(&resp, "leader").to_owned();
    for (i, m) in cluster.members().iter().enumerate() {
        let resp = status(m.client_addr()).await;
        if json_str(&resp, "member_id") == leader {
            return i;
        }
    }
    panic!("leader {leader} is not a member");
}

async fn assert_refused(addr: SocketAddr) {
    let r = timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .expect("connect should fail fast, not hang");
    let err = match r {
        Ok(s) => panic!(
            "connect to {addr} should be refused, but connected from {:?} to {:?}",
            s.local_addr(),
            s.peer_addr()
        ),
        Err(e) => e,
    };
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
}

#[tokio::test]
async fn member_starts_and_serves_clients() {
    let etcd = Etcd::start().await.expect("start etcd");
    let addr = etcd.client_addr();
    assert_eq!(etcd.endpoint(), format!("http://{addr}"));
    assert!(addr.ip().is_loopback());
    assert_eq!(etcd.name(), "etcd");
    assert!(etcd.pid().is_some());
    assert!(etcd.tls_files().is_none());
    let config = etcd.config();
    assert_eq!(config.endpoints, vec![etcd.endpoint()]);
    assert_eq!(config.dial_timeout, Some(Duration::from_secs(5)));
    assert!(config.tls.is_none());
    assert!(etcd.data_dir().join("member").is_dir());
    assert!(
        etcd.logs()
            .iter()
            .any(|l| l.contains("ready to serve client requests")
                || l.contains("serving client traffic"))
    );

    // A raw TCP connection gets answered.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request("GET", "/version", "").as_bytes())
        .await
        .unwrap();
    let resp = timeout(DEADLINE, read_all(&mut s)).await.unwrap().unwrap();
    assert!(resp.contains("etcdserver"), "{resp}");

    put(addr, FOO, BAR).await;
    assert!(get(addr, FOO).await.contains(BAR));

    let data_dir = etcd.data_dir().to_path_buf();
    drop(etcd);
    assert!(!data_dir.exists(), "data dir removed on drop");
    assert_refused(addr).await;
}

#[tokio::test]
async fn kill_and_restart_on_the_same_port_keeps_data() {
    let mut etcd = Etcd::start().await.expect("start etcd");
    let addr = etcd.client_addr();
    put(addr, FOO, BAR).await;
    let first_pid = etcd.pid().unwrap();

    etcd.kill().expect("kill");
    assert_eq!(etcd.pid(), None);
    assert!(!etcd.is_running());
    assert_refused(addr).await;

    etcd.restart().await.expect("restart after kill");
    assert_eq!(etcd.client_addr(), addr);
    assert_ne!(etcd.pid(), Some(first_pid));
    assert!(
        get(addr, FOO).await.contains(BAR),
        "data survived the crash"
    );

    // Graceful stop, then restart again.
    etcd.stop().await.expect("stop");
    assert!(!etcd.is_running());
    assert_refused(addr).await;
    etcd.restart().await.expect("restart after stop");
    assert!(version(addr).await.contains("etcdserver"));

    // Restarting a running member stops it first.
    let pid = etcd.pid();
    etcd.restart().await.expect("restart while running");
    assert_ne!(etcd.pid(), pid);
    assert!(get(addr, FOO).await.contains(BAR));

    // respawn + wait_ready.
    etcd.kill().unwrap();
    etcd.respawn().expect("respawn");
    assert!(etcd.respawn().is_err(), "already running");
    etcd.wait_ready().await.expect("ready after respawn");
    assert!(get(addr, FOO).await.contains(BAR));
}

#[tokio::test]
async fn pause_and_resume() {
    let mut etcd = Etcd::start().await.expect("start etcd");
    let addr = etcd.client_addr();
    etcd.pause().expect("pause");
    assert!(etcd.is_paused());
    assert!(etcd.is_running());

    // The kernel still completes the handshake, but nobody answers.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request("GET", "/version", "").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        timeout(QUIET, s.read(&mut buf)).await.is_err(),
        "a paused etcd must not answer"
    );

    etcd.resume().expect("resume");
    assert!(!etcd.is_paused());
    let resp = timeout(DEADLINE, read_all(&mut s))
        .await
        .expect("answer after resume")
        .unwrap();
    assert!(resp.contains("etcdserver"), "{resp}");

    // Stopping a paused member works too.
    etcd.pause().unwrap();
    etcd.stop().await.expect("stop while paused");
    assert!(!etcd.is_running());
    assert!(etcd.pause().is_err(), "nothing to pause");
}

#[tokio::test]
async fn cluster_of_three_forms_one_cluster() {
    let mut cluster = Cluster::start(3).await.expect("start cluster");
    assert_eq!(cluster.members().len(), 3);
    let endpoints = cluster.endpoints();
    assert_eq!(cluster.config().endpoints, endpoints);
    assert_eq!(endpoints.len(), 3);
    for (i, m) in cluster.members().iter().enumerate() {
        assert_eq!(m.name(), format!("member{i}"));
        assert_eq!(endpoints[i], m.endpoint());
    }

    // Every member knows all three.
    let list = http(
        cluster.member(2).client_addr(),
        "POST",
        "/v3/cluster/member/list",
        "{}",
    )
    .await
    .unwrap();
    for m in cluster.members() {
        assert!(list.contains(&m.endpoint()), "{} missing: {list}", m.name());
    }

    // A write through one member is read through another.
    put(cluster.member(0).client_addr(), FOO, BAR).await;
    assert!(
        get(cluster.member(2).client_addr(), FOO)
            .await
            .contains(BAR)
    );

    // A crashed follower restarts on its port and catches up. (Killing the
    // leader would fail writes until a new one is elected.)
    let leader = leader_index(&cluster).await;
    let follower = (leader + 1) % 3;
    let addr = cluster.member(follower).client_addr();
    cluster.member_mut(follower).kill().unwrap();
    assert_refused(addr).await;
    put(cluster.member(leader).client_addr(), FOO, BAZ).await;
    cluster
        .member_mut(follower)
        .restart()
        .await
        .expect("rejoin");
    assert_eq!(cluster.member(follower).client_addr(), addr);
    assert!(get(addr, FOO).await.contains(BAZ));
}

#[tokio::test]
async fn whole_cluster_restart() {
    let mut cluster = Cluster::start(3).await.expect("start cluster");
    put(cluster.member(1).client_addr(), FOO, BAR).await;
    for i in 0..3 {
        cluster.member_mut(i).kill().unwrap();
    }
    cluster.restart_all().await.expect("restart all");
    for m in cluster.members() {
        assert!(get(m.client_addr(), FOO).await.contains(BAR));
    }

    // Dropping the cluster ends (and reaps) every process.
    let pids: Vec<u32> = cluster.members().iter().filter_map(Etcd::pid).collect();
    assert_eq!(pids.len(), 3);
    drop(cluster);
    #[cfg(target_os = "linux")]
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} still there"
        );
    }
}

#[test]
fn handles_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Etcd>();
    send_sync::<Cluster>();
    send_sync::<Proxy>();
    send_sync::<etcdutil::testing::EtcdBuilder>();
    send_sync::<etcdutil::testing::TlsFiles>();
}

#[tokio::test]
async fn builder_options_reach_etcd() {
    let etcd = Etcd::builder()
        .auth_token_ttl(10)
        .unsafe_no_fsync(true)
        .arg("--max-txn-ops=64")
        .start()
        .await
        .expect("start with options");
    assert!(version(etcd.client_addr()).await.contains("etcdserver"));
}

#[tokio::test]
async fn start_errors_carry_etcd_log() {
    let err = Etcd::builder()
        .arg("--no-such-flag-for-etcdutil")
        .start()
        .await
        .expect_err("etcd rejects an unknown flag");
    let msg = err.to_string();
    assert!(msg.contains("no-such-flag-for-etcdutil"), "{msg}");

    let err = Etcd::builder()
        .client_cert_auth(true)
        .start()
        .await
        .expect_err("client cert auth needs TLS");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

    let err = Etcd::builder()
        .binary("/nonexistent/etcd")
        .start()
        .await
        .expect_err("no such binary");
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

fn tls_config(ca: &Path, client: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match client {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    }
}

async fn tls_version(addr: SocketAddr, config: rustls::ClientConfig) -> io::Result<String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    timeout(DEADLINE, async {
        let tcp = TcpStream::connect(addr).await?;
        let tls = connector.connect(name, tcp).await?;
        http_on(tls, "GET", "/version", "").await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS request timed out"))?
}

#[tokio::test]
async fn tls_member_with_client_cert_auth() {
    let etcd = Etcd::builder()
        .tls(true)
        .client_cert_auth(true)
        .start()
        .await
        .expect("start TLS etcd");
    let addr = etcd.client_addr();
    assert_eq!(etcd.endpoint(), format!("https://{addr}"));
    let files = etcd.tls_files().expect("TLS files").clone();
    for f in [
        &files.ca_cert,
        &files.ca_key,
        &files.server_cert,
        &files.server_key,
        &files.client_cert,
        &files.client_key,
        &files.other_ca_cert,
        &files.other_client_cert,
        &files.other_client_key,
    ] {
        let pem = std::fs::read_to_string(f).unwrap();
        assert!(pem.starts_with("-----BEGIN "), "{}: {pem}", f.display());
    }
    let tls = etcd.config().tls.expect("TLS config");
    assert_eq!(tls.ca_file.as_ref(), Some(&files.ca_cert));
    assert_eq!(tls.cert_file.as_ref(), Some(&files.client_cert));
    assert_eq!(tls.key_file.as_ref(), Some(&files.client_key));
    assert!(!tls.skip_verify);

    // The right CA and client certificate get through.
    let client = Some((files.client_cert.as_path(), files.client_key.as_path()));
    let resp = tls_version(addr, tls_config(&files.ca_cert, client))
        .await
        .expect("TLS request");
    assert!(resp.contains("etcdserver"), "{resp}");

    // The other CA did not sign etcd's certificate.
    let err = tls_version(addr, tls_config(&files.other_ca_cert, client))
        .await
        .expect_err("wrong CA must fail");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");

    // Without a client certificate, or with one of the other CA, etcd
    // refuses (TLS 1.3 reports it after the client's handshake).
    let other = Some((
        files.other_client_cert.as_path(),
        files.other_client_key.as_path(),
    ));
    for client in [None, other] {
        let r = tls_version(addr, tls_config(&files.ca_cert, client)).await;
        assert!(
            !r.as_deref().unwrap_or_default().contains("etcdserver"),
            "etcd answered a client without a valid certificate: {r:?}"
        );
    }

    let dir = files.dir.clone();
    drop(etcd);
    assert!(!dir.exists(), "TLS files removed on drop");
}

#[tokio::test]
async fn tls_cluster_shares_certificates() {
    let cluster = Cluster::start_with(3, Etcd::builder().tls(true))
        .await
        .expect("start TLS cluster");
    let files = cluster.tls_files().expect("TLS files");
    for m in cluster.members() {
        assert!(m.endpoint().starts_with("https://"));
        assert_eq!(m.tls_files(), Some(files));
        let resp = tls_version(m.client_addr(), tls_config(&files.ca_cert, None))
            .await
            .expect("TLS request without client cert auth");
        assert!(resp.contains("etcdserver"), "{resp}");
    }
}

/// A tiny echo server, as the proxy's target.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

async fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(buf, msg);
}

/// Asserts nothing arrives on `s` for a while, and that it is not closed.
async fn assert_quiet(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match timeout(QUIET, s.read(&mut buf)).await {
        Err(_) => {}
        Ok(Ok(0)) => panic!("connection closed"),
        Ok(Ok(n)) => panic!("got {n} bytes through a blackhole"),
        Ok(Err(e)) => panic!("connection failed: {e}"),
    }
}

/// Asserts `s` gets closed (EOF or reset) in time.
async fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match timeout(DEADLINE, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("got {n} unexpected bytes"),
        Err(_) => panic!("connection not closed"),
    }
}

#[tokio::test]
async fn proxy_forwards_and_half_closes() {
    let proxy = Proxy::start(echo_server().await).await.unwrap();
    assert_eq!(proxy.state(), ProxyState::Forwarding);
    assert_eq!(proxy.endpoint(), format!("http://{}", proxy.addr()));
    assert_eq!(proxy.connection_count(), 0);

    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    echo_roundtrip(&mut s, b"hello").await;
    echo_roundtrip(&mut s, &vec![7u8; 200_000]).await;
    proxy.wait_for_connections(1, DEADLINE).await.unwrap();
    let mut s2 = TcpStream::connect(proxy.addr()).await.unwrap();
    echo_roundtrip(&mut s2, b"two").await;
    proxy.wait_for_connections(2, DEADLINE).await.unwrap();
    drop(s2);
    proxy.wait_for_connections(1, DEADLINE).await.unwrap();

    // Half-close: our FIN reaches the echo server, whose FIN comes back
    // after the last bytes.
    s.write_all(b"last").await.unwrap();
    s.shutdown().await.unwrap();
    let rest = timeout(DEADLINE, read_all(&mut s)).await.unwrap().unwrap();
    assert_eq!(rest, "last");
    proxy.wait_for_connections(0, DEADLINE).await.unwrap();
}

#[tokio::test]
async fn proxy_cut_and_restore() {
    let proxy = Proxy::start(echo_server().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    echo_roundtrip(&mut s, b"before").await;

    proxy.cut().await;
    assert_eq!(proxy.state(), ProxyState::Cut);
    assert_eq!(proxy.connection_count(), 0);
    assert_closed(&mut s).await;
    assert_refused(proxy.addr()).await;
    // Meanwhile the port stays the proxy's.
    #[cfg(target_os = "linux")]
    assert_eq!(
        std::net::TcpListener::bind(proxy.addr())
            .unwrap_err()
            .kind(),
        io::ErrorKind::AddrInUse
    );

    proxy.restore().await.expect("restore");
    assert_eq!(proxy.state(), ProxyState::Forwarding);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    echo_roundtrip(&mut s, b"after").await;

    // Cut twice, restore twice: still fine.
    proxy.cut().await;
    proxy.cut().await;
    assert_closed(&mut s).await;
    proxy.restore().await.unwrap();
    proxy.restore().await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    echo_roundtrip(&mut s, b"again").await;
}

#[tokio::test]
async fn proxy_blackhole_and_restore() {
    let proxy = Proxy::start(echo_server().await).await.unwrap();
    let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
    echo_roundtrip(&mut a, b"before").await;

    proxy.blackhole().await.unwrap();
    assert_eq!(proxy.state(), ProxyState::Blackhole);
    a.write_all(b"ping").await.unwrap();
    assert_quiet(&mut a).await;

    // New connections are accepted, but get nothing either.
    let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
    b.write_all(b"pong").await.unwrap();
    assert_quiet(&mut b).await;
    proxy.wait_for_connections(2, DEADLINE).await.unwrap();

    proxy.restore().await.unwrap();
    for (s, msg) in [(&mut a, b"ping"), (&mut b, b"pong")] {
        let mut buf = [0u8; 4];
        timeout(DEADLINE, s.read_exact(&mut buf))
            .await
            .expect("held bytes delivered after restore")
            .unwrap();
        assert_eq!(&buf, msg);
    }
    echo_roundtrip(&mut a, b"after").await;

    // A cut closes blackholed connections too; restoring brings it back.
    proxy.blackhole().await.unwrap();
    proxy.cut().await;
    assert_closed(&mut a).await;
    assert_closed(&mut b).await;
    proxy.blackhole().await.unwrap();
    let mut c = TcpStream::connect(proxy.addr())
        .await
        .expect("accepts again");
    c.write_all(b"held").await.unwrap();
    assert_quiet(&mut c).await;
    proxy.restore().await.unwrap();
    let mut buf = [0u8; 4];
    timeout(DEADLINE, c.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"held");
}

#[tokio::test]
async fn proxy_in_front_of_etcd() {
    let etcd = Etcd::start().await.expect("start etcd");
    let proxy = Proxy::start(etcd.client_addr()).await.unwrap();
    assert_eq!(proxy.target(), etcd.client_addr());
    assert!(version(proxy.addr()).await.contains("etcdserver"));

    proxy.cut().await;
    assert!(http(proxy.addr(), "GET", "/version", "").await.is_err());
    proxy.restore().await.unwrap();
    assert!(version(proxy.addr()).await.contains("etcdserver"));
    proxy.wait_for_connections(0, DEADLINE).await.unwrap();
}
