//! Connection settings, filled from `ETCD3_*` environment variables.
//!
//! Port of the Go `etcdutil.NewConfig`: what the caller set wins, what it left
//! blank comes from the environment, and what neither set gets a default.

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use crate::client::parse::{Endpoint, Scheme, parse_endpoint, parse_go_duration};
use crate::client::tls::{self, FileNames, TlsConfig};
use crate::error::ConfigError;

/// Comma-separated endpoints: `host:port` or `http(s)://host:port`.
///
/// ```
/// let env = |name: &str| (name == etcdutil::ETCD3_ENDPOINT).then(|| "10.0.0.1:2379, 10.0.0.2:2379".to_string());
/// let config = etcdutil::new_config_with_env(None, env).unwrap();
/// assert_eq!(config.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
/// ```
pub const ETCD3_ENDPOINT: &str = "ETCD3_ENDPOINT";
/// User name for etcd's authentication.
///
/// ```
/// use etcdutil::{ETCD3_PASSWORD, ETCD3_USER};
/// let env = |name: &str| match name {
///     ETCD3_USER => Some("root".to_string()),
///     ETCD3_PASSWORD => Some("secret".to_string()),
///     _ => None,
/// };
/// let config = etcdutil::new_config_with_env(None, env).unwrap();
/// assert_eq!(config.username.as_deref(), Some("root"));
/// ```
pub const ETCD3_USER: &str = "ETCD3_USER";
/// Password for etcd's authentication.
///
/// ```
/// // A password without a user name is refused.
/// let env = |name: &str| (name == etcdutil::ETCD3_PASSWORD).then(|| "secret".to_string());
/// assert!(etcdutil::new_config_with_env(None, env).is_err());
/// ```
pub const ETCD3_PASSWORD: &str = "ETCD3_PASSWORD";
/// Path of a PEM client certificate (needs [`ETCD3_TLS_KEY`]).
///
/// ```
/// // A certificate without its key is refused.
/// let env = |name: &str| (name == etcdutil::ETCD3_TLS_CERT).then(|| "/etc/etcd/client.pem".to_string());
/// assert!(etcdutil::new_config_with_env(None, env).is_err());
/// ```
pub const ETCD3_TLS_CERT: &str = "ETCD3_TLS_CERT";
/// Path of the PEM private key of [`ETCD3_TLS_CERT`].
///
/// ```
/// // A key without its certificate is refused.
/// let env = |name: &str| (name == etcdutil::ETCD3_TLS_KEY).then(|| "/etc/etcd/client-key.pem".to_string());
/// assert!(etcdutil::new_config_with_env(None, env).is_err());
/// ```
pub const ETCD3_TLS_KEY: &str = "ETCD3_TLS_KEY";
/// Path of a PEM file of CA certificates that sign etcd's server certificate.
///
/// ```
/// // The file is read at once: a missing one is an error naming it.
/// let env = |name: &str| (name == etcdutil::ETCD3_CA).then(|| "/nonexistent/ca.pem".to_string());
/// let err = etcdutil::new_config_with_env(None, env).unwrap_err();
/// assert_eq!(err.to_string(), "cannot read ETCD3_CA='/nonexistent/ca.pem'");
/// ```
pub const ETCD3_CA: &str = "ETCD3_CA";
/// Any value: TLS without verifying etcd's certificate (tests only).
///
/// ```
/// let env = |name: &str| (name == etcdutil::ETCD3_SKIP_VERIFY).then(|| "1".to_string());
/// let config = etcdutil::new_config_with_env(None, env).unwrap();
/// assert!(config.tls.unwrap().skip_verify);
/// ```
pub const ETCD3_SKIP_VERIFY: &str = "ETCD3_SKIP_VERIFY";
/// Any value: TLS, verified against the system's root certificates.
///
/// ```
/// let env = |name: &str| (name == etcdutil::ETCD3_ENABLE_TLS).then(|| "1".to_string());
/// let config = etcdutil::new_config_with_env(None, env).unwrap();
/// assert_eq!(config.tls, Some(etcdutil::TlsConfig::default()));
/// ```
pub const ETCD3_ENABLE_TLS: &str = "ETCD3_ENABLE_TLS";
/// Dial timeout in Go duration syntax: `300ms`, `15s`, `1m`, `1h30m`.
///
/// ```
/// use std::time::Duration;
/// let env = |name: &str| (name == etcdutil::ETCD3_DIAL_TIMEOUT).then(|| "1m30s".to_string());
/// let config = etcdutil::new_config_with_env(None, env).unwrap();
/// assert_eq!(config.dial_timeout, Some(Duration::from_secs(90)));
/// ```
pub const ETCD3_DIAL_TIMEOUT: &str = "ETCD3_DIAL_TIMEOUT";
/// Any value: log every RPC (method, request, response) on stderr.
///
/// ```
/// let env = |name: &str| (name == etcdutil::ETCD3_DEBUG).then(|| "1".to_string());
/// assert!(etcdutil::new_config_with_env(None, env).unwrap().debug);
/// ```
pub const ETCD3_DEBUG: &str = "ETCD3_DEBUG";

/// Where to find etcd and how to talk to it.
///
/// Blank fields (empty, `None`, `false`) are filled by [`new_config`].
///
/// ```
/// use std::time::Duration;
/// let config = etcdutil::Config {
///     endpoints: vec!["10.0.0.1:2379".into(), "10.0.0.2:2379".into()],
///     dial_timeout: Some(Duration::from_secs(2)),
///     ..Default::default()
/// };
/// ```
#[derive(Clone, Default, PartialEq)]
pub struct Config {
    /// `host:port` or `http(s)://host:port`, one per etcd member.
    pub endpoints: Vec<String>,
    /// User name for etcd's authentication, if auth is enabled.
    pub username: Option<String>,
    /// Password of `username`. Never printed by `Debug`.
    pub password: Option<String>,
    /// TLS settings; `None` means plaintext.
    pub tls: Option<TlsConfig>,
    /// How long connecting may take before it fails.
    pub dial_timeout: Option<Duration>,
    /// Log every RPC on stderr (see the crate docs, "Auditing the wire").
    pub debug: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("endpoints", &self.endpoints)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("dial_timeout", &self.dial_timeout)
            .field("debug", &self.debug)
            .finish()
    }
}

/// The endpoint used when neither the caller nor [`ETCD3_ENDPOINT`] names one.
///
/// ```
/// let cfg = etcdutil::new_config_with_env(None, |_| None)?;
/// assert_eq!(cfg.endpoints, [etcdutil::DEFAULT_ENDPOINT]);
/// # Ok::<(), etcdutil::ConfigError>(())
/// ```
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";

/// The dial timeout used when neither the caller nor [`ETCD3_DIAL_TIMEOUT`] sets one.
///
/// ```
/// let cfg = etcdutil::new_config_with_env(None, |_| None)?;
/// assert_eq!(cfg.dial_timeout, Some(etcdutil::DEFAULT_DIAL_TIMEOUT));
/// # Ok::<(), etcdutil::ConfigError>(())
/// ```
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

const ENDPOINTS_FIELD: &str = "Config.endpoints";
const USERNAME_FIELD: &str = "Config.username";
const PASSWORD_FIELD: &str = "Config.password";
const DIAL_TIMEOUT_FIELD: &str = "Config.dial_timeout";
const TLS_FIELD: &str = "Config.tls";

/// Fills the blanks of `cfg` from the `ETCD3_*` environment variables, then
/// with defaults, and checks the result (including the TLS files).
///
/// The same as [`new_config_with_env`] with the process environment; see
/// there for the rules.
///
/// ```
/// // ETCD3_ENDPOINT=10.0.0.1:2379,10.0.0.2:2379 or the default 127.0.0.1:2379
/// let cfg = etcdutil::new_config(None)?;
/// assert!(!cfg.endpoints.is_empty());
/// # Ok::<(), etcdutil::ConfigError>(())
/// ```
pub fn new_config(cfg: Option<Config>) -> Result<Config, ConfigError> {
    new_config_with_env(cfg, |name| {
        std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
    })
}

/// Fills the blanks of `cfg` from `env` (the `ETCD3_*` variables), then with
/// defaults, and checks the result.
///
/// What the caller set wins; a variable set to the empty string counts as
/// unset. Then:
///
/// * `endpoints`: [`ETCD3_ENDPOINT`] (comma separated), else
///   [`DEFAULT_ENDPOINT`]. Each is `host:port`, `http://host:port` or
///   `https://host:port`. An `https://` endpoint turns TLS on; an `http://`
///   one contradicts TLS settings.
/// * `username`, `password`: [`ETCD3_USER`], [`ETCD3_PASSWORD`]; one
///   without the other is an error.
/// * `tls`: its blank fields from [`ETCD3_CA`], [`ETCD3_TLS_CERT`],
///   [`ETCD3_TLS_KEY`], [`ETCD3_SKIP_VERIFY`]; any of those or
///   [`ETCD3_ENABLE_TLS`] turns TLS on. The files are read and checked now.
/// * `dial_timeout`: [`ETCD3_DIAL_TIMEOUT`] in Go syntax (`300ms`, `1h30m`),
///   else [`DEFAULT_DIAL_TIMEOUT`]; zero is an error.
/// * `debug`: true if set, or if [`ETCD3_DEBUG`] is.
///
/// ```
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use etcdutil::Config;
///
/// let env = HashMap::from([
///     ("ETCD3_ENDPOINT", "10.0.0.1:2379, 10.0.0.2:2379"),
///     ("ETCD3_DIAL_TIMEOUT", "1m30s"),
/// ]);
/// let cfg = etcdutil::new_config_with_env(
///     Some(Config { dial_timeout: Some(Duration::from_secs(2)), ..Default::default() }),
///     |name| env.get(name).map(|value| value.to_string()),
/// )?;
/// assert_eq!(cfg.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
/// assert_eq!(cfg.dial_timeout, Some(Duration::from_secs(2))); // the caller's wins
/// assert_eq!(cfg.tls, None);
/// # Ok::<(), etcdutil::ConfigError>(())
/// ```
pub fn new_config_with_env(
    cfg: Option<Config>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let env = |name: &'static str| env(name).filter(|value| !value.is_empty());
    let cfg = cfg.unwrap_or_default();

    // One setting after the other: the order decides which error a config
    // with several faults gets.
    let endpoints = fill_endpoints(&cfg.endpoints, &env)?;
    let dial_timeout = fill_dial_timeout(cfg.dial_timeout, &env)?;
    let (username, password) = fill_credentials(cfg.username, cfg.password, &env)?;
    let tls = fill_tls(cfg.tls, &env);
    let tls = check_tls(tls, &endpoints)?;
    let debug = fill_debug(cfg.debug, &env);

    Ok(Config {
        endpoints: endpoints.parsed.into_iter().map(|e| e.raw).collect(),
        username,
        password,
        tls,
        dial_timeout: Some(dial_timeout),
        debug,
    })
}

/// The checked endpoints, and where they came from for messages.
struct Endpoints {
    /// `Config.endpoints` or `ETCD3_ENDPOINT`.
    name: &'static str,
    /// The list as given (comma separated).
    listed: String,
    /// Trimmed, blank ones dropped, in order.
    parsed: Vec<Endpoint>,
}

/// Endpoints: the caller's, else the environment's, else the default.
fn fill_endpoints(
    caller: &[String],
    env: &impl Fn(&'static str) -> Option<String>,
) -> Result<Endpoints, ConfigError> {
    let (name, listed, list) = if !caller.is_empty() {
        (
            ENDPOINTS_FIELD,
            caller.join(","),
            non_blank(caller.iter().map(String::as_str)),
        )
    } else if let Some(value) = env(ETCD3_ENDPOINT) {
        let endpoints = non_blank(value.split(','));
        (ETCD3_ENDPOINT, value, endpoints)
    } else {
        (
            ETCD3_ENDPOINT,
            DEFAULT_ENDPOINT.to_owned(),
            vec![DEFAULT_ENDPOINT.to_owned()],
        )
    };
    if list.is_empty() {
        return Err(ConfigError::NoEndpoint {
            name,
            value: listed,
        });
    }
    let parsed = list
        .iter()
        .map(|endpoint| parse_endpoint(name, endpoint))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Endpoints {
        name,
        listed,
        parsed,
    })
}

/// Dial timeout: the caller's, else the environment's, else the default; not zero.
fn fill_dial_timeout(
    caller: Option<Duration>,
    env: &impl Fn(&'static str) -> Option<String>,
) -> Result<Duration, ConfigError> {
    let (dial_timeout, name, value) = match caller {
        Some(timeout) => (timeout, DIAL_TIMEOUT_FIELD, format!("{timeout:?}")),
        None => match env(ETCD3_DIAL_TIMEOUT) {
            Some(value) => match parse_go_duration(value.trim()) {
                Some(timeout) => (timeout, ETCD3_DIAL_TIMEOUT, value),
                None => {
                    return Err(ConfigError::InvalidDuration {
                        name: ETCD3_DIAL_TIMEOUT,
                        value,
                    });
                }
            },
            None => (DEFAULT_DIAL_TIMEOUT, DIAL_TIMEOUT_FIELD, String::new()),
        },
    };
    if dial_timeout.is_zero() {
        return Err(ConfigError::ZeroDialTimeout { name, value });
    }
    Ok(dial_timeout)
}

/// Credentials: the caller's, else the environment's; both or neither.
fn fill_credentials(
    username: Option<String>,
    password: Option<String>,
    env: &impl Fn(&'static str) -> Option<String>,
) -> Result<(Option<String>, Option<String>), ConfigError> {
    let username = fill(username, USERNAME_FIELD, || {
        env(ETCD3_USER).map(|v| (v, ETCD3_USER))
    });
    let password = fill(password, PASSWORD_FIELD, || {
        env(ETCD3_PASSWORD).map(|v| (v, ETCD3_PASSWORD))
    });
    match (username, password) {
        (Some((user, name)), None) => Err(ConfigError::UserWithoutPassword { name, user }),
        (None, Some((_, name))) => Err(ConfigError::PasswordWithoutUser { name }),
        (username, password) => Ok((
            username.map(|(user, _)| user),
            password.map(|(password, _)| password),
        )),
    }
}

/// TLS settings before they are checked against the endpoints.
struct TlsSettings {
    /// The caller's, blank fields filled from the environment.
    tls: TlsConfig,
    /// The setting each file came from, for messages.
    names: FileNames,
    /// The first setting that turns TLS on, if any.
    origin: Option<&'static str>,
}

/// TLS: the caller's blank fields from the environment.
fn fill_tls(
    caller: Option<TlsConfig>,
    env: &impl Fn(&'static str) -> Option<String>,
) -> TlsSettings {
    let mut origin = caller.is_some().then_some(TLS_FIELD);
    let mut tls = caller.unwrap_or_default();
    let mut names = FileNames::FIELDS;
    for (file, name, var) in [
        (&mut tls.ca_file, &mut names.ca, ETCD3_CA),
        (&mut tls.cert_file, &mut names.cert, ETCD3_TLS_CERT),
        (&mut tls.key_file, &mut names.key, ETCD3_TLS_KEY),
    ] {
        if file
            .as_deref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            *file = None;
        }
        if file.is_none()
            && let Some(path) = env(var)
        {
            *file = Some(PathBuf::from(path));
            *name = var;
            origin.get_or_insert(var);
        }
    }
    if !tls.skip_verify && env(ETCD3_SKIP_VERIFY).is_some() {
        tls.skip_verify = true;
        origin.get_or_insert(ETCD3_SKIP_VERIFY);
    }
    if env(ETCD3_ENABLE_TLS).is_some() {
        origin.get_or_insert(ETCD3_ENABLE_TLS);
    }
    TlsSettings { tls, names, origin }
}

/// Schemes: one for all endpoints, and in agreement with the TLS settings (an
/// `https://` endpoint turns TLS on). Then the TLS files are read and checked.
fn check_tls(
    settings: TlsSettings,
    endpoints: &Endpoints,
) -> Result<Option<TlsConfig>, ConfigError> {
    let has = |scheme| {
        endpoints
            .parsed
            .iter()
            .any(|endpoint| endpoint.scheme == Some(scheme))
    };
    if has(Scheme::Http) && has(Scheme::Https) {
        return Err(ConfigError::MixedSchemes {
            name: endpoints.name,
            value: endpoints.listed.clone(),
        });
    }
    let tls = match settings.origin {
        Some(origin) => {
            let http = endpoints
                .parsed
                .iter()
                .find(|e| e.scheme == Some(Scheme::Http));
            if let Some(endpoint) = http {
                return Err(ConfigError::HttpWithTls {
                    name: endpoints.name,
                    endpoint: endpoint.raw.clone(),
                    tls: origin,
                });
            }
            Some(settings.tls)
        }
        None if has(Scheme::Https) => Some(TlsConfig::default()),
        None => None,
    };
    if let Some(tls) = &tls {
        tls::check(tls, &settings.names)?;
    }
    Ok(tls)
}

/// Debug: the caller's, or the environment's.
fn fill_debug(caller: bool, env: &impl Fn(&'static str) -> Option<String>) -> bool {
    caller || env(ETCD3_DEBUG).is_some()
}

/// The endpoints of a config filled by [`new_config`] as full URIs:
/// `http://host:port`, or `https://host:port` when TLS is on.
pub(crate) fn endpoint_uris(cfg: &Config) -> Result<Vec<Uri>, ConfigError> {
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let endpoints = non_blank(cfg.endpoints.iter().map(String::as_str));
    if endpoints.is_empty() {
        return Err(ConfigError::NoEndpoint {
            name: ENDPOINTS_FIELD,
            value: cfg.endpoints.join(","),
        });
    }
    endpoints
        .iter()
        .map(|endpoint| {
            let parsed = parse_endpoint(ENDPOINTS_FIELD, endpoint)?;
            Uri::try_from(format!("{scheme}://{}", parsed.authority)).map_err(|_| {
                ConfigError::EndpointHost {
                    name: ENDPOINTS_FIELD,
                    endpoint: endpoint.clone(),
                }
            })
        })
        .collect()
}

/// The caller's value unless blank, else the environment's, with where it came from.
fn fill(
    value: Option<String>,
    field: &'static str,
    env: impl FnOnce() -> Option<(String, &'static str)>,
) -> Option<(String, &'static str)> {
    match value {
        Some(value) if !value.is_empty() => Some((value, field)),
        _ => env(),
    }
}

/// The items trimmed, blank ones dropped.
fn non_blank<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    items
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let mut cfg = Config {
            endpoints: vec!["a:1".into(), " [::1]:2 ".into(), "".into()],
            ..Default::default()
        };
        let uris = |cfg: &Config| {
            endpoint_uris(cfg)
                .unwrap()
                .iter()
                .map(Uri::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(uris(&cfg), ["http://a:1/", "http://[::1]:2/"]);
        cfg.tls = Some(TlsConfig::default());
        assert_eq!(uris(&cfg), ["https://a:1/", "https://[::1]:2/"]);
    }
}
