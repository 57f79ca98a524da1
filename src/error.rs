//! The crate's error type.
//!
//! One [`Error`] for everything, `Clone` because errors travel inside session
//! and election events. etcd's answers that this crate acts on get a variant
//! of their own; every other gRPC status is [`Error::Rpc`]. The raw
//! [`tonic::Status`] stays reachable through [`Error::status`] and `source()`.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Status};

use crate::config::ConfigError;

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
    /// etcd rejected the auth token: authenticate again and retry.
    pub(crate) fn is_token_rejected(&self) -> bool {
        matches!(self, Error::InvalidAuthToken(_) | Error::AuthOldRevision(_))
    }

    /// A long-lived stream ended without an error.
    pub(crate) fn is_stream_end(&self) -> bool {
        matches!(self, Error::StreamEnded { .. })
    }

    /// The member we talk to failed us: another one may do better.
    pub(crate) fn is_member_failure(&self) -> bool {
        match self {
            Error::NoLeader(_)
            | Error::Timeout { .. }
            | Error::StreamEnded { .. }
            | Error::LeaseDeadline { .. } => true,
            Error::Rpc(status) => matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
            ),
            _ => false,
        }
    }
}

impl From<Status> for Error {
    /// Maps etcd's error messages (which gRPC codes alone do not tell apart) to variants.
    fn from(status: Status) -> Self {
        let message = status.message();
        let has = |text: &str| message.contains(text);
        match status.code() {
            Code::NotFound if has("requested lease not found") => Error::LeaseNotFound(status),
            Code::Unauthenticated if has("invalid auth token") => Error::InvalidAuthToken(status),
            Code::InvalidArgument if has("revision of auth store is old") => {
                Error::AuthOldRevision(status)
            }
            Code::OutOfRange if has("required revision has been compacted") => {
                Error::Compacted(status)
            }
            _ if has("etcdserver: no leader") => Error::NoLeader(status),
            _ if has("election: no leader") => Error::ElectionNoLeader(status),
            _ if has("election: not leader") => Error::ElectionNotLeader(status),
            _ => Error::Rpc(status),
        }
    }
}
