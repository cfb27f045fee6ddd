//! What keeps other web pages (and other machines) away from the local
//! page: the `Host` every request must name (a DNS-rebinding defence), the
//! `Origin` (or `Referer`) a state-changing request must come from, and the
//! CSRF token its form must carry. Pure functions over header values.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

use crate::auth::password::fill_random;
use subtle::ConstantTimeEq;

/// Random bytes of the CSRF token (made once per process).
const CSRF_BYTES: usize = 32;

/// The hosts (`name:port`) the page answers to.
#[derive(Debug, Clone)]
pub(crate) struct Hosts {
    port: u16,
    /// The configured address, when other machines may use it.
    remote: Option<SocketAddr>,
}

impl Hosts {
    /// `localhost`, `127.0.0.1` and `[::1]` with the bound port; with
    /// `admin_allow_remote` also the listen address itself, or, when that is
    /// a wildcard (`0.0.0.0`, `[::]`), any IP literal: a DNS rebinding
    /// needs a host *name*, so an address typed as digits is safe.
    pub fn new(bound: SocketAddr, allow_remote: bool) -> Hosts {
        Hosts {
            port: bound.port(),
            remote: allow_remote.then_some(bound),
        }
    }

    /// Whether `host` (a `Host` header value, or the host of an origin) is one of ours.
    pub(crate) fn allows(&self, host: &str) -> bool {
        let Some((name, port)) = split_host_port(host) else {
            return false;
        };
        if port != self.port {
            return false;
        }
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let Some(ip) = parse_ip(name) else {
            return false;
        };
        if ip.is_loopback() {
            return true;
        }
        match self.remote {
            Some(listen) if listen.ip().is_unspecified() => true,
            Some(listen) => listen.ip() == ip,
            None => false,
        }
    }

    /// Whether `origin` (an `Origin` header: `http://host:port`) is one of ours.
    pub(crate) fn allows_origin(&self, origin: &str) -> bool {
        origin
            .strip_prefix("http://")
            .is_some_and(|host| !host.contains('/') && self.allows(host))
    }

    /// Whether `referer` is a page of ours (`http://host:port/…`).
    pub(crate) fn allows_referer(&self, referer: &str) -> bool {
        let Some(rest) = referer.strip_prefix("http://") else {
            return false;
        };
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        // `http://host:port` alone, or followed by a path.
        (host.len() == rest.len() || rest[host.len()..].starts_with('/')) && self.allows(host)
    }
}

/// `name:port` with the port required; `[v6]:port` brackets removed.
fn split_host_port(host: &str) -> Option<(&str, u16)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        (name, after.strip_prefix(':')?)
    } else {
        let (name, port) = host.rsplit_once(':')?;
        if name.contains(':') {
            return None;
        }
        (name, port)
    };
    if name.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name, port.parse().ok()?))
}

/// Only the canonical dotted-quad and IPv6 forms: `127.1` or `0x7f.0.0.1`
/// are names to us, not addresses.
fn parse_ip(name: &str) -> Option<IpAddr> {
    name.parse().ok()
}

/// Why a request was refused (the short text the answer carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The `Host` is not this page's: another site's name resolving here.
    ForeignHost,
    /// A POST from another origin, or with neither `Origin` nor `Referer`.
    ForeignOrigin,
    /// A POST whose form has no CSRF token, or a wrong one.
    BadCsrf,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::ForeignHost => {
                "This page answers only to its own address (http://localhost:PORT/)."
            }
            Refusal::ForeignOrigin => "Refused: this request did not come from this page.",
            Refusal::BadCsrf => {
                "Refused: the form is stale or forged; reload the page and try again."
            }
        }
    }
}

/// Every request: its `Host` must be ours.
pub(crate) fn check_host(hosts: &Hosts, host: Option<&str>) -> Result<(), Refusal> {
    match host {
        Some(h) if hosts.allows(h) => Ok(()),
        _ => Err(Refusal::ForeignHost),
    }
}

/// A state-changing request: it must come from one of our pages. `Origin`
/// decides when present (`null` is foreign); without it, `Referer`.
pub(crate) fn check_origin(
    hosts: &Hosts,
    origin: Option<&str>,
    referer: Option<&str>,
) -> Result<(), Refusal> {
    let ours = match (origin, referer) {
        (Some(o), _) => hosts.allows_origin(o),
        (None, Some(r)) => hosts.allows_referer(r),
        (None, None) => false,
    };
    if ours {
        Ok(())
    } else {
        Err(Refusal::ForeignOrigin)
    }
}

/// The token every form of the page carries; random per process. Only a
/// page read from our own origin can know it.
#[derive(Clone)]
pub(crate) struct CsrfToken(String);

impl std::fmt::Debug for CsrfToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfToken(<redacted>)")
    }
}

impl CsrfToken {
    pub fn random() -> CsrfToken {
        let mut bytes = [0u8; CSRF_BYTES];
        fill_random(&mut bytes);
        CsrfToken(B64URL.encode(bytes))
    }

    /// For the forms of the page.
    pub fn value(&self) -> &str {
        &self.0
    }

    /// Compared in constant time.
    pub fn check(&self, sent: Option<&str>) -> Result<(), Refusal> {
        match sent {
            Some(s) if bool::from(s.as_bytes().ct_eq(self.0.as_bytes())) => Ok(()),
            _ => Err(Refusal::BadCsrf),
        }
    }
}

/// The `Content-Security-Policy` of every answer: nothing loads from
/// anywhere (inline styles only), no frame may hold the page, and forms post
/// only to the page itself or, through the sign-in's redirect, to the
/// providers' authorize pages (`form_targets`: their origins).
pub(crate) fn content_security_policy(form_targets: &[String]) -> String {
    let mut form_action = String::from("'self'");
    for target in form_targets {
        form_action.push(' ');
        form_action.push_str(target);
    }
    format!(
        "default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; \
         frame-ancestors 'none'; base-uri 'none'"
    )
}

/// The origin (`scheme://host[:port]`) of an authorize URL, for
/// `form-action`; `None` for anything that is not a plain http(s) URL (a
/// value that could smuggle another directive into the policy).
pub(crate) fn url_origin(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return None;
    }
    let origin = parsed.origin().ascii_serialization();
    let safe = origin
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.:/[]".contains(&b));
    safe.then_some(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> Hosts {
        Hosts::new("127.0.0.1:8089".parse().unwrap(), false)
    }

    #[test]
    fn host_header_table() {
        let cases: &[(&str, bool)] = &[
            ("localhost:8089", true),
            ("LOCALHOST:8089", true),
            ("127.0.0.1:8089", true),
            ("127.0.0.2:8089", true),
            ("[::1]:8089", true),
            ("localhost", false),
            ("127.0.0.1", false),
            ("localhost:8090", false),
            ("localhost:08089", true),
            ("localhost:", false),
            (":8089", false),
            ("evil.example:8089", false),
            ("localhost.evil.example:8089", false),
            ("127.0.0.1.nip.io:8089", false),
            ("evil.example:8089@localhost:8089", false),
            ("localhost:8089 ", false),
            ("localhost:8089\r\nX: y", false),
            ("[::1]", false),
            ("::1:8089", false),
            ("[::1:8089", false),
            ("127.1:8089", false),
            ("0x7f.0.0.1:8089", false),
            ("192.168.1.5:8089", false),
            ("0.0.0.0:8089", false),
            ("", false),
            ("localhost:99999999999", false),
            ("localhost:+8089", false),
        ];
        let hosts = loopback();
        for (host, ok) in cases {
            assert_eq!(hosts.allows(host), *ok, "{host:?}");
            assert_eq!(check_host(&hosts, Some(host)).is_ok(), *ok, "{host:?}");
        }
        assert_eq!(check_host(&hosts, None), Err(Refusal::ForeignHost));
    }

    #[test]
    fn remote_hosts_only_when_allowed() {
        let lan: SocketAddr = "192.168.1.5:8089".parse().unwrap();
        assert!(!Hosts::new(lan, false).allows("192.168.1.5:8089"));
        let hosts = Hosts::new(lan, true);
        assert!(hosts.allows("192.168.1.5:8089"));
        assert!(hosts.allows("localhost:8089"));
        assert!(!hosts.allows("192.168.1.6:8089"));
        assert!(!hosts.allows("proxy.lan:8089"), "names can be rebound");
        let any = Hosts::new("0.0.0.0:8089".parse().unwrap(), true);
        assert!(any.allows("10.0.0.7:8089"));
        assert!(any.allows("[fe80::1]:8089"));
        assert!(!any.allows("proxy.lan:8089"));
        assert!(!any.allows("10.0.0.7:8088"));
    }

    #[test]
    fn origin_and_referer_table() {
        let hosts = loopback();
        let cases: &[(Option<&str>, Option<&str>, bool)] = &[
            (Some("http://localhost:8089"), None, true),
            (Some("http://127.0.0.1:8089"), None, true),
            (Some("http://[::1]:8089"), None, true),
            (
                Some("http://localhost:8089"),
                Some("https://evil.example/"),
                true,
            ),
            (Some("https://localhost:8089"), None, false),
            (Some("http://localhost:8089/"), None, false),
            (Some("http://evil.example"), None, false),
            (Some("http://evil.example:8089"), None, false),
            (Some("null"), None, false),
            (Some("null"), Some("http://localhost:8089/"), false),
            (Some(""), None, false),
            (Some("http://localhost:8089.evil.example"), None, false),
            (None, Some("http://localhost:8089/"), true),
            (None, Some("http://localhost:8089/?x=1"), true),
            (None, Some("http://localhost:8089"), true),
            (None, Some("http://localhost:8089.evil.example/"), false),
            (None, Some("http://localhost:8089@evil.example/"), false),
            (
                None,
                Some("http://evil.example/http://localhost:8089/"),
                false,
            ),
            (None, Some("https://localhost:8089/"), false),
            (None, None, false),
        ];
        for (origin, referer, ok) in cases {
            assert_eq!(
                check_origin(&hosts, *origin, *referer).is_ok(),
                *ok,
                "{origin:?} {referer:?}"
            );
        }
    }

    #[test]
    fn csrf_token_is_random_and_checked_exactly() {
        let token = CsrfToken::random();
        assert_ne!(token.value(), CsrfToken::random().value());
        assert!(token.value().len() >= 43);
        assert!(token.check(Some(token.value())).is_ok());
        let wrong: &[Option<&str>] = &[
            None,
            Some(""),
            Some("x"),
            Some(&token.value()[1..]),
            Some(&token.value().to_uppercase()),
        ];
        for w in wrong {
            if *w == Some(token.value()) {
                continue;
            }
            assert_eq!(token.check(*w), Err(Refusal::BadCsrf), "{w:?}");
        }
        let longer = format!("{}x", token.value());
        assert_eq!(token.check(Some(&longer)), Err(Refusal::BadCsrf));
        assert!(!format!("{token:?}").contains(token.value()));
    }

    #[test]
    fn the_policy_names_only_clean_origins() {
        assert_eq!(
            url_origin("https://login.microsoftonline.com/common/oauth2/v2.0/authorize").as_deref(),
            Some("https://login.microsoftonline.com")
        );
        assert_eq!(
            url_origin("http://127.0.0.1:4000/authorize?x=1").as_deref(),
            Some("http://127.0.0.1:4000")
        );
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "not a url",
            "ftp://x/y",
        ] {
            assert_eq!(url_origin(bad), None, "{bad}");
        }
        // A host that tries to add a directive cannot survive URL parsing.
        assert_eq!(url_origin("https://a; script-src *"), None);
        let csp = content_security_policy(&["https://login.microsoftonline.com".into()]);
        assert!(csp.contains("form-action 'self' https://login.microsoftonline.com;"));
        assert!(csp.starts_with("default-src 'none';"));
        assert!(csp.contains("frame-ancestors 'none'"));
    }
}
