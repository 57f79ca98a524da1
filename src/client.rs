//! The connection to etcd and the raw gRPC clients it hands out.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};

use crate::config::{self, Config};
use crate::error::{Error, Result, SharedError};
use crate::keepalive::KeepAlive;
use crate::proto::etcdserverpb::{
    AuthenticateRequest, auth_client::AuthClient, cluster_client::ClusterClient,
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient,
};
use crate::proto::v3electionpb::election_client::ElectionClient;
use crate::{tls, wire};

/// The metadata key etcd reads the auth token from.
const TOKEN_HEADER: &str = "token";

/// HTTP/2 pings find a connection that died without closing. etcd's default
/// `--grpc-keepalive-min-time` is 5 s and it answers faster pings with GOAWAY,
/// so stay above it.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(10);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates a [`Client`] from `cfg`, its blanks filled from the `ETCD3_*`
/// environment variables (see [`new_config`](crate::new_config)).
///
/// ```no_run
/// # async fn run() -> etcdutil::Result<()> {
/// // ETCD3_ENDPOINT=10.0.0.1:2379,10.0.0.2:2379 or the default 127.0.0.1:2379
/// let client = etcdutil::new_client(None).await?;
/// # Ok(()) }
/// ```
pub async fn new_client(cfg: Option<Config>) -> Result<Client> {
    Client::connect(config::new_config(cfg)?).await
}

/// A connection to etcd: cheap to clone, every method takes `&self`.
///
/// It hands out etcd's raw gRPC clients ([`kv`](Client::kv),
/// [`lease`](Client::lease), [`election`](Client::election), ...), which all
/// share one HTTP/2 connection and carry the auth token and the wire log.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    transport: Transport,
    keepalive: KeepAlive,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the first of `config.endpoints` that answers within the dial
    /// timeout, and authenticates if a user name is set. Blank fields get their
    /// defaults; the environment is not read (use [`new_client`] for that).
    ///
    /// ```no_run
    /// use etcdutil::{Client, Config};
    /// # async fn run() -> etcdutil::Result<()> {
    /// let client = Client::connect(Config {
    ///     endpoints: vec!["127.0.0.1:2379".into()],
    ///     ..Default::default()
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: Config) -> Result<Client> {
        let config = config::new_config_with_env(Some(config), |_| None)?;
        if config.debug {
            wire::enable_stderr();
        }
        let uris = config::endpoint_uris(&config)?;
        let dial_timeout = config.dial_timeout.unwrap_or(config::DEFAULT_DIAL_TIMEOUT);
        let connector = Connector {
            tls: config
                .tls
                .as_ref()
                .map(tls::client_config)
                .transpose()?
                .map(Arc::new),
        };
        let channel = dial_first(&uris, connector, dial_timeout).await?;
        let transport = Transport {
            channel,
            token: Arc::default(),
        };
        let keepalive = KeepAlive::start(transport.clone());
        let client = Client {
            inner: Arc::new(Inner {
                config,
                transport,
                keepalive,
            }),
        };
        client.authenticate().await?;
        Ok(client)
    }

    /// Gets a fresh auth token if the config has a user name; else does nothing.
    async fn authenticate(&self) -> Result<()> {
        let config = &self.inner.config;
        let Some(user) = &config.username else {
            return Ok(());
        };
        let request = AuthenticateRequest {
            name: user.clone(),
            password: config.password.clone().unwrap_or_default(),
        };
        let response =
            self.auth()
                .authenticate(request)
                .await
                .map_err(|status| match status.code() {
                    tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => Error::Auth {
                        user: user.clone(),
                        source: status,
                    },
                    _ => Error::from(status),
                })?;
        let token = HeaderValue::try_from(response.into_inner().token)
            .map_err(|e| Error::Rpc(tonic::Status::internal(e.to_string())))?;
        *self.inner.transport.token.write().expect("token lock") = Some(token);
        Ok(())
    }

    /// The keepalive stream shared by all sessions of this client.
    pub(crate) fn keepalive(&self) -> &KeepAlive {
        &self.inner.keepalive
    }

    /// The config this client was made with, blanks filled.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The shared HTTP/2 channel, for generated clients this type has no method for.
    pub fn transport(&self) -> Transport {
        self.inner.transport.clone()
    }

    /// etcd's KV service: Range, Put, DeleteRange, Txn, Compact.
    ///
    /// ```no_run
    /// use etcdutil::proto::etcdserverpb::PutRequest;
    /// # async fn run(client: etcdutil::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// client.kv().put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }).await?;
    /// # Ok(()) }
    /// ```
    pub fn kv(&self) -> KvClient<Transport> {
        KvClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }

    /// etcd's Lease service: Grant, Revoke, KeepAlive, TimeToLive, Leases.
    ///
    /// ```no_run
    /// use etcdutil::proto::etcdserverpb::LeaseGrantRequest;
    /// # async fn run(client: etcdutil::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let lease = client.lease().lease_grant(LeaseGrantRequest { ttl: 10, id: 0 }).await?;
    /// # Ok(()) }
    /// ```
    pub fn lease(&self) -> LeaseClient<Transport> {
        LeaseClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }

    /// etcd's Watch service.
    ///
    /// ```no_run
    /// # async fn run(client: etcdutil::Client) {
    /// let mut watch = client.watch();
    /// # }
    /// ```
    pub fn watch(&self) -> WatchClient<Transport> {
        WatchClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }

    /// etcd's server-side Election service: Campaign, Proclaim, Leader, Observe, Resign.
    ///
    /// ```no_run
    /// use etcdutil::proto::v3electionpb::LeaderRequest;
    /// # async fn run(client: etcdutil::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let leader = client.election().leader(LeaderRequest { name: b"/elections/jobs".to_vec() }).await?;
    /// # Ok(()) }
    /// ```
    pub fn election(&self) -> ElectionClient<Transport> {
        ElectionClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }

    /// etcd's Cluster service: member list and changes.
    ///
    /// ```no_run
    /// use etcdutil::proto::etcdserverpb::MemberListRequest;
    /// # async fn run(client: etcdutil::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let members = client.cluster().member_list(MemberListRequest::default()).await?;
    /// # Ok(()) }
    /// ```
    pub fn cluster(&self) -> ClusterClient<Transport> {
        ClusterClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }

    /// etcd's Maintenance service: Status, Alarm, Defragment, Snapshot, ...
    ///
    /// ```no_run
    /// use etcdutil::proto::etcdserverpb::StatusRequest;
    /// # async fn run(client: etcdutil::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let status = client.maintenance().status(StatusRequest::default()).await?;
    /// # Ok(()) }
    /// ```
    pub fn maintenance(&self) -> MaintenanceClient<Transport> {
        MaintenanceClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }

    /// etcd's Auth service: users, roles, enabling auth.
    ///
    /// ```no_run
    /// use etcdutil::proto::etcdserverpb::AuthUserListRequest;
    /// # async fn run(client: etcdutil::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let users = client.auth().user_list(AuthUserListRequest::default()).await?;
    /// # Ok(()) }
    /// ```
    pub fn auth(&self) -> AuthClient<Transport> {
        AuthClient::new(self.transport()).max_decoding_message_size(usize::MAX)
    }
}

/// Dials every endpoint at once and keeps the first that connects.
async fn dial_first(uris: &[Uri], connector: Connector, timeout: Duration) -> Result<Channel> {
    let mut attempts = JoinSet::new();
    for uri in uris {
        let endpoint = Endpoint::from(uri.clone())
            .connect_timeout(timeout)
            .http2_keep_alive_interval(HTTP2_PING_INTERVAL)
            .keep_alive_timeout(HTTP2_PING_TIMEOUT);
        let connector = connector.clone();
        attempts.spawn(async move { endpoint.connect_with_connector(connector).await });
    }
    let deadline = Instant::now() + timeout;
    let mut last_error: Option<SharedError> = None;
    loop {
        match tokio::time::timeout_at(deadline.into(), attempts.join_next()).await {
            Ok(Some(Ok(Ok(channel)))) => return Ok(channel),
            Ok(Some(Ok(Err(error)))) => last_error = Some(Arc::new(error)),
            Ok(Some(Err(join_error))) => last_error = Some(Arc::new(join_error)),
            Ok(None) | Err(_) => break,
        }
    }
    let endpoints = uris
        .iter()
        .map(Uri::to_string)
        .collect::<Vec<_>>()
        .join(",");
    Err(Error::Connect {
        endpoints,
        timeout,
        source: last_error,
    })
}

/// Everything the connector can hand to hyper: a TCP stream, TLS or not.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Opens TCP connections, with TLS through our own rustls config (tonic's
/// built-in TLS cannot skip verification, which `ETCD3_SKIP_VERIFY` needs).
#[derive(Clone)]
struct Connector {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned();
            let port = uri.port_u16().unwrap_or(2379);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let Some(tls) = tls else {
                return Ok(TokioIo::new(Box::new(tcp) as Box<dyn Io>));
            };
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(Box::new(stream) as Box<dyn Io>))
        })
    }
}

/// The HTTP/2 channel under every raw client: it adds the auth token to each
/// call and logs each call's method in the wire log.
#[derive(Clone)]
pub struct Transport {
    channel: Channel,
    token: Arc<RwLock<Option<HeaderValue>>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl tower::Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(token) = self.token.read().expect("token lock").clone() {
            request.headers_mut().insert(TOKEN_HEADER, token);
        }
        let method = wire::enabled().then(|| request.uri().path().to_owned());
        if let Some(method) = &method {
            wire::log(format_args!("call {method}"));
        }
        let response = self.channel.call(request);
        Box::pin(async move {
            let started = Instant::now();
            let response = response.await;
            if let Some(method) = method {
                let outcome = match &response {
                    Ok(r) => match r.headers().get("grpc-status") {
                        Some(code) => format!("grpc-status {code:?}"),
                        None => format!("http {}", r.status().as_u16()),
                    },
                    Err(e) => format!("transport error: {e}"),
                };
                wire::log(format_args!(
                    "done {method} {outcome} after {:?}",
                    started.elapsed()
                ));
            }
            response
        })
    }
}
