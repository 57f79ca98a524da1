//! The crate's error type.
//!
//! One [`Error`] for everything, `Clone` because errors travel inside session
//! and election events. etcd's answers that this crate acts on get a variant
//! of their own; every other gRPC status is [`Error::Rpc`]. The raw
//! [`tonic::Status`] stays reachable through [`Error::status`] and `source()`.

use std::error::Error as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Status};

/// Result with this crate's [`Error`].
///
/// ```
/// fn check(ttl: i64) -> etcdutil::Result<i64> {
///     Ok(ttl)
/// }
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A shared, clonable error from below this crate (I/O, transport, TLS).
///
/// ```
/// let io: etcdutil::SharedError = std::sync::Arc::new(std::io::Error::other("reset"));
/// ```
pub type SharedError = Arc<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong talking to etcd.
///
/// Messages name what failed; the underlying cause is the `source()`, so print
/// the whole chain (e.g. `{:#}` with anyhow) to see both.
///
/// ```
/// use etcdutil::Error;
/// let err = Error::from(tonic::Status::not_found("etcdserver: requested lease not found"));
/// assert!(matches!(err, Error::LeaseNotFound(_)));
/// assert_eq!(err.status().unwrap().code(), tonic::Code::NotFound);
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is missing or malformed (the message names it).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No endpoint answered within the dial timeout.
    #[error("cannot connect to etcd at {endpoints} within {timeout:?}")]
    Connect {
        /// The endpoints tried, comma separated.
        endpoints: String,
        /// The dial timeout that ran out or bounded the attempts.
        timeout: Duration,
        /// The last endpoint's failure, if any came back before the timeout.
        #[source]
        source: Option<SharedError>,
    },
    /// etcd refused the user name and password.
    #[error("etcd rejected the credentials of user '{user}'")]
    Auth {
        /// The user name tried.
        user: String,
        /// etcd's answer.
        #[source]
        source: Status,
    },
    /// The lease does not exist (expired or revoked).
    #[error("lease not found")]
    LeaseNotFound(#[source] Status),
    /// The etcd member has no raft leader, so it cannot serve the request.
    #[error("etcd member has no leader")]
    NoLeader(#[source] Status),
    /// The auth token expired or is unknown to this member.
    #[error("auth token rejected")]
    InvalidAuthToken(#[source] Status),
    /// The auth store changed since the token was issued.
    #[error("auth token is older than the auth store")]
    AuthOldRevision(#[source] Status),
    /// The requested revision was compacted away.
    #[error("revision compacted")]
    Compacted(#[source] Status),
    /// The member could not serve the request in time, is going away or is
    /// overloaded (etcd's `request timed out` family, `leader changed`,
    /// `server stopped`, `too many requests`): another try, or another
    /// member, may serve it.
    #[error("etcd member could not serve the request")]
    MemberUnavailable(#[source] Status),
    /// The election has no leader (etcd's `election: no leader`).
    #[error("election has no leader")]
    ElectionNoLeader(#[source] Status),
    /// The campaign's key is not the leader any more (etcd's `election: not leader`).
    #[error("not the election's leader (on etcd)")]
    ElectionNotLeader(#[source] Status),
    /// An argument is out of range; nothing was sent to etcd.
    #[error("{name}={value} is not {expected}")]
    InvalidArgument {
        /// The field or parameter, e.g. `SessionConfig.ttl`.
        name: &'static str,
        /// The value given.
        value: String,
        /// What was expected instead.
        expected: &'static str,
    },
    /// etcd answered a keepalive with TTL <= 0: the lease expired or was revoked.
    #[error("etcd reports lease {lease:x} expired or revoked")]
    LeaseExpired {
        /// The lease id.
        lease: i64,
    },
    /// No keepalive was answered in time, so the lease is taken for lost before
    /// etcd can expire it (see the `session` module docs).
    #[error("lease {lease:x} not renewed within its TTL of {ttl} s less the safety margin")]
    LeaseDeadline {
        /// The lease id.
        lease: i64,
        /// Its TTL in seconds.
        ttl: i64,
    },
    /// etcd ended a long-lived stream without an error.
    #[error("etcd ended the {stream} stream")]
    StreamEnded {
        /// The stream's RPC, e.g. `LeaseKeepAlive`.
        stream: &'static str,
    },
    /// etcd canceled a watch: the revision was compacted, or it refused it.
    #[error("etcd canceled the watch: {reason}")]
    WatchCanceled {
        /// etcd's reason, e.g. `etcdserver: permission denied`.
        reason: String,
        /// The oldest revision left, when the start was compacted away (else 0).
        compact_revision: i64,
    },
    /// A call to etcd got no answer in time.
    #[error("{what} got no answer from etcd within {after:?}")]
    Timeout {
        /// The RPC or step.
        what: &'static str,
        /// How long it waited.
        after: Duration,
    },
    /// Only the election's leader may do this, and we do not lead.
    #[error("not the election's leader")]
    NotLeader,
    /// [`Mutex::try_lock`](crate::Mutex::try_lock): another session holds
    /// the lock (Go's `ErrLocked`). No key of ours is left behind.
    #[error("lock {name:?} is held by another session")]
    Locked {
        /// The lock's name.
        name: String,
    },
    /// Only the lock's owner may do this, and this [`Mutex`](crate::Mutex)
    /// does not hold the lock (any more).
    #[error("not the owner of lock {name:?}")]
    NotLockOwner {
        /// The lock's name.
        name: String,
    },
    /// The [`Client`](crate::Client) was closed: it makes no new sessions,
    /// elections or calls.
    #[error("the etcd client was closed")]
    Closed,
    /// etcd's answer was well-formed but not what the protocol promises.
    #[error("unexpected answer from etcd: {what}")]
    UnexpectedResponse {
        /// What was wrong with it.
        what: String,
    },
    /// Any other gRPC status: etcd's own message and the code. The status,
    /// and the transport error under it if any, stay reachable through
    /// [`Error::status`].
    #[error("{} ({:?})", .0.message(), .0.code())]
    Rpc(Status),
}

impl Error {
    /// The gRPC status etcd answered with, if this error is one.
    ///
    /// ```
    /// let err = etcdutil::Error::from(tonic::Status::unavailable("etcdserver: no leader"));
    /// assert_eq!(err.status().map(|s| s.code()), Some(tonic::Code::Unavailable));
    /// ```
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Auth { source, .. } => Some(source),
            Error::LeaseNotFound(s)
            | Error::NoLeader(s)
            | Error::MemberUnavailable(s)
            | Error::InvalidAuthToken(s)
            | Error::AuthOldRevision(s)
            | Error::Compacted(s)
            | Error::ElectionNoLeader(s)
            | Error::ElectionNotLeader(s)
            | Error::Rpc(s) => Some(s),
            _ => None,
        }
    }
}

impl Error {
    /// etcd rejected the auth token: authenticate again and retry the call.
    /// The transport does this by itself, once per call.
    ///
    /// ```
    /// // etcd's Election service forwards the error with gRPC code Unknown.
    /// let err = etcdutil::Error::from(tonic::Status::unknown("etcdserver: invalid auth token"));
    /// assert!(err.is_token_rejected());
    /// ```
    pub fn is_token_rejected(&self) -> bool {
        match self {
            Error::InvalidAuthToken(_) | Error::AuthOldRevision(_) => true,
            // etcd refuses a watch whose stream's token expired as not permitted.
            Error::WatchCanceled { reason, .. } => {
                reason.contains("permission denied")
                    || by_message(reason).is_some_and(|variant| {
                        variant(Status::unknown(reason.clone())).is_token_rejected()
                    })
            }
            _ => false,
        }
    }

    /// A short name of what went wrong, for metrics labels: etcd's error
    /// (`lease_not_found`, `invalid_auth_token`, ...), or the gRPC code of
    /// any other status (`unavailable`, ...).
    ///
    /// ```
    /// let err = etcdutil::Error::from(tonic::Status::unknown("election: not leader"));
    /// assert_eq!(err.kind(), "election_not_leader");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Connect { .. } => "connect",
            Error::Auth { .. } => "auth_failed",
            Error::LeaseNotFound(_) => "lease_not_found",
            Error::NoLeader(_) => "no_leader",
            Error::MemberUnavailable(_) => "member_unavailable",
            Error::InvalidAuthToken(_) => "invalid_auth_token",
            Error::AuthOldRevision(_) => "auth_old_revision",
            Error::Compacted(_) => "compacted",
            Error::ElectionNoLeader(_) => "election_no_leader",
            Error::ElectionNotLeader(_) => "election_not_leader",
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::LeaseExpired { .. } => "lease_expired",
            Error::LeaseDeadline { .. } => "lease_deadline",
            Error::StreamEnded { .. } => "stream_ended",
            Error::WatchCanceled { .. } => "watch_canceled",
            Error::Timeout { .. } => "timeout",
            Error::NotLeader => "not_leader",
            Error::Locked { .. } => "locked",
            Error::NotLockOwner { .. } => "not_lock_owner",
            Error::Closed => "closed",
            Error::UnexpectedResponse { .. } => "unexpected_response",
            Error::Rpc(status) if status.source().is_some() => "transport",
            Error::Rpc(status) => match status.code() {
                Code::Ok => "ok",
                Code::Cancelled => "cancelled",
                Code::Unknown => "unknown",
                Code::InvalidArgument => "invalid_argument",
                Code::DeadlineExceeded => "deadline_exceeded",
                Code::NotFound => "not_found",
                Code::AlreadyExists => "already_exists",
                Code::PermissionDenied => "permission_denied",
                Code::ResourceExhausted => "resource_exhausted",
                Code::FailedPrecondition => "failed_precondition",
                Code::Aborted => "aborted",
                Code::OutOfRange => "out_of_range",
                Code::Unimplemented => "unimplemented",
                Code::Internal => "internal",
                Code::Unavailable => "unavailable",
                Code::DataLoss => "data_loss",
                Code::Unauthenticated => "unauthenticated",
            },
        }
    }

    /// A long-lived stream ended without an error.
    pub(crate) fn is_stream_end(&self) -> bool {
        matches!(self, Error::StreamEnded { .. })
    }

    /// The member we talk to failed us, and another one may do better: no
    /// answer, a lost connection, a member without a raft leader, or etcd's
    /// "request timed out" family. An error etcd answered for the call itself
    /// (whatever its gRPC code) is not one.
    ///
    /// ```
    /// use etcdutil::Error;
    /// assert!(Error::from(tonic::Status::unavailable("etcdserver: no leader")).is_member_failure());
    /// assert!(!Error::from(tonic::Status::unknown("election: not leader")).is_member_failure());
    /// ```
    pub fn is_member_failure(&self) -> bool {
        match self {
            Error::NoLeader(_)
            | Error::MemberUnavailable(_)
            | Error::Timeout { .. }
            | Error::StreamEnded { .. }
            | Error::LeaseDeadline { .. } => true,
            // A status with a source was made by tonic from a transport
            // failure; etcd's own answers carry none.
            Error::Rpc(status) => {
                status.source().is_some()
                    || matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
            }
            _ => false,
        }
    }

    /// Worth trying again, after a pause: the member failed (another may
    /// answer) or the token was rejected (a new one is fetched).
    ///
    /// ```no_run
    /// # async fn run(client: etcdutil::Client) -> etcdutil::Result<()> {
    /// use etcdutil::proto::etcdserverpb::RangeRequest;
    /// let mut tries = 0;
    /// let response = loop {
    ///     let request = RangeRequest { key: "/config".into(), ..Default::default() };
    ///     match client.kv().range(request).await.map_err(etcdutil::Error::from) {
    ///         Err(error) if error.is_retryable() && tries < 3 => {
    ///             tries += 1;
    ///             tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    ///         }
    ///         result => break result?,
    ///     }
    /// };
    /// # Ok(()) }
    /// ```
    pub fn is_retryable(&self) -> bool {
        self.is_member_failure() || self.is_token_rejected()
    }
}

/// Makes one of the [`Error`] variants that hold etcd's status.
type Variant = fn(Status) -> Error;

/// etcd's error messages that this crate acts on, and the variant each maps
/// to, whatever gRPC code carried it: etcd's Election service forwards the
/// errors of its in-process client with code Unknown, so only the message
/// tells them apart (as the Go client's `rpctypes` does).
const BY_MESSAGE: &[(&str, Variant)] = &[
    (
        "etcdserver: requested lease not found",
        Error::LeaseNotFound,
    ),
    ("etcdserver: invalid auth token", Error::InvalidAuthToken),
    (
        "etcdserver: revision of auth store is old",
        Error::AuthOldRevision,
    ),
    ("required revision has been compacted", Error::Compacted),
    ("etcdserver: no leader", Error::NoLeader),
    ("etcdserver: request timed out", Error::MemberUnavailable),
    ("etcdserver: leader changed", Error::MemberUnavailable),
    ("etcdserver: too many requests", Error::MemberUnavailable),
    ("etcdserver: server stopped", Error::MemberUnavailable),
    ("election: no leader", Error::ElectionNoLeader),
    ("election: not leader", Error::ElectionNotLeader),
];

impl From<Status> for Error {
    /// Maps etcd's error messages (which gRPC codes alone do not tell apart) to variants.
    fn from(status: Status) -> Self {
        if status
            .source()
            .is_some_and(|source| source.is::<ClientClosed>())
        {
            return Error::Closed;
        }
        match by_message(status.message()) {
            Some(variant) => variant(status),
            None => Error::Rpc(status),
        }
    }
}

/// What the transport of a closed client fails calls with; tonic wraps it
/// in a status, and [`Error::from`] turns that into [`Error::Closed`].
#[derive(Debug, thiserror::Error)]
#[error("the etcd client was closed")]
pub(crate) struct ClientClosed;

/// The variant for one of etcd's error messages, if it is in the table.
fn by_message(message: &str) -> Option<Variant> {
    BY_MESSAGE
        .iter()
        .find(|(text, _)| message.contains(text))
        .map(|(_, variant)| *variant)
}

/// A setting that is missing, malformed or contradicts another one.
///
/// Each message names the setting (the environment variable, or the field
/// when the caller set it), its value and what was expected. An underlying
/// error (I/O, PEM, rustls) is the `source()`, not part of the message.
///
/// ```
/// use etcdutil::ConfigError;
///
/// let env = |name: &str| (name == "ETCD3_DIAL_TIMEOUT").then(|| "abc".to_owned());
/// let err = etcdutil::new_config_with_env(None, env).unwrap_err();
/// assert!(matches!(err, ConfigError::InvalidDuration { .. }));
/// assert_eq!(err.to_string(), "ETCD3_DIAL_TIMEOUT='abc' is not a duration (1m|15s|24h)");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A dial timeout is not in Go's duration syntax.
    #[error("{name}='{value}' is not a duration (1m|15s|24h)")]
    InvalidDuration {
        /// Where the value came from, e.g. `ETCD3_DIAL_TIMEOUT`.
        name: &'static str,
        /// The value given.
        value: String,
    },
    /// The dial timeout is zero, so no connection could ever be made.
    #[error("{name}='{value}' is zero, expected a dial timeout above zero")]
    ZeroDialTimeout {
        /// `ETCD3_DIAL_TIMEOUT` or `Config.dial_timeout`.
        name: &'static str,
        /// The value given.
        value: String,
    },
    /// The endpoint list holds only blanks and commas.
    #[error("{name}='{value}' lists no endpoint, expected host:port[,host:port...]")]
    NoEndpoint {
        /// `ETCD3_ENDPOINT` or `Config.endpoints`.
        name: &'static str,
        /// The list given (comma separated).
        value: String,
    },
    /// An endpoint has a scheme other than `http://` and `https://`.
    #[error("endpoint '{endpoint}' in {name} has an unknown scheme, expected http:// or https://")]
    EndpointScheme {
        /// `ETCD3_ENDPOINT` or `Config.endpoints`.
        name: &'static str,
        /// The endpoint.
        endpoint: String,
    },
    /// An endpoint has no host, or one that is not a valid URI host.
    #[error("endpoint '{endpoint}' in {name} has no valid host, expected host:port")]
    EndpointHost {
        /// `ETCD3_ENDPOINT` or `Config.endpoints`.
        name: &'static str,
        /// The endpoint.
        endpoint: String,
    },
    /// An endpoint has no port.
    #[error("endpoint '{endpoint}' in {name} has no port, expected host:port")]
    EndpointNoPort {
        /// `ETCD3_ENDPOINT` or `Config.endpoints`.
        name: &'static str,
        /// The endpoint.
        endpoint: String,
    },
    /// An endpoint's port is not a number from 1 to 65535.
    #[error(
        "endpoint '{endpoint}' in {name} has an invalid port, expected a number from 1 to 65535"
    )]
    EndpointPort {
        /// `ETCD3_ENDPOINT` or `Config.endpoints`.
        name: &'static str,
        /// The endpoint.
        endpoint: String,
    },
    /// An endpoint has a path after `host:port`.
    #[error("endpoint '{endpoint}' in {name} has a path, expected nothing after host:port")]
    EndpointPath {
        /// `ETCD3_ENDPOINT` or `Config.endpoints`.
        name: &'static str,
        /// The endpoint.
        endpoint: String,
    },
    /// Some endpoints are `http://` and others `https://`.
    #[error("{name}='{value}' mixes http:// and https:// endpoints, expected one scheme for all")]
    MixedSchemes {
        /// `ETCD3_ENDPOINT` or `Config.endpoints`.
        name: &'static str,
        /// The list given (comma separated).
        value: String,
    },
    /// An `http://` endpoint, while a TLS setting asks for TLS.
    #[error(
        "endpoint '{endpoint}' in {name} is http:// but {tls} turns TLS on, expected https:// or host:port"
    )]
    HttpWithTls {
        /// `ETCD3_ENDPOINT` or `Config.endpoints`.
        name: &'static str,
        /// The `http://` endpoint.
        endpoint: String,
        /// The setting that turns TLS on, e.g. `ETCD3_CA` or `Config.tls`.
        tls: &'static str,
    },
    /// A user name without a password.
    #[error("{name}='{user}' has no password, expected Config.password or ETCD3_PASSWORD too")]
    UserWithoutPassword {
        /// `ETCD3_USER` or `Config.username`.
        name: &'static str,
        /// The user name.
        user: String,
    },
    /// A password without a user name.
    #[error("{name} is set without a user name, expected Config.username or ETCD3_USER too")]
    PasswordWithoutUser {
        /// `ETCD3_PASSWORD` or `Config.password`.
        name: &'static str,
    },
    /// A client certificate without its private key.
    #[error(
        "{name}='{}' is a client certificate without a key, expected TlsConfig.key_file or ETCD3_TLS_KEY too",
        .path.display()
    )]
    CertWithoutKey {
        /// `ETCD3_TLS_CERT` or `TlsConfig.cert_file`.
        name: &'static str,
        /// The certificate's path.
        path: PathBuf,
    },
    /// A client private key without its certificate.
    #[error(
        "{name}='{}' is a client key without a certificate, expected TlsConfig.cert_file or ETCD3_TLS_CERT too",
        .path.display()
    )]
    KeyWithoutCert {
        /// `ETCD3_TLS_KEY` or `TlsConfig.key_file`.
        name: &'static str,
        /// The key's path.
        path: PathBuf,
    },
    /// A CA, certificate or key file cannot be read.
    #[error("cannot read {name}='{}'", .path.display())]
    ReadFile {
        /// The variable or field naming the file, e.g. `ETCD3_CA`.
        name: &'static str,
        /// The file's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A CA, certificate or key file is malformed PEM.
    #[error("{name}='{}' is not valid PEM", .path.display())]
    InvalidPem {
        /// The variable or field naming the file, e.g. `ETCD3_CA`.
        name: &'static str,
        /// The file's path.
        path: PathBuf,
        /// The PEM parser's error.
        #[source]
        source: Arc<rustls::pki_types::pem::Error>,
    },
    /// A CA or certificate file holds no PEM certificate.
    #[error(
        "{name}='{}' holds no PEM certificate, expected -----BEGIN CERTIFICATE-----",
        .path.display()
    )]
    NoCertificate {
        /// `ETCD3_CA`, `ETCD3_TLS_CERT` or the `TlsConfig` field.
        name: &'static str,
        /// The file's path.
        path: PathBuf,
    },
    /// A key file holds no PEM private key.
    #[error(
        "{name}='{}' holds no PEM private key, expected -----BEGIN PRIVATE KEY-----",
        .path.display()
    )]
    NoPrivateKey {
        /// `ETCD3_TLS_KEY` or `TlsConfig.key_file`.
        name: &'static str,
        /// The file's path.
        path: PathBuf,
    },
    /// A certificate of the CA or client certificate file is one rustls rejects
    /// (e.g. malformed DER).
    #[error(
        "{name}='{}' holds a certificate that rustls cannot use, expected a DER-encoded X.509 certificate",
        .path.display()
    )]
    InvalidCertificate {
        /// `ETCD3_CA`, `ETCD3_TLS_CERT` or the `TlsConfig` field.
        name: &'static str,
        /// The file's path.
        path: PathBuf,
        /// rustls's error.
        #[source]
        source: Arc<rustls::Error>,
    },
    /// The private key is of a kind rustls (with `ring`) cannot sign with;
    /// RSA, ECDSA P-256/P-384 and Ed25519 work.
    #[error(
        "{name}='{}' holds a private key that rustls cannot use, expected an RSA, ECDSA P-256/P-384 or Ed25519 key",
        .path.display()
    )]
    UnsupportedKey {
        /// `ETCD3_TLS_KEY` or `TlsConfig.key_file`.
        name: &'static str,
        /// The file's path.
        path: PathBuf,
        /// rustls's error.
        #[source]
        source: Arc<rustls::Error>,
    },
    /// The client key is not the private key of the client certificate.
    #[error(
        "{key_name}='{}' is not the private key of the certificate in {cert_name}",
        .key_path.display()
    )]
    KeyMismatch {
        /// `ETCD3_TLS_KEY` or `TlsConfig.key_file`.
        key_name: &'static str,
        /// The key's path.
        key_path: PathBuf,
        /// `ETCD3_TLS_CERT` or `TlsConfig.cert_file`.
        cert_name: &'static str,
    },
    /// TLS should be verified against the system's roots, but none were found.
    #[error(
        "found no system root certificates, expected some for TLS without ETCD3_CA or TlsConfig.ca_file"
    )]
    NoSystemRoots {
        /// The first error met while loading them, if any.
        #[source]
        source: Option<SharedError>,
    },
    /// The crypto provider offers none of the TLS versions asked for (1.2 and 1.3).
    #[error("the ring crypto provider supports neither TLS 1.2 nor TLS 1.3")]
    TlsVersions {
        /// rustls's error.
        #[source]
        source: Arc<rustls::Error>,
    },
}
