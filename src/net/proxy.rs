//! The way out to a server: direct, or through an HTTP CONNECT or SOCKS5
//! proxy (`upstream_proxy`). The TLS inside stays end to end: a proxy only
//! sees the host and port it is asked to connect to.
//!
//! SOCKS5 is tokio-socks. HTTP CONNECT is the one request line and header
//! block of RFC 9110 §9.3.6, parsed with httparse; no maintained crate does
//! CONNECT on a tokio stream without taking over the TLS as well, and the
//! answer must be read to its blank line and not a byte further (an IMAP
//! server's greeting may follow in the same packet).

use std::fmt;
use std::sync::OnceLock;

use base64::Engine as _;
use secrecy::ExposeSecret as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::config::{NoProxyRule, ProxyKind, ProxyServer, ProxySetting};

#[cfg(target_os = "macos")]
mod macos;
#[cfg(windows)]
mod windows;

/// The longest CONNECT answer head read: real proxies send a status line
/// and a few headers (well under 1 KiB); anything longer is not a proxy.
pub(crate) const MAX_CONNECT_ANSWER: usize = 16 * 1024;
/// Headers in a CONNECT answer that httparse is given room for.
const MAX_CONNECT_HEADERS: usize = 64;
/// How much of a proxy's reason phrase or scheme list goes into an error.
const MAX_SAID: usize = 120;

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Direct,
    Via(ProxyServer),
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Direct => f.write_str("direct"),
            Route::Via(proxy) => write!(f, "through the proxy {proxy}"),
        }
    }
}

/// A setting and the `no_proxy` list it applies with: the route to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPolicy {
    setting: ProxySetting,
    no_proxy: Vec<NoProxyRule>,
}

impl ProxyPolicy {
    pub fn new(setting: ProxySetting, no_proxy: Vec<NoProxyRule>) -> ProxyPolicy {
        ProxyPolicy { setting, no_proxy }
    }

    /// Always direct (tests, and `upstream_proxy = "none"`).
    pub fn direct() -> ProxyPolicy {
        ProxyPolicy::new(ProxySetting::Direct, Vec::new())
    }

    /// The policy from the configuration's `[proxy]` section.
    pub fn from_config(section: &crate::config::ProxySection) -> ProxyPolicy {
        ProxyPolicy::new(section.upstream_proxy.clone(), section.no_proxy.clone())
    }

    /// This policy with another setting (a listener's own), if any.
    pub fn with_setting(&self, setting: Option<&ProxySetting>) -> ProxyPolicy {
        match setting {
            None => self.clone(),
            Some(setting) => ProxyPolicy::new(setting.clone(), self.no_proxy.clone()),
        }
    }

    pub fn route(&self, host: &str) -> Route {
        self.route_with(None, host)
    }

    /// The route to `host` under `own` (a listener's setting) if given,
    /// else this policy's: what [`ProxyPolicy::with_setting`] then
    /// [`ProxyPolicy::route`] give, without copying the policy (this runs
    /// for every client connection).
    pub fn route_with(&self, own: Option<&ProxySetting>, host: &str) -> Route {
        if self.no_proxy.iter().any(|rule| rule.matches(host)) {
            return Route::Direct;
        }
        match own.unwrap_or(&self.setting) {
            ProxySetting::Direct => Route::Direct,
            ProxySetting::Server(proxy) => Route::Via(proxy.clone()),
            ProxySetting::System => system().route(host),
        }
    }
}

/// What the system says: a proxy for HTTPS and other TCP connections, and
/// its exceptions. Read once, at the first connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SystemProxy {
    pub(crate) proxy: Option<ProxyServer>,
    pub(crate) no_proxy: Vec<NoProxyRule>,
    /// Where it was found, for `doctor` ("HTTPS_PROXY", "WinHTTP", …).
    pub(crate) source: &'static str,
}

impl SystemProxy {
    /// A system proxy is for reaching the internet: this machine's own
    /// addresses (`localhost`, `127.0.0.0/8`, `::1`) always go direct, as
    /// the usual `NO_PROXY` holds them.
    fn route(&self, host: &str) -> Route {
        let Some(proxy) = &self.proxy else {
            return Route::Direct;
        };
        if is_loopback(host) || self.no_proxy.iter().any(|rule| rule.matches(host)) {
            return Route::Direct;
        }
        Route::Via(proxy.clone())
    }

    /// From environment variables (`lookup` is `std::env::var` outside
    /// tests): `HTTPS_PROXY`, then `ALL_PROXY` (either case), and
    /// `NO_PROXY`. Entries that do not parse are left out with a warning.
    pub(crate) fn from_env(lookup: impl Fn(&str) -> Option<String>) -> SystemProxy {
        let var = |name: &'static str| {
            lookup(name)
                .or_else(|| lookup(&name.to_ascii_lowercase()))
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        };
        let mut system = SystemProxy::default();
        if let Some((name, value)) = var("HTTPS_PROXY").or_else(|| var("ALL_PROXY")) {
            match ProxyServer::parse_lenient(value.trim()) {
                Ok(proxy) => {
                    system.proxy = Some(proxy);
                    system.source = name;
                }
                Err(e) => tracing::warn!("{name} is not used: {e}"),
            }
        }
        if let Some((_, value)) = var("NO_PROXY") {
            system.no_proxy = parse_list(&value, ',');
        }
        system
    }
}

/// A comma- or semicolon-separated exception list (`NO_PROXY`, Windows'
/// bypass lists); `<local>` (Windows: names without a dot) is left out.
pub(crate) fn parse_list(text: &str, separator: char) -> Vec<NoProxyRule> {
    text.split(separator)
        .map(str::trim)
        .filter(|e| !e.is_empty() && *e != "<local>")
        .filter_map(|e| match NoProxyRule::parse(e) {
            Ok(rule) => Some(rule),
            Err(err) => {
                tracing::warn!("a proxy exception is not used: {err}");
                None
            }
        })
        .collect()
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.to_canonical().is_loopback())
}

/// The system's proxy: the environment first (on every OS), then on
/// Windows the current user's Internet settings and WinHTTP's (what a
/// service sees), on macOS the system configuration's (System Settings →
/// Network → Proxies, as `SCDynamicStoreCopyProxies` gives them).
pub(crate) fn system() -> &'static SystemProxy {
    static SYSTEM: OnceLock<SystemProxy> = OnceLock::new();
    SYSTEM.get_or_init(|| {
        let from_env = SystemProxy::from_env(|name| std::env::var(name).ok());
        #[cfg(windows)]
        if from_env.proxy.is_none()
            && let Some(found) = windows::system_proxy()
        {
            return found;
        }
        #[cfg(target_os = "macos")]
        if from_env.proxy.is_none()
            && let Some(found) = mac_system_proxy(&macos::proxies())
        {
            return found;
        }
        from_env
    })
}

/// The keys of macOS' proxy settings (`SCDynamicStoreCopyProxies`) used
/// here, as plain values: `HTTPSEnable`/`HTTPSProxy`/`HTTPSPort`,
/// `SOCKSEnable`/`SOCKSProxy`/`SOCKSPort` and `ExceptionsList`.
#[cfg(any(target_os = "macos", test))]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MacProxies {
    pub(crate) https_enable: bool,
    pub(crate) https_proxy: Option<String>,
    pub(crate) https_port: Option<i64>,
    pub(crate) socks_enable: bool,
    pub(crate) socks_proxy: Option<String>,
    pub(crate) socks_port: Option<i64>,
    pub(crate) exceptions: Vec<String>,
}

/// macOS' proxy settings as a [`SystemProxy`]: the secure web (HTTPS)
/// proxy, spoken to with CONNECT, else the SOCKS proxy (SOCKS5, names
/// resolved by the proxy, as macOS' own clients do); `None` when neither
/// is on. An entry that does not parse (no port, a bad host) is left out
/// with a warning. Exceptions may abbreviate networks (`169.254/16`).
#[cfg(any(target_os = "macos", test))]
pub(crate) fn mac_system_proxy(settings: &MacProxies) -> Option<SystemProxy> {
    let entry = |enabled: bool,
                 host: &Option<String>,
                 port: Option<i64>,
                 scheme: &str,
                 source: &'static str| {
        let host = host.as_deref().map(str::trim).filter(|h| !h.is_empty());
        let host = host.filter(|_| enabled)?;
        let proxy = match port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) {
            Some(port) if host.contains(':') && !host.starts_with('[') => {
                ProxyServer::parse(&format!("{scheme}://[{host}]:{port}"))
            }
            Some(port) => ProxyServer::parse(&format!("{scheme}://{host}:{port}")),
            None => Err(format!("`{host}` has no port")),
        };
        match proxy {
            Ok(proxy) => Some((proxy, source)),
            Err(e) => {
                tracing::warn!("the {source} is not used: {e}");
                None
            }
        }
    };
    let (proxy, source) = entry(
        settings.https_enable,
        &settings.https_proxy,
        settings.https_port,
        "http",
        "macOS secure web proxy (HTTPS)",
    )
    .or_else(|| {
        entry(
            settings.socks_enable,
            &settings.socks_proxy,
            settings.socks_port,
            "socks5h",
            "macOS SOCKS proxy",
        )
    })?;
    let exceptions: Vec<String> = settings
        .exceptions
        .iter()
        .map(|e| expand_short_network(e.trim()))
        .collect();
    Some(SystemProxy {
        proxy: Some(proxy),
        no_proxy: parse_list(&exceptions.join(","), ','),
        source,
    })
}

/// `169.254/16` (macOS' way) as `169.254.0.0/16`; anything else as it is.
#[cfg(any(target_os = "macos", test))]
fn expand_short_network(entry: &str) -> String {
    let Some((address, bits)) = entry.split_once('/') else {
        return entry.to_owned();
    };
    let octets: Vec<&str> = address.split('.').collect();
    let numeric = octets.iter().all(|o| o.parse::<u8>().is_ok());
    if !numeric || octets.len() >= 4 || bits.parse::<u8>().is_err() {
        return entry.to_owned();
    }
    let mut full = octets;
    full.resize(4, "0");
    format!("{}/{bits}", full.join("."))
}

/// A Windows proxy list: `host:port`, or per scheme
/// (`http=a:3128;https=b:3128;socks=c:1080`): the `https` entry (what a
/// CONNECT to any port is for), else `http`, else a lone entry. `None`
/// when it names only other schemes.
#[cfg(any(windows, test))]
pub(crate) fn pick_server(list: &str) -> Option<Result<ProxyServer, String>> {
    let entries: Vec<&str> = list
        .split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let by_scheme = |scheme: &str| {
        entries.iter().find_map(|e| {
            e.split_once('=')
                .filter(|(s, _)| s.trim().eq_ignore_ascii_case(scheme))
                .map(|(_, v)| v.trim())
        })
    };
    let chosen = by_scheme("https")
        .or_else(|| by_scheme("http"))
        .or_else(|| entries.iter().copied().find(|e| !e.contains('=')))?;
    Some(ProxyServer::parse_lenient(chosen))
}

/// WinHTTP's setting (the registry value `WinHttpSettings`): little-endian
/// 32-bit words, the structure's version, a change counter and the flags
/// (`2`: a proxy is set), then the proxy list and the exception list, each
/// as a length and that many ASCII bytes. `None` when no proxy is set.
#[cfg(any(windows, test))]
pub(crate) fn winhttp_settings(blob: &[u8]) -> Option<(String, String)> {
    /// WINHTTP_ACCESS_TYPE_NAMED_PROXY's bit in the flags word.
    const PROXY_SET: u32 = 2;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(blob.get(at..at + 4)?.try_into().ok()?))
    };
    let text = |at: usize| -> Option<(String, usize)> {
        let len = word(at)? as usize;
        let bytes = blob.get(at + 4..at + 4 + len)?;
        Some((String::from_utf8_lossy(bytes).into_owned(), at + 4 + len))
    };
    if word(8)? & PROXY_SET == 0 {
        return None;
    }
    let (server, next) = text(12)?;
    let bypass = text(next).map(|(b, _)| b).unwrap_or_default();
    (!server.trim().is_empty()).then_some((server, bypass))
}

/// Why a connection through a proxy failed; every text names the proxy
/// (without its credentials) and, where it got that far, the target.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot connect to the proxy {proxy}: {cause}")]
    Unreachable {
        proxy: String,
        cause: std::io::Error,
    },
    #[error("the proxy {proxy} refused CONNECT to {target}: {status}{reason}")]
    Refused {
        proxy: String,
        target: String,
        status: u16,
        reason: String,
    },
    #[error("the proxy {proxy} asks for authentication to CONNECT to {target}: {advice}")]
    AuthRequired {
        proxy: String,
        target: String,
        advice: String,
    },
    #[error("the proxy {proxy} did not answer CONNECT to {target} as an HTTP proxy does: {reason}")]
    Protocol {
        proxy: String,
        target: String,
        reason: String,
    },
    #[error("the SOCKS5 proxy {proxy} could not connect to {target}: {cause}")]
    Socks {
        proxy: String,
        target: String,
        cause: tokio_socks::Error,
    },
    #[error(
        "cannot resolve {target} for the SOCKS5 proxy {proxy} (socks5h:// lets the proxy resolve it): {cause}"
    )]
    Resolve {
        proxy: String,
        target: String,
        cause: std::io::Error,
    },
}

/// A TCP connection to `host:port` along `route`; the caller bounds it
/// with its connect timeout, which so covers the proxy hop.
pub async fn connect(route: &Route, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    match route {
        Route::Direct => TcpStream::connect((host, port))
            .await
            .map_err(ConnectError::Direct),
        Route::Via(proxy) => via(proxy, host, port).await.map_err(ConnectError::Proxy),
    }
}

/// Either way's failure.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Direct(std::io::Error),
    #[error("{0}")]
    Proxy(ProxyError),
}

async fn via(proxy: &ProxyServer, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
    let shown = proxy.to_string();
    let target = authority(host, port);
    let mut stream = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|cause| ProxyError::Unreachable {
            proxy: shown.clone(),
            cause,
        })?;
    let _ = stream.set_nodelay(true);
    match proxy.kind {
        ProxyKind::HttpConnect => {
            http_connect(&mut stream, proxy, &target).await?;
            Ok(stream)
        }
        ProxyKind::Socks5 | ProxyKind::Socks5h => {
            let socks_error = |cause| ProxyError::Socks {
                proxy: shown.clone(),
                target: target.clone(),
                cause,
            };
            let to: tokio_socks::TargetAddr<'_> = if proxy.kind == ProxyKind::Socks5h {
                tokio_socks::TargetAddr::Domain(host.into(), port)
            } else {
                let addr = tokio::net::lookup_host((host, port))
                    .await
                    .and_then(|mut a| {
                        a.next().ok_or_else(|| {
                            std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                        })
                    })
                    .map_err(|cause| ProxyError::Resolve {
                        proxy: shown.clone(),
                        target: target.clone(),
                        cause,
                    })?;
                tokio_socks::TargetAddr::Ip(addr)
            };
            let stream = match &proxy.credentials {
                None => tokio_socks::tcp::Socks5Stream::connect_with_socket(stream, to).await,
                Some((user, password)) => {
                    tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(
                        stream,
                        to,
                        user,
                        password.expose_secret(),
                    )
                    .await
                }
            }
            .map_err(socks_error)?;
            Ok(stream.into_inner())
        }
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The CONNECT request for `target`, with Basic credentials if any.
pub(crate) fn connect_request(proxy: &ProxyServer, target: &str) -> Vec<u8> {
    let mut request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: xoauth2-proxy/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some((user, password)) = &proxy.credentials {
        let pair = zeroize::Zeroizing::new(format!("{user}:{}", password.expose_secret()));
        let encoded = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()),
        );
        request.push_str("Proxy-Authorization: Basic ");
        request.push_str(&encoded);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

async fn http_connect(
    stream: &mut TcpStream,
    proxy: &ProxyServer,
    target: &str,
) -> Result<(), ProxyError> {
    let request = zeroize::Zeroizing::new(connect_request(proxy, target));
    let io_error = |cause: std::io::Error| ProxyError::Protocol {
        proxy: proxy.to_string(),
        target: target.to_owned(),
        reason: cause.to_string(),
    };
    stream.write_all(&request).await.map_err(io_error)?;
    // Byte by byte up to the blank line: what follows it is the server's.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= MAX_CONNECT_ANSWER {
            return Err(ProxyError::Protocol {
                proxy: proxy.to_string(),
                target: target.to_owned(),
                reason: format!("an answer head longer than {MAX_CONNECT_ANSWER} bytes"),
            });
        }
        if stream.read(&mut byte).await.map_err(io_error)? == 0 {
            return Err(ProxyError::Protocol {
                proxy: proxy.to_string(),
                target: target.to_owned(),
                reason: "it closed the connection".into(),
            });
        }
        head.push(byte[0]);
    }
    judge_answer(&head, proxy, target)
}

/// What a complete CONNECT answer head says.
pub(crate) fn judge_answer(
    head: &[u8],
    proxy: &ProxyServer,
    target: &str,
) -> Result<(), ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_CONNECT_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    let parsed = answer.parse(head);
    let status = match (parsed, answer.code) {
        (Ok(httparse::Status::Complete(_)), Some(code)) => code,
        (Err(e), _) => {
            return Err(ProxyError::Protocol {
                proxy: proxy.to_string(),
                target: target.to_owned(),
                reason: e.to_string(),
            });
        }
        _ => {
            return Err(ProxyError::Protocol {
                proxy: proxy.to_string(),
                target: target.to_owned(),
                reason: "an incomplete answer".into(),
            });
        }
    };
    if (200..300).contains(&status) {
        return Ok(());
    }
    if status == 407 {
        let schemes: Vec<String> = answer
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("proxy-authenticate"))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .map(|v| printable(v.split([' ', ',']).next().unwrap_or("")))
            .filter(|s| !s.is_empty())
            .collect();
        let basic = schemes.iter().any(|s| s.eq_ignore_ascii_case("basic"));
        let advice = if basic && proxy.credentials.is_some() {
            "it refused the user name and password of upstream_proxy".to_owned()
        } else if basic {
            "put user:password@ before the host in upstream_proxy (Basic)".to_owned()
        } else {
            format!(
                "it offers only {}, and NTLM, Negotiate and Kerberos proxy authentication are \
                 not supported: ask for a proxy that accepts Basic, or run a local \
                 authenticating proxy (such as cntlm or px) and point upstream_proxy at it",
                if schemes.is_empty() {
                    "no scheme".to_owned()
                } else {
                    schemes.join(", ")
                }
            )
        };
        return Err(ProxyError::AuthRequired {
            proxy: proxy.to_string(),
            target: target.to_owned(),
            advice,
        });
    }
    let reason = answer.reason.map(printable).unwrap_or_default();
    Err(ProxyError::Refused {
        proxy: proxy.to_string(),
        target: target.to_owned(),
        status,
        reason: if reason.is_empty() {
            String::new()
        } else {
            format!(" {reason}")
        },
    })
}

/// A proxy's own words, as far as they are printable ASCII, bounded.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_SAID)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
