//! The two text formats of the settings: etcd endpoints and Go durations.
//!
//! Pure functions, no I/O: `config` decides where the text comes from and
//! what to do with the result.

use std::time::Duration;

use crate::error::ConfigError;

/// An endpoint's explicit scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

/// One checked endpoint.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// As given (trimmed).
    pub(crate) raw: String,
    /// `None` for a bare `host:port`.
    pub(crate) scheme: Option<Scheme>,
    /// `host:port`, a valid URI authority.
    pub(crate) authority: String,
}

/// Checks `raw` (`host:port` or `http(s)://host:port`, a trailing `/` allowed).
pub(crate) fn parse_endpoint(name: &'static str, raw: &str) -> Result<Endpoint, ConfigError> {
    let endpoint = || raw.to_owned();
    let (scheme, rest) = match raw.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (Some(Scheme::Http), rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (Some(Scheme::Https), rest),
        Some(_) => {
            return Err(ConfigError::EndpointScheme {
                name,
                endpoint: endpoint(),
            });
        }
        None => (None, raw),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if !path.is_empty() && path != "/" {
        return Err(ConfigError::EndpointPath {
            name,
            endpoint: endpoint(),
        });
    }
    let bad_host = || ConfigError::EndpointHost {
        name,
        endpoint: endpoint(),
    };
    let (host, port) = if authority.starts_with('[') {
        // An IPv6 address: [::1]:2379.
        let end = authority.find(']').ok_or_else(bad_host)?;
        let (host, tail) = authority.split_at(end + 1);
        match tail {
            "" => (host, None),
            _ => (host, Some(tail.strip_prefix(':').ok_or_else(bad_host)?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty()
        || host.contains(['@', ' '])
        || (!host.starts_with('[') && host.contains(':'))
    {
        return Err(bad_host());
    }
    let port = match port {
        None | Some("") => {
            return Err(ConfigError::EndpointNoPort {
                name,
                endpoint: endpoint(),
            });
        }
        Some(port) => match port.parse::<u16>() {
            Ok(number) if number > 0 && port.bytes().all(|b| b.is_ascii_digit()) => number,
            _ => {
                return Err(ConfigError::EndpointPort {
                    name,
                    endpoint: endpoint(),
                });
            }
        },
    };
    let authority = format!("{host}:{port}");
    http::uri::Authority::try_from(authority.as_str()).map_err(|_| bad_host())?;
    Ok(Endpoint {
        raw: endpoint(),
        scheme,
        authority,
    })
}

/// Parses a Go duration (`time.ParseDuration`): `300ms`, `1.5s`, `1h30m10s`,
/// units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`. `None` if malformed, negative
/// or longer than Go's limit (about 292 years).
pub(crate) fn parse_go_duration(text: &str) -> Option<Duration> {
    const MAX_NANOS: u64 = i64::MAX as u64;
    let (negative, mut rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let (whole, tail) = rest.split_at(digits(rest));
        rest = tail;
        let mut fraction = "";
        if let Some(tail) = rest.strip_prefix('.') {
            (fraction, rest) = tail.split_at(digits(tail));
        }
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let (unit, tail) = rest.split_at(
            rest.find(|c: char| c == '.' || c.is_ascii_digit())
                .unwrap_or(rest.len()),
        );
        rest = tail;
        let unit: u64 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return None,
        };
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut nanos = whole.checked_mul(unit)?;
        if !fraction.is_empty() {
            // Digits past the 18th cannot change the result by a nanosecond.
            let kept = &fraction[..fraction.len().min(18)];
            let scale = 10u128.pow(kept.len() as u32);
            let part = kept.parse::<u128>().ok()? * u128::from(unit) / scale;
            nanos = nanos.checked_add(u64::try_from(part).ok()?)?;
        }
        total = total
            .checked_add(nanos)
            .filter(|&total| total <= MAX_NANOS)?;
    }
    match negative && total != 0 {
        true => None,
        false => Some(Duration::from_nanos(total)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ok = |text: &str, nanos: u64| {
            assert_eq!(
                parse_go_duration(text),
                Some(Duration::from_nanos(nanos)),
                "{text}"
            )
        };
        ok("0", 0);
        ok("-0", 0);
        ok("0s", 0);
        ok("300ms", 300_000_000);
        ok("15s", 15_000_000_000);
        ok("+15s", 15_000_000_000);
        ok("1m", 60_000_000_000);
        ok("1h30m", 5_400_000_000_000);
        ok("1h30m10s", 5_410_000_000_000);
        ok("24h", 86_400_000_000_000);
        ok("1.5s", 1_500_000_000);
        ok(".5s", 500_000_000);
        ok("1.s", 1_000_000_000);
        ok("1.0000000001s", 1_000_000_000);
        ok("10ns", 10);
        ok("10us", 10_000);
        ok("10µs", 10_000);
        ok("10μs", 10_000);
        ok("1h1.5m", 3_690_000_000_000);
        ok("2562047h47m16.854775807s", i64::MAX as u64);
        for bad in [
            "",
            "abc",
            "1",
            "s",
            ".s",
            ".",
            "1x",
            "1sm",
            "-1s",
            "1s ",
            " 1s",
            "1.5.5s",
            "1e3s",
            "2562047h47m16.854775808s",
            "99999999999999999999s",
        ] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn endpoints() {
        let authority = |raw| parse_endpoint("x", raw).map(|e| (e.scheme, e.authority));
        assert_eq!(authority("a:1").unwrap(), (None, "a:1".into()));
        assert_eq!(
            authority("HTTPS://a:2379/").unwrap(),
            (Some(Scheme::Https), "a:2379".into())
        );
        assert_eq!(
            authority("http://[::1]:2379").unwrap(),
            (Some(Scheme::Http), "[::1]:2379".into())
        );
        for bad in [
            "::1:2379", "[::1]", "[::1]x", "u@a:1", ":1", "a:+1", "a:0", "a:1/x", "a b:1",
        ] {
            assert!(authority(bad).is_err(), "{bad}");
        }
    }
}
