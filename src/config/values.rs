//! Typed configuration values, checked while the file is read: a value that
//! deserialises is well-formed, and serde's error (with the key's path, see
//! [`super::Config::parse`]) says what is wrong with one that is not.

use std::fmt;
use std::net::IpAddr;
use std::ops::Deref;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// `host:port` of a real server (`upstream`): the host for DNS, SNI and the
/// certificate check, so it must be a DNS name or an IP address (an IPv6
/// address in brackets, `[2001:db8::1]:993`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl TryFrom<String> for HostPort {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let not_host_port =
            || format!("`{text}` is not host:port (for example outlook.office365.com:993)");
        let (host, port) = text.rsplit_once(':').ok_or_else(not_host_port)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| not_host_port())?;
        if host.is_empty() {
            return Err(not_host_port());
        }
        if port == 0 {
            return Err(format!("`{text}`: the port must be between 1 and 65535"));
        }
        if rustls_pki_types::ServerName::try_from(host).is_err() {
            return Err(format!(
                "`{text}`: `{host}` is neither a DNS name nor an IP address"
            ));
        }
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A network of `allow_from` (see [`parse_network`]).
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Network(IpNet);

impl Network {
    pub fn net(&self) -> IpNet {
        self.0
    }
}

impl TryFrom<String> for Network {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        parse_network(&text).map(Network)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// As written in the file (the log line of a listener prints the list).
impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A mail address (see [`valid_address`]): a `fixed_account`, an entry of
/// `allowed_senders`. Reads as the `str` it was written as.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MailAddress(String);

impl TryFrom<String> for MailAddress {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if valid_address(&text) {
            Ok(MailAddress(text))
        } else {
            Err(format!("`{text}` is not a mail address"))
        }
    }
}

impl Deref for MailAddress {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for MailAddress {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// The account fields below stay `String`s (other modules and their tests
// build `AccountConfig` values by hand); these functions give them the same
// check at deserialisation that the types above give theirs.

/// `username`: a mail address, or a catch-all (`@` and a domain).
pub(super) fn account_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    match name.strip_prefix('@') {
        Some(domain) if !valid_domain(domain) => Err(serde::de::Error::custom(format!(
            "`{name}` is not a catch-all (`@` and a domain, like `@contoso.com`)"
        ))),
        None if !valid_address(&name) => Err(serde::de::Error::custom(format!(
            "`{name}` is not a mail address"
        ))),
        _ => Ok(name),
    }
}

/// `mailbox`: the address of the shared mailbox to open.
pub(super) fn optional_address<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let address = String::deserialize(d)?;
    if valid_address(&address) {
        Ok(Some(address))
    } else {
        Err(serde::de::Error::custom(format!(
            "`{address}` is not a mail address (the shared mailbox to open)"
        )))
    }
}

/// `authorize_url`, `token_url`, `device_code_url`: absolute http(s) URLs
/// (the HTTP client and the browser can use no other scheme); that http is
/// only for this machine is [`require_https_off_loopback`]'s rule.
pub(super) fn optional_web_url<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    match reqwest::Url::parse(&text) {
        Ok(url) if matches!(url.scheme(), "https" | "http") => Ok(Some(text)),
        Ok(url) => Err(serde::de::Error::custom(format!(
            "`{text}` is a {}: URL; endpoints are https:// (or http://) URLs",
            url.scheme()
        ))),
        Err(_) => Err(serde::de::Error::custom(format!("`{text}` is not a URL"))),
    }
}

/// `redirect_uri`: where the provider sends the browser back with the
/// authorization code. An absolute `https://` URL anywhere (the answer is
/// then pasted back, `authorize --paste`), or plain `http://` only to this
/// machine (`localhost`, `127.0.0.1` or `[::1]`, any port and path), as
/// Entra and Google accept for apps on a desktop: a code sent in the clear
/// to another host could be read on the way. No user name, `?query` (the
/// provider appends `code` and `state`; a query of our own could be
/// confused with them) or `#fragment` (RFC 6749 §3.1.2 forbids one).
pub(super) fn optional_redirect_uri<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    check_redirect_uri(&text).map_err(serde::de::Error::custom)?;
    Ok(Some(text))
}

/// The rule of [`optional_redirect_uri`], as a message naming the value.
pub(crate) fn check_redirect_uri(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|_| {
        format!(
            "`{text}` is not a URL; write http://localhost[:PORT][/path] or an https:// address"
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "`{text}` is a {}: URL; a redirect URI is http://localhost[:PORT][/path] or an \
             https:// address",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{text}` carries a user name; remove the part before `@`"
        ));
    }
    if url.query().is_some() {
        return Err(format!(
            "`{text}` has a ?query: the provider adds the answer's code and state there; \
             remove it"
        ));
    }
    if url.fragment().is_some() {
        return Err(format!(
            "`{text}` has a #fragment, which a redirect URI may not have; remove it"
        ));
    }
    if url.scheme() == "http" && !is_loopback_host(&url) {
        return Err(format!(
            "`{text}` is plain http to another machine: the authorization code would cross \
             the network unencrypted; use http://localhost[:PORT][/path] (or 127.0.0.1, \
             [::1]) or an https:// address"
        ));
    }
    Ok(())
}

/// Whether `text` is a redirect URI this machine can serve itself: plain
/// http to `localhost`, `127.0.0.1` or `[::1]` (what `authorize --browser`
/// listens on). Anything else is answered elsewhere and pasted back.
pub(crate) fn is_local_redirect(text: &str) -> bool {
    reqwest::Url::parse(text).is_ok_and(|url| url.scheme() == "http" && is_loopback_host(&url))
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    // The URL parser writes hosts in one form: lower case, IPv4 as four
    // decimal numbers (`127.1` is `127.0.0.1`), IPv6 compressed in brackets.
    matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
}

/// An endpoint gets client secrets, authorization codes and refresh tokens,
/// and sends back the tokens that open a mailbox: over plain http anyone on
/// the path (an allowed LAN host, a Wi-Fi) could read or change them. So
/// `https`, except on this machine (127.0.0.0/8, ::1, `localhost`), where a
/// test provider or a local relay needs no certificate.
pub(crate) fn require_https_off_loopback(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|_| format!("`{text}` is not a URL"))?;
    if url.scheme() == "https" {
        return Ok(());
    }
    let host = url.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match bare.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if url.scheme() == "http" && loopback {
        return Ok(());
    }
    Err(format!(
        "`{text}` is not https: tokens and secrets would cross the network unencrypted; \
         use an https:// URL (plain http:// is accepted only for 127.0.0.1, ::1 or localhost)"
    ))
}

/// A plain check of a mail address: one `@`, something on each side, no
/// spaces or angle brackets (it ends up in XOAUTH2 and in file names).
pub(super) fn valid_address(address: &str) -> bool {
    match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && valid_domain(domain)
                && !address.contains(['<', '>', ' ', '\t', '\r', '\n'])
                && address.trim() == address
        }
        None => false,
    }
}

fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && !domain.contains(['@', '<', '>', ' ', '\t', '\r', '\n', '/', '\\'])
        && domain.trim() == domain
}

/// `192.168.1.0/24`, `fd00::/8`, or a single address (a /32 or /128).
/// Host bits must be zero, so a typo cannot silently widen the network.
pub(crate) fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = text
        .parse()
        .map_err(|_| format!("`{text}` is not a network (like 192.168.1.0/24) or an address"))?;
    if net.trunc() != net {
        return Err(format!(
            "`{text}` has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Whether `peer` is inside one of `networks` (an IPv4 peer on a dual-stack
/// socket arrives as `::ffff:a.b.c.d` and is compared as IPv4).
pub(crate) fn is_allowed(networks: &[IpNet], peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    networks.iter().any(|n| n.contains(&peer))
}

/// The most memory (KiB) an Argon2 run may ask for, whatever a file says
/// (a `password_hash` in the configuration, the parameters stored beside a
/// seal): 256 MiB, thirteen times what this build uses and above RFC 9106's
/// memory-constrained recommendation (64 MiB), so stronger settings still
/// work, while a hostile file cannot make each login's first check take
/// gigabytes (several accounts may unlock at once).
pub const MAX_KDF_MEMORY_KIB: u32 = 256 * 1024;
/// The most passes over the memory: ten passes over the largest memory
/// allowed take a few seconds; a hostile `t` would take minutes per login.
pub const MAX_KDF_ITERATIONS: u32 = 10;
/// The most lanes: this build computes lanes one after another, and no
/// recommendation asks for more than a handful; a huge `p` only inflates
/// the minimum memory.
pub const MAX_KDF_LANES: u32 = 8;
/// Argon2 costs within `MAX_KDF_MEMORY_KIB`, `MAX_KDF_ITERATIONS` and
/// `MAX_KDF_LANES`, checked before any memory is taken.
pub(crate) fn check_argon2_caps(
    memory_kib: u32,
    iterations: u32,
    lanes: u32,
) -> Result<(), String> {
    let over = |what: &str, value: u32, max: u32| {
        format!(
            "Argon2 {what} {value} is above this proxy's limit of {max}: such a cost would make \
             every first login take minutes or gigabytes (a password_hash: make a new one \
             with `xoauth2-proxy hash-password`; stored tokens: sign in again)"
        )
    };
    if memory_kib > MAX_KDF_MEMORY_KIB {
        return Err(over("memory (m, KiB)", memory_kib, MAX_KDF_MEMORY_KIB));
    }
    if iterations > MAX_KDF_ITERATIONS {
        return Err(over("passes (t)", iterations, MAX_KDF_ITERATIONS));
    }
    if lanes > MAX_KDF_LANES {
        return Err(over("lanes (p)", lanes, MAX_KDF_LANES));
    }
    Ok(())
}

/// Checks that `phc` is an Argon2 PHC string this build can verify against;
/// the error says what is wrong with it, never echoing it.
pub(crate) fn validate_phc(phc: &str) -> Result<(), String> {
    let hash = argon2::password_hash::PasswordHash::new(phc)
        .map_err(|e| format!("is not a PHC string ({e})"))?;
    if argon2::Algorithm::try_from(hash.algorithm).is_err() {
        return Err(format!(
            "uses {}, not Argon2 (argon2id, argon2i or argon2d)",
            hash.algorithm
        ));
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("has no salt or no hash part".into());
    }
    let params = argon2::Params::try_from(&hash)
        .map_err(|e| format!("has unusable Argon2 parameters ({e})"))?;
    check_argon2_caps(params.m_cost(), params.t_cost(), params.p_cost())
}

/// `upstream_proxy`: how connections to the mail servers and the token
/// endpoints reach the internet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ProxySetting {
    /// `"system"`: the environment (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`)
    /// and, on Windows, the WinHTTP and Internet settings.
    System,
    /// `"none"`: always direct.
    Direct,
    /// A proxy server of the configuration.
    Server(ProxyServer),
}

impl TryFrom<String> for ProxySetting {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "system" => Ok(ProxySetting::System),
            "none" => Ok(ProxySetting::Direct),
            _ => ProxyServer::parse(&text).map(ProxySetting::Server),
        }
    }
}

/// How a [`ProxyServer`] is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// HTTP CONNECT (`http://`), Basic authentication.
    HttpConnect,
    /// SOCKS5 (`socks5://`): names resolved here, the proxy gets addresses.
    Socks5,
    /// SOCKS5 (`socks5h://`): the proxy resolves the names.
    Socks5h,
}

impl ProxyKind {
    pub fn scheme(self) -> &'static str {
        match self {
            ProxyKind::HttpConnect => "http",
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Socks5h => "socks5h",
        }
    }
}

/// A proxy server: `http://[user:password@]host:port`,
/// `socks5://…` or `socks5h://…`. Shown (logs, errors, `doctor`) without
/// its credentials.
#[derive(Clone)]
pub struct ProxyServer {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    /// The user name and password, percent-decoded.
    pub credentials: Option<(String, secrecy::SecretString)>,
}

impl ProxyServer {
    /// A proxy value of the environment or of Windows' settings: without a
    /// scheme (`proxy.corp:3128`) it is HTTP CONNECT, as curl reads it.
    pub fn parse_lenient(text: &str) -> Result<ProxyServer, String> {
        if text.contains("://") {
            ProxyServer::parse(text)
        } else {
            ProxyServer::parse(&format!("http://{text}"))
        }
    }

    /// A proxy URL of the configuration, its scheme required (so that a
    /// misspelt `"none"` is not taken for a proxy host).
    pub fn parse(text: &str) -> Result<ProxyServer, String> {
        let with_scheme = text.to_owned();
        // The credentials are never repeated in an error.
        let shown = || match url::Url::parse(&with_scheme) {
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                format!("{}://…@{}", u.scheme(), u.host_str().unwrap_or(""))
            }
            _ => text.to_owned(),
        };
        let not_proxy = || {
            format!(
                "`{}` is not a proxy: use \"system\", \"none\", http://host:port, \
                 socks5://host:port or socks5h://host:port (user:password@ before the host)",
                shown()
            )
        };
        if !text.contains("://") {
            return Err(not_proxy());
        }
        let url = url::Url::parse(&with_scheme).map_err(|_| not_proxy())?;
        let kind = match url.scheme() {
            "http" => ProxyKind::HttpConnect,
            "socks5" => ProxyKind::Socks5,
            "socks5h" => ProxyKind::Socks5h,
            "https" => {
                return Err(format!(
                    "`{}`: a proxy spoken to over TLS (https://) is not supported; \
                     the mail and token connections inside stay TLS end to end with http://",
                    shown()
                ));
            }
            _ => return Err(not_proxy()),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(not_proxy()),
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(not_proxy());
        }
        let port = match (url.port(), kind) {
            (Some(p), _) => p,
            (None, ProxyKind::HttpConnect) => 80,
            // The SOCKS port of RFC 1928.
            (None, _) => 1080,
        };
        if port == 0 {
            return Err(not_proxy());
        }
        let decode = |s: &str| {
            percent_decode(s)
                .ok_or_else(|| format!("`{}`: the user or password is not UTF-8", shown()))
        };
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, password) => Some((
                decode(user)?,
                secrecy::SecretString::from(decode(password.unwrap_or(""))?),
            )),
        };
        Ok(ProxyServer {
            kind,
            host,
            port,
            credentials,
        })
    }

    /// `host:port`, an IPv6 address in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn percent_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

impl PartialEq for ProxyServer {
    fn eq(&self, other: &Self) -> bool {
        use secrecy::ExposeSecret as _;
        self.kind == other.kind
            && self.host == other.host
            && self.port == other.port
            && match (&self.credentials, &other.credentials) {
                (None, None) => true,
                (Some((u, p)), Some((v, q))) => u == v && p.expose_secret() == q.expose_secret(),
                _ => false,
            }
    }
}

impl Eq for ProxyServer {}

/// `socks5://proxy.corp:1080`, never the credentials.
impl fmt::Display for ProxyServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.kind.scheme(), self.authority())
    }
}

impl fmt::Debug for ProxyServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        if self.credentials.is_some() {
            f.write_str(" (with credentials)")?;
        }
        Ok(())
    }
}

/// An entry of `no_proxy` (and of `NO_PROXY`): `*` (everything), an
/// address or network (`10.0.0.0/8`), or a host name that also covers its
/// subdomains (`corp.example` and `.corp.example` both match
/// `mail.corp.example`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum NoProxyRule {
    All,
    Network(IpNet),
    Domain(String),
}

impl NoProxyRule {
    pub fn parse(text: &str) -> Result<NoProxyRule, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(NoProxyRule::All);
        }
        if let Ok(net) = parse_network(text) {
            return Ok(NoProxyRule::Network(net));
        }
        // `host:port` entries (as some NO_PROXY values carry) match the host.
        let host = match text.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.contains(':') => h,
            _ => text,
        };
        let domain = host.trim_start_matches("*.").trim_start_matches('.');
        if domain.is_empty() || rustls_pki_types::ServerName::try_from(domain).is_err() {
            return Err(format!(
                "`{text}` is not a host name, an address or a network (no_proxy)"
            ));
        }
        Ok(NoProxyRule::Domain(domain.to_ascii_lowercase()))
    }

    /// Whether a connection to `host` goes direct under this rule.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match self {
            NoProxyRule::All => true,
            NoProxyRule::Network(net) => host.parse::<IpAddr>().is_ok_and(|a| net.contains(&a)),
            NoProxyRule::Domain(d) => {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                host == *d
                    || host
                        .strip_suffix(d.as_str())
                        .is_some_and(|rest| rest.ends_with('.'))
            }
        }
    }
}

impl TryFrom<String> for NoProxyRule {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        NoProxyRule::parse(&text)
    }
}
