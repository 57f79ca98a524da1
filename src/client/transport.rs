//! The HTTP/2 channels under every raw client: one per etcd member, failover
//! between them, the auth token on every call, and its renewal.
//!
//! Unary and server-streaming calls (everything but `LeaseKeepAlive` and
//! `Watch`, whose request streams never end) are buffered when there is
//! something to retry for, so that a call can be sent again:
//! - to the next member, when the current one cannot be connected to (the
//!   request never left, so a retry cannot apply it twice);
//! - once, with a fresh token, when etcd answers `invalid auth token` or
//!   `revision of auth store is old`.
//!
//! The long-lived streams reopen through their owners' loops, which hand
//! their errors to [`Transport::recover`] first.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt};

use crate::client::wire;
use crate::error::{ClientClosed, Error, Result, SharedError};
use crate::proto::etcdserverpb::{
    AuthenticateRequest, StatusRequest, auth_client::AuthClient,
    maintenance_client::MaintenanceClient,
};
use crate::telemetry;

/// A request for a long-lived stream, with etcd's require-leader metadata:
/// a member cut off from its cluster's leader then fails the stream instead
/// of serving it from a state it cannot update.
pub(crate) fn require_leader<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let has_leader = tonic::metadata::MetadataValue::from_static("true");
    request.metadata_mut().insert("hasleader", has_leader);
    request
}

/// The metadata key etcd reads the auth token from.
const TOKEN_HEADER: &str = "token";

/// Calls whose request stream stays open: they cannot be buffered and replayed.
const OPEN_ENDED: [&str; 2] = [
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/etcdserverpb.Watch/Watch",
];

/// HTTP/2 pings find a connection that died without closing. etcd's default
/// `--grpc-keepalive-min-time` is 5 s and it answers faster pings with GOAWAY,
/// so stay above it.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(10);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// User name and password, and the token etcd gave for them.
struct Credentials {
    user: String,
    password: String,
    token: RwLock<Option<HeaderValue>>,
    /// One renewal at a time: the calls that failed together wait for it.
    renewing: tokio::sync::Mutex<()>,
}

struct Shared {
    uris: Vec<Uri>,
    channels: Vec<Channel>,
    /// The member calls go to; moved on by [`Transport::failover_from`].
    current: AtomicUsize,
    /// Tells long-lived streams that calls moved to another member.
    moved: tokio::sync::watch::Sender<usize>,
    /// How long a connection, or an authentication, may take.
    dial_timeout: Duration,
    /// Set once the client is closed: calls fail at once.
    closed: AtomicBool,
    credentials: Option<Credentials>,
}

/// The HTTP/2 channel under every raw client (a `tower::Service`): sends each
/// call to the current etcd member, fails over to the next, adds the auth
/// token and renews it, and logs each call's method in the wire log.
///
/// ```no_run
/// # fn f(client: &etcdutil::Client) {
/// let transport: etcdutil::Transport = client.transport();
/// println!("calls go to {}", transport.current_endpoint());
/// # }
/// ```
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
    /// The channel `poll_ready` readied for the next `call`, and its index.
    ready: Option<(usize, Channel)>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("endpoints", &self.shared.uris)
            .field("current", &self.shared.current.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// A transport that connects to each member on its first call, so that
    /// it can be made before etcd is up; every call waits up to
    /// `dial_timeout` for its connection.
    pub(crate) fn lazy(
        uris: Vec<Uri>,
        tls: Option<Arc<rustls::ClientConfig>>,
        dial_timeout: Duration,
        credentials: Option<(String, String)>,
    ) -> Transport {
        let connector = Connector { tls };
        let channels = endpoints(&uris, dial_timeout)
            .into_iter()
            .map(|endpoint| endpoint.connect_with_connector_lazy(connector.clone()))
            .collect();
        Transport::new(uris, channels, 0, dial_timeout, credentials)
    }

    /// Dials every endpoint at once and starts on the first that connects
    /// and proves to be etcd; the others are connected on demand, when a
    /// failover reaches them.
    pub(crate) async fn connect(
        uris: Vec<Uri>,
        tls: Option<Arc<rustls::ClientConfig>>,
        dial_timeout: Duration,
        credentials: Option<(String, String)>,
    ) -> Result<Transport> {
        let connector = Connector { tls };
        let endpoints = endpoints(&uris, dial_timeout);
        let mut channels: Vec<Channel> = endpoints
            .iter()
            .map(|endpoint| endpoint.connect_with_connector_lazy(connector.clone()))
            .collect();
        let (first, channel) = dial_first(&uris, &endpoints, connector, dial_timeout).await?;
        channels[first] = channel;
        Ok(Transport::new(
            uris,
            channels,
            first,
            dial_timeout,
            credentials,
        ))
    }

    fn new(
        uris: Vec<Uri>,
        channels: Vec<Channel>,
        current: usize,
        dial_timeout: Duration,
        credentials: Option<(String, String)>,
    ) -> Transport {
        let credentials = credentials.map(|(user, password)| Credentials {
            user,
            password,
            token: RwLock::new(None),
            renewing: tokio::sync::Mutex::new(()),
        });
        let shared = Shared {
            uris,
            channels,
            current: AtomicUsize::new(current),
            moved: tokio::sync::watch::Sender::new(current),
            dial_timeout,
            closed: AtomicBool::new(false),
            credentials,
        };
        Transport {
            shared: Arc::new(shared),
            ready: None,
        }
    }

    /// Fails every later call with [`ClientClosed`](crate::error::ClientClosed).
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
    }

    /// The endpoint calls go to now.
    ///
    /// ```no_run
    /// # fn f(client: &etcdutil::Client) {
    /// println!("{}", client.transport().current_endpoint());
    /// # }
    /// ```
    pub fn current_endpoint(&self) -> &Uri {
        &self.shared.uris[self.shared.current.load(Ordering::SeqCst)]
    }

    /// Moves calls off the member at `index` (if they are still on it) to the
    /// next one. Streams call this when their member fails them.
    pub(crate) fn failover_from(&self, index: usize) {
        let next = (index + 1) % self.shared.channels.len();
        let moved = self
            .shared
            .current
            .compare_exchange(index, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if moved && next != index {
            self.shared.moved.send_replace(next);
            let from = endpoint_list(&self.shared.uris[index..=index]);
            let to = endpoint_list(&self.shared.uris[next..=next]);
            tracing::warn!(target: telemetry::TARGET, %from, %to, "failover to another etcd member");
            telemetry::failover(&from);
        }
    }

    /// What a call or stream is about to be sent with, to hand back to
    /// [`recover`](Self::recover) if it fails.
    pub(crate) fn attempt(&self) -> Attempt {
        Attempt {
            member: self.shared.current.load(Ordering::SeqCst),
            token: self.token(),
        }
    }

    /// Does what `error`, from a call or stream sent as `attempt`, asks for:
    /// a new token when etcd rejected that one (true if it was renewed), the
    /// next member when that one failed. Many callers may report one failure
    /// (every session of a broken stream): a failure is acted on only if the
    /// member or token it names is still the current one, so calls move on
    /// once, not once per caller.
    pub(crate) async fn recover(&self, error: &Error, attempt: &Attempt) -> bool {
        // An Observe whose token expired just ends, without a status.
        let renewed = if error.is_token_rejected()
            || (self.shared.credentials.is_some() && error.is_stream_end())
        {
            self.renew_token(attempt.token.as_ref())
                .await
                .unwrap_or(false)
        } else {
            false
        };
        if !renewed && error.is_member_failure() {
            self.failover_from(attempt.member);
        }
        renewed
    }

    /// Whether calls carry a user's token.
    pub(crate) fn has_credentials(&self) -> bool {
        self.shared.credentials.is_some()
    }

    /// Renews the token `attempt` went out with, unless a newer one is in
    /// place already (see [`renew_token`](Self::renew_token)).
    pub(crate) async fn renew_token_of(&self, attempt: &Attempt) -> Result<bool> {
        self.renew_token(attempt.token.as_ref()).await
    }

    fn token(&self) -> Option<HeaderValue> {
        let credentials = self.shared.credentials.as_ref()?;
        credentials.token.read().expect("token lock").clone()
    }

    /// Authenticates (again) and keeps the new token for every later call.
    /// `stale` is the token a failed call carried (`None`: no token yet). True
    /// if a newer token than `stale` is now in place, whether etcd just gave
    /// it or another call had already renewed it (then etcd is not asked
    /// again); false without credentials. Bounded by the dial timeout.
    pub(crate) async fn renew_token(&self, stale: Option<&HeaderValue>) -> Result<bool> {
        let Some(credentials) = &self.shared.credentials else {
            return Ok(false);
        };
        let _one_at_a_time = credentials.renewing.lock().await;
        if self.token().as_ref() != stale {
            return Ok(true);
        }
        let request = AuthenticateRequest {
            name: credentials.user.clone(),
            password: credentials.password.clone(),
        };
        // Through a transport without credentials: no token, no renewal loop.
        let bare = Transport::new(
            self.shared.uris.clone(),
            self.shared.channels.clone(),
            self.shared.current.load(Ordering::SeqCst),
            self.shared.dial_timeout,
            None,
        );
        let limit = self.shared.dial_timeout;
        let answer = tokio::time::timeout(limit, AuthClient::new(bare).authenticate(request))
            .await
            .map_err(|_| Error::Timeout {
                what: "Authenticate",
                after: limit,
            })?;
        let response = answer.map_err(|status| match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => Error::Auth {
                user: credentials.user.clone(),
                source: status,
            },
            _ => Error::from(status),
        })?;
        let token = HeaderValue::try_from(response.into_inner().token).map_err(|_| {
            Error::UnexpectedResponse {
                what: "Authenticate returned a token that is not an HTTP header value".into(),
            }
        })?;
        *credentials.token.write().expect("token lock") = Some(token);
        tracing::debug!(target: telemetry::TARGET, user = %credentials.user, "auth token renewed");
        telemetry::token_renewed();
        Ok(true)
    }
}

/// The member and the token a call or stream was sent with.
#[derive(Clone, Debug)]
pub(crate) struct Attempt {
    member: usize,
    token: Option<HeaderValue>,
}

impl Attempt {
    /// Whether calls went to another member since this attempt.
    pub(crate) fn has_moved(&self, transport: &Transport) -> bool {
        *transport.shared.moved.borrow() != self.member
    }

    /// Resolves once calls have moved off the member this attempt went to:
    /// a stream still open there (say, on a member behind a blackhole, which
    /// only HTTP/2 pings would find dead) should follow.
    pub(crate) async fn moved_away(&self, transport: &Transport) {
        let mut moved = transport.shared.moved.subscribe();
        let _ = moved.wait_for(|member| *member != self.member).await;
    }
}

/// One endpoint per member, with the dial timeout and HTTP/2 pings.
fn endpoints(uris: &[Uri], dial_timeout: Duration) -> Vec<Endpoint> {
    uris.iter()
        .map(|uri| {
            Endpoint::from(uri.clone())
                .connect_timeout(dial_timeout)
                .http2_keep_alive_interval(HTTP2_PING_INTERVAL)
                .keep_alive_timeout(HTTP2_PING_TIMEOUT)
        })
        .collect()
}

/// Dials every endpoint at once; returns the first that connects, and its index.
async fn dial_first(
    uris: &[Uri],
    endpoints: &[Endpoint],
    connector: Connector,
    timeout: Duration,
) -> Result<(usize, Channel)> {
    let mut attempts = JoinSet::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let endpoint = endpoint.clone();
        let connector = connector.clone();
        attempts.spawn(async move { (index, dial(endpoint, connector).await) });
    }
    let deadline = Instant::now() + timeout;
    let mut last_error: Option<SharedError> = None;
    loop {
        match tokio::time::timeout_at(deadline.into(), attempts.join_next()).await {
            Ok(Some(Ok((index, Ok(channel))))) => return Ok((index, channel)),
            Ok(Some(Ok((_, Err(error))))) => last_error = Some(error),
            Ok(Some(Err(join_error))) => last_error = Some(Arc::new(join_error)),
            Ok(None) | Err(_) => break,
        }
    }
    Err(Error::Connect {
        endpoints: endpoint_list(uris),
        timeout,
        source: last_error,
    })
}

/// `http://a:1,http://b:2`, as the endpoints were given (no trailing `/`).
pub(crate) fn endpoint_list(uris: &[Uri]) -> String {
    let plain = |uri: &Uri| {
        let scheme = uri.scheme_str().unwrap_or("http");
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        format!("{scheme}://{authority}")
    };
    uris.iter().map(plain).collect::<Vec<_>>().join(",")
}

/// Connects to one member and checks that it is etcd: HTTP/2 alone proves
/// nothing (a client's handshake does not wait for the server), so ask for
/// its Status, which needs no auth.
async fn dial(endpoint: Endpoint, connector: Connector) -> Result<Channel, SharedError> {
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| Arc::new(e) as SharedError)?;
    MaintenanceClient::new(channel.clone())
        .status(StatusRequest {})
        .await
        .map_err(|status| Arc::new(status) as SharedError)?;
    Ok(channel)
}

/// Whether a failed call never reached etcd: its channel could not connect.
fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// The error of a trailers-only answer (how etcd answers a unary call with
/// an error; a stream's closing status comes later, in its body).
fn answered_error(response: &http::Response<Body>) -> Option<Error> {
    let headers = response.headers();
    match headers.get("grpc-status") {
        Some(code) if code != "0" => tonic::Status::from_header_map(headers).map(Error::from),
        _ => None,
    }
}

/// Counts a failed call by its error's kind: a transport failure, or the
/// error etcd answered with.
fn count_error(response: &Result<http::Response<Body>, BoxError>) {
    match response {
        Err(_) => telemetry::rpc_error("transport"),
        Ok(response) => {
            if let Some(error) = answered_error(response) {
                telemetry::rpc_error(error.kind());
            }
        }
    }
}

impl Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let index = self.shared.current.load(Ordering::SeqCst);
        if self.ready.as_ref().is_none_or(|(ready, _)| *ready != index) {
            self.ready = Some((index, self.shared.channels[index].clone()));
        }
        let (_, channel) = self.ready.as_mut().expect("set above");
        // A member that cannot be reached fails the call, not poll_ready:
        // `call` then moves on to the next member.
        channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (index, channel) = self.ready.take().expect("poll_ready must be called first");
        let transport = self.clone();
        Box::pin(async move {
            if transport.shared.closed.load(Ordering::SeqCst) {
                return Err(Box::new(ClientClosed) as BoxError);
            }
            let method = request.uri().path().to_owned();
            let logging = wire::enabled();
            if logging {
                wire::log(format_args!("call {method}"));
            }
            let started = Instant::now();
            let response = transport.send(index, channel, request, &method).await;
            count_error(&response);
            if logging {
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

impl Transport {
    async fn send(
        &self,
        index: usize,
        mut channel: Channel,
        request: http::Request<Body>,
        method: &str,
    ) -> Result<http::Response<Body>, BoxError> {
        if self.shared.credentials.is_some() && self.token().is_none() {
            // The first call of a client made before etcd was up: get a token.
            self.renew_token(None).await?;
        }
        let retries = self.shared.credentials.is_some() || self.shared.channels.len() > 1;
        if !retries || OPEN_ENDED.contains(&method) {
            let mut request = request;
            if let Some(token) = self.token() {
                request.headers_mut().insert(TOKEN_HEADER, token);
            }
            let response = channel.call(request).await;
            if response.is_err() {
                self.failover_from(index);
            }
            return response.map_err(Into::into);
        }

        // Buffer the request so that it can be sent again.
        let (parts, body) = request.into_parts();
        let body: Bytes = body.collect().await?.to_bytes();
        let rebuild = |token: Option<HeaderValue>| {
            let mut request = http::Request::new(Body::new(Full::new(body.clone())));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers.clone();
            *request.extensions_mut() = parts.extensions.clone();
            if let Some(token) = token {
                request.headers_mut().insert(TOKEN_HEADER, token);
            }
            request
        };

        let mut target = Some((index, channel));
        let mut members_tried = 0;
        let mut renewed = false;
        loop {
            let (index, mut channel) = match target.take() {
                Some(target) => target,
                None => {
                    let index = self.shared.current.load(Ordering::SeqCst);
                    let mut channel = self.shared.channels[index].clone();
                    channel.ready().await?;
                    (index, channel)
                }
            };
            let token = self.token();
            match channel.call(rebuild(token.clone())).await {
                Err(error) => {
                    // A broken connection says the member is gone: later
                    // calls go to the next. Only a call that never left is
                    // sent again (one that did might have been applied).
                    self.failover_from(index);
                    if !never_sent(&error) {
                        return Err(error.into());
                    }
                    members_tried += 1;
                    if members_tried >= self.shared.channels.len() {
                        return Err(error.into());
                    }
                }
                Ok(response)
                    if !renewed
                        && answered_error(&response).is_some_and(|e| e.is_token_rejected()) =>
                {
                    // Counted here: the caller only sees the retry's answer.
                    count_error(&Ok(response));
                    renewed = true;
                    self.renew_token(token.as_ref()).await?;
                }
                Ok(response) => return Ok(response),
            }
        }
    }
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

impl Service<Uri> for Connector {
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
