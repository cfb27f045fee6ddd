//! The TOML configuration: schema and defaults (here), typed values checked
//! while the file is read (`values.rs`), the rules that span several keys,
//! one function per section (`validate.rs`).
//!
//! Key names are an interface (users' files and other tools rely on them).
//! Every error names the key and says what is wrong.

mod validate;
mod values;

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub(crate) use values::is_allowed;
mod token_store;
pub use token_store::{
    DEFAULT_TOKEN_STORE_NAME, REDIS_PASSWORD_ENV, RedisUrl, TokenStoreSetting, check_store_name,
};
pub use values::{
    HostPort, MailAddress, Network, NoProxyRule, ProxyKind, ProxyServer, ProxySetting,
};
pub use values::{MAX_KDF_ITERATIONS, MAX_KDF_LANES, MAX_KDF_MEMORY_KIB};
pub(crate) use values::{check_argon2_caps, validate_phc};

/// How long a client may take from connecting to finishing its login. Long
/// enough for a person typing a password into a prompt, short enough that
/// idle half-open connections do not pile up.
pub(crate) const DEFAULT_PREAUTH_TIMEOUT_SECS: u64 = 60;
/// Concurrent client connections per listener. Office 365 allows few sessions
/// per mailbox; more than this from one machine is a runaway client.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Refresh an access token when less than this is left (a login must never
/// carry a token that expires while the server checks it).
pub(crate) const DEFAULT_REFRESH_MARGIN_SECS: u64 = 300;
/// TCP + TLS set-up to the upstream, and each HTTP request to a token endpoint.
pub(crate) const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 20;
/// Concurrent connections from one source address per listener reachable
/// from the network (on a loopback-only listener every client is the same
/// source, and `max_connections` is the limit). A mail
/// client opens a handful (Thunderbird up to 5 per account, Outlook a few
/// more); a burst beyond this from one address is a loop or an attack, and
/// it must not starve the other machines on a shared listener.
pub(crate) const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 32;
/// At shutdown, how long sessions get to finish on their own before the rest
/// are closed. Below the stop timeouts of service managers (Windows gives a
/// service about 20 s at system shutdown, launchd 20 s, systemd 90 s), so the
/// proxy closes its sessions itself instead of being killed mid-write.
pub(crate) const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Message text the Graph listeners hold at once, across all their
/// sessions, in MiB (`graph_memory_mib`). A Graph listener takes messages
/// up to 35 MiB and holds each in memory until Graph has it: without a
/// bound, a few dozen clients sending large messages at once would take
/// gigabytes. 256 MiB is seven messages at the limit, or a hundred scans
/// of a few MiB, on any machine that runs the proxy for an office.
pub(crate) const DEFAULT_GRAPH_MEMORY_MIB: usize = 256;
/// Daily log files kept in `log_dir` (two weeks).
pub(crate) const DEFAULT_LOG_KEEP: usize = 14;
/// Recipients of one message on a fixed-account relay (`max_recipients`).
/// Exchange Online's own default limit per message is 500 (its
/// `MaxRecipientEnvelopeLimit`; a tenant may lower it): a relay must not let
/// a device on the LAN try for more than the mailbox may send anyway.
pub(crate) const DEFAULT_MAX_RECIPIENTS: usize = 500;
/// The most `max_recipients` may be: Exchange Online's highest setting.
pub(crate) const MAX_MAX_RECIPIENTS: usize = 1000;
/// How long the local page waits for a request's head (and its small form
/// body), and how long a kept-alive connection may sit idle. A browser
/// sends a request at once; ten seconds is generous on a loaded machine,
/// and short enough that another local user's half-sent requests give
/// their slots back quickly.
pub(crate) const DEFAULT_ADMIN_TIMEOUT_SECS: u64 = 10;
/// The most `admin_timeout_secs` may be: beyond half a minute a held
/// connection is no longer a slow browser but someone keeping a slot.
pub(crate) const MAX_ADMIN_TIMEOUT_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxySection,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default, rename = "account")]
    pub accounts: Vec<AccountConfig>,
    /// Where the file was read from, for messages; empty for in-memory configs.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// Tokens and runtime state. Default: the platform's data directory.
    pub state_dir: Option<PathBuf>,
    /// Extra PEM roots trusted for upstream servers and token endpoints.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_preauth_timeout")]
    pub preauth_timeout_secs: u64,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_refresh_margin")]
    pub refresh_margin_secs: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// The local TLS certificate chain (PEM) for every listener with
    /// `local_tls`; with `key_file`. Without both, one is generated under
    /// `state_dir/certs/`.
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Extra names (DNS names or IP addresses) for the generated certificate.
    #[serde(default)]
    pub cert_names: Vec<String>,
    /// Seconds sessions get to finish at shutdown before the rest are closed.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// Log to daily files in this directory instead of stderr (set by the
    /// service definitions; `--log-dir` overrides it).
    pub log_dir: Option<PathBuf>,
    /// How many daily log files `log_dir` keeps.
    #[serde(default = "default_log_keep")]
    pub log_keep: usize,
    /// The local sign-in and status page: an address, or `"off"`.
    #[serde(default)]
    pub admin_listen: AdminListen,
    /// Lets `admin_listen` be a non-loopback address. The page signs
    /// accounts in: only for a machine whose network is trusted.
    #[serde(default)]
    pub admin_allow_remote: bool,
    /// Seconds the page waits for a request's head and body, and keeps an
    /// idle connection (1 to 30).
    #[serde(default = "default_admin_timeout")]
    pub admin_timeout_secs: u64,
    /// How connections to the mail servers and the token endpoints reach
    /// the internet: `"system"` (default), `"none"`, or a proxy URL
    /// (`http://`, `socks5://`, `socks5h://`). A listener may set its own.
    #[serde(default = "default_upstream_proxy")]
    pub upstream_proxy: ProxySetting,
    /// Hosts, addresses and networks reached directly, never through
    /// `upstream_proxy` (with `"system"`, `NO_PROXY` counts as well).
    #[serde(default)]
    pub no_proxy: Vec<NoProxyRule>,
    /// Message text (MiB) that Graph listeners hold at once across their
    /// sessions; a message that would pass it gets `452 4.3.1` (try later).
    #[serde(default = "default_graph_memory_mib")]
    pub graph_memory_mib: usize,
    // --- metrics and log format (issue 18) ---
    /// Prometheus metrics at `/metrics` on this address; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Networks that may scrape `metrics_listen`; without any, loopback
    /// clients only (and `metrics_listen` must be a loopback address).
    #[serde(default)]
    pub metrics_allow_from: Vec<Network>,
    /// Account addresses as metric labels; by default a hash of each
    /// (whoever scrapes learns no addresses).
    #[serde(default)]
    pub metrics_account_labels: bool,
    /// `"text"` (default) or `"json"`: one JSON object per line, for log shippers.
    #[serde(default)]
    pub log_format: LogFormat,
    /// A program run on each notification (`sign_in_needed`, …): its path
    /// and arguments, never a shell line; the event is in its environment
    /// (`XP_EVENT`, …). Empty: a desktop notification where there is a
    /// desktop, the Event Log for the Windows service.
    pub notify_command: Option<Vec<String>>,
    /// Where the tokens live: `"files"` (default, under `state_dir`) or a
    /// Redis URL that several proxies share.
    #[serde(default)]
    pub token_store: TokenStoreSetting,
    /// The name of this configuration in the shared store's keys, so
    /// unrelated deployments can share one Redis. Default `"default"`.
    pub token_store_name: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message and the fields.
    Json,
}

/// Whether a client at `peer` may scrape the metrics: one of `allow_from`
/// (`metrics_allow_from`), or without any, this machine (loopback).
pub(crate) fn may_scrape(allow_from: &[Network], peer: IpAddr) -> bool {
    if allow_from.is_empty() {
        return peer.to_canonical().is_loopback();
    }
    let networks: Vec<IpNet> = allow_from.iter().map(Network::net).collect();
    is_allowed(&networks, peer)
}

fn default_upstream_proxy() -> ProxySetting {
    ProxySetting::System
}

/// The page's default address: loopback only, a port unlikely to be taken.
pub(crate) const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8089);

/// Where the local page listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AdminListen {
    Off,
    At(SocketAddr),
}

/// What to say when the page's port is taken: whoever holds it (another
/// program, possibly another user of this machine) answers at the page's
/// address, and a sign-in there would hand them the account. Said by the
/// proxy at start and by `doctor`.
pub fn squatted_page_warning(addr: SocketAddr) -> String {
    let url = if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        format!("http://localhost:{}/", addr.port())
    } else {
        format!("http://{addr}/")
    };
    format!(
        "THE SIGN-IN PAGE'S PORT IS TAKEN: another program, possibly another user of this \
         machine, listens on {addr}, so {url} is NOT this proxy's page: do not sign in there. \
         The proxy does without its page while the port is taken: choose a free port for \
         proxy.admin_listen (or find who holds this one) and restart it"
    )
}

impl Default for AdminListen {
    fn default() -> Self {
        AdminListen::At(DEFAULT_ADMIN_LISTEN)
    }
}

impl TryFrom<String> for AdminListen {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        if value.eq_ignore_ascii_case("off") {
            return Ok(AdminListen::Off);
        }
        value.parse().map(AdminListen::At).map_err(|_| {
            format!("`{value}` is neither an address with a port (127.0.0.1:8089) nor \"off\"")
        })
    }
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            state_dir: None,
            ca_file: None,
            preauth_timeout_secs: DEFAULT_PREAUTH_TIMEOUT_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            refresh_margin_secs: DEFAULT_REFRESH_MARGIN_SECS,
            connect_timeout_secs: DEFAULT_CONNECT_TIMEOUT_SECS,
            max_connections_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            cert_file: None,
            key_file: None,
            cert_names: Vec::new(),
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
            log_dir: None,
            log_keep: DEFAULT_LOG_KEEP,
            admin_listen: AdminListen::default(),
            admin_allow_remote: false,
            admin_timeout_secs: DEFAULT_ADMIN_TIMEOUT_SECS,
            upstream_proxy: ProxySetting::System,
            no_proxy: Vec::new(),
            graph_memory_mib: DEFAULT_GRAPH_MEMORY_MIB,
            metrics_listen: None,
            metrics_allow_from: Vec::new(),
            metrics_account_labels: false,
            log_format: LogFormat::Text,
            notify_command: None,
            token_store: TokenStoreSetting::Files,
            token_store_name: None,
        }
    }
}

fn default_preauth_timeout() -> u64 {
    DEFAULT_PREAUTH_TIMEOUT_SECS
}
fn default_graph_memory_mib() -> usize {
    DEFAULT_GRAPH_MEMORY_MIB
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_refresh_margin() -> u64 {
    DEFAULT_REFRESH_MARGIN_SECS
}
fn default_connect_timeout() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_SECS
}
fn default_max_connections_per_source() -> usize {
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE
}
fn default_shutdown_grace() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_SECS
}
fn default_log_keep() -> usize {
    DEFAULT_LOG_KEEP
}
fn default_admin_timeout() -> u64 {
    DEFAULT_ADMIN_TIMEOUT_SECS
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Imap,
    Pop3,
    Smtp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Smtp => "smtp",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    Implicit,
    Starttls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LocalTls {
    #[default]
    None,
    Implicit,
    Starttls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub protocol: Protocol,
    pub listen: SocketAddr,
    /// `host:port` of the real server (none for `backend = "graph"`).
    #[serde(default)]
    pub upstream: Option<HostPort>,
    #[serde(default)]
    pub upstream_tls: Option<UpstreamTls>,
    #[serde(default)]
    pub local_tls: LocalTls,
    /// Networks (`192.168.1.0/24`, or single addresses) that may connect.
    /// Required when `listen` is not a loopback address; empty means any
    /// (only allowed on loopback).
    #[serde(default)]
    pub allow_from: Vec<Network>,
    /// Accept passwords without TLS on a listener exposed to the network
    /// (devices that cannot do TLS 1.2, on a protected segment).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// SMTP only: relay every message as this account, without a client
    /// login (scanners that cannot authenticate). Needs `allow_from` and
    /// `allowed_senders`.
    pub fixed_account: Option<MailAddress>,
    /// With `fixed_account`: the only `MAIL FROM` addresses accepted.
    #[serde(default)]
    pub allowed_senders: Vec<MailAddress>,
    /// With `fixed_account`: recipients per message (`RCPT TO` beyond it is
    /// answered `452 4.5.3` by the proxy). Default [`DEFAULT_MAX_RECIPIENTS`].
    pub max_recipients: Option<usize>,
    /// This listener's own `upstream_proxy` (default: `[proxy]`'s).
    pub upstream_proxy: Option<ProxySetting>,
    /// SMTP only: where messages go. `smtp` (the default) relays the
    /// session to `upstream` byte for byte; `graph` takes each message
    /// itself and sends it with Microsoft Graph's `sendMail` (for tenants
    /// or mailboxes where SMTP AUTH is switched off).
    #[serde(default)]
    pub backend: Backend,
}

/// Where an SMTP listener's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The SMTP relay to `upstream` after XOAUTH2.
    #[default]
    Smtp,
    /// Microsoft Graph `sendMail` with the account's Graph token.
    Graph,
}

impl ListenerConfig {
    /// The `allow_from` networks.
    pub(crate) fn allowed_networks(&self) -> Vec<IpNet> {
        self.allow_from.iter().map(Network::net).collect()
    }

    /// Whether other machines are meant to reach this listener: a
    /// non-loopback address, or any `allow_from` (a loopback listener with
    /// one is reached through a port forward or a container bridge). Such a
    /// listener refuses passwords without TLS unless `allow_plaintext`.
    pub(crate) fn is_exposed(&self) -> bool {
        !self.listen.ip().is_loopback() || !self.allow_from.is_empty()
    }

    /// Whether a password may be taken on a connection, given whether the
    /// connection has TLS by now.
    pub(crate) fn accepts_password(&self, tls: bool) -> bool {
        tls || self.allow_plaintext || !self.is_exposed()
    }

    /// The connection security a mail client chooses for this listener:
    /// "SSL/TLS", "STARTTLS" or "none" (as `init` and the page word it).
    pub fn client_security(&self) -> &'static str {
        match self.local_tls {
            LocalTls::Implicit => "SSL/TLS",
            LocalTls::Starttls => "STARTTLS",
            LocalTls::None => "none",
        }
    }

    /// Recipients per message on a fixed-account relay.
    pub(crate) fn recipient_cap(&self) -> usize {
        self.max_recipients.unwrap_or(DEFAULT_MAX_RECIPIENTS)
    }

    /// The upstream's host name (for SNI and certificate checks) and port;
    /// always there (`upstream` is a [`HostPort`]), an `Option` for the
    /// callers written when it was a string.
    pub(crate) fn upstream_host_port(&self) -> Option<(&str, u16)> {
        self.upstream.as_ref().map(|u| (u.host(), u.port()))
    }

    /// How to reach the upstream: validated present for every listener
    /// that has one; a Graph listener never connects (any value does).
    pub(crate) fn upstream_tls_mode(&self) -> UpstreamTls {
        self.upstream_tls.unwrap_or(UpstreamTls::Implicit)
    }

    /// Where the listener's sessions go, for logs and the page:
    /// `host:port`, or `Microsoft Graph`.
    pub fn upstream_name(&self) -> String {
        match &self.upstream {
            Some(u) => u.to_string(),
            None => "Microsoft Graph".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Microsoft 365 / Exchange Online (in the cloud chosen by `cloud`).
    Office365,
    /// Google Workspace and Gmail.
    Gmail,
    /// Any other provider: `token_url` and `scopes` (and the URLs of the flow) are given.
    Custom,
}

/// The Microsoft cloud of an office365 account: its login and Exchange hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// login.microsoftonline.com, outlook.office365.com.
    #[default]
    Global,
    /// Microsoft 365 GCC High / DoD: login.microsoftonline.us, outlook.office365.us.
    Usgov,
    /// Operated by 21Vianet: login.chinacloudapi.cn, partner.outlook.cn.
    China,
}

impl Cloud {
    /// Microsoft Graph's endpoint in this cloud (GCC High's for `usgov`;
    /// DoD tenants set `graph_url = "https://dod-graph.microsoft.us"`).
    pub fn graph_url(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// Not set (or `flow = "auto"`): the browser when this machine has a
    /// desktop session to open one in, the device code otherwise
    /// (`auth::choice`). Configs written before it say `device_code`
    /// explicitly or relied on the old default; both still sign in.
    Auto,
    /// The browser on this machine; its answer comes back to a listener on
    /// localhost (`authorize --browser`).
    AuthorizationCode,
    /// The same request, signed in on any machine: the address the browser
    /// ends on is pasted back (`authorize --paste`).
    Paste,
    DeviceCode,
    ClientCredentials,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The mailbox address; also the user name the mail client logs in with.
    /// Or `@domain`: a catch-all.
    #[serde(deserialize_with = "values::account_name")]
    pub username: String,
    pub provider: ProviderKind,
    pub tenant: Option<String>,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    #[serde(default = "default_flow")]
    pub flow: Flow,
    #[serde(default, deserialize_with = "values::optional_web_url")]
    pub authorize_url: Option<String>,
    #[serde(default, deserialize_with = "values::optional_web_url")]
    pub token_url: Option<String>,
    #[serde(default, deserialize_with = "values::optional_web_url")]
    pub device_code_url: Option<String>,
    /// Where the browser and paste sign-ins send the browser back (the
    /// app registration must list it). Unset: `http://localhost:PORT/callback`
    /// for the browser (a free port), `http://localhost` for the paste.
    #[serde(default, deserialize_with = "values::optional_redirect_uri")]
    pub redirect_uri: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// An Argon2 PHC string (`xoauth2-proxy hash-password`). When set, the
    /// local password is checked against it and the tokens are not sealed
    /// with it (unattended accounts: scanners, fixed-account relays).
    pub password_hash: Option<SecretString>,
    /// A shared mailbox the signed-in user may open: sent as the `user=` of
    /// XOAUTH2 instead of `username` (which stays the login name, the
    /// account that signs in, and the name of its tokens).
    #[serde(default, deserialize_with = "values::optional_address")]
    pub mailbox: Option<String>,
    /// office365 only: `global` (the default), `usgov` or `china`.
    pub cloud: Option<Cloud>,
    /// A certificate credential instead of `client_secret`: the app's
    /// certificate (PEM), as uploaded to its registration, with `client_key`.
    pub client_certificate: Option<PathBuf>,
    /// The RSA private key (PEM: PKCS#8 or PKCS#1, unencrypted) of `client_certificate`.
    pub client_key: Option<PathBuf>,
    /// Whether a sign-in must prove that the account's own user signed in
    /// (the id_token's user is its address; default true). `false` only
    /// for a custom provider that returns no id_token.
    pub verify_identity: Option<bool>,
    /// Microsoft Graph's base URL for a `backend = "graph"` listener
    /// (default: the cloud's, see [`Cloud::graph_url`]); https, except on
    /// this machine.
    #[serde(default, deserialize_with = "values::optional_web_url")]
    pub graph_url: Option<String>,
    /// This account's own `upstream_proxy` for its HTTP requests (token
    /// endpoint, device code, Graph); default `[proxy]`'s. Its mail
    /// connections take their listener's way.
    #[serde(default)]
    pub upstream_proxy: Option<ProxySetting>,
    /// For an address under a catch-all: the catch-all's `@domain`.
    #[serde(skip)]
    pub(crate) catch_all: Option<String>,
}

impl AccountConfig {
    /// Whether a Graph listener can send for this account: a Microsoft 365
    /// account, or a custom provider given its own `graph_url` (a
    /// Microsoft-compatible endpoint). Google's tokens mean nothing to Graph.
    pub fn can_use_graph(&self) -> bool {
        match self.provider {
            ProviderKind::Office365 => true,
            ProviderKind::Custom => self.graph_url.is_some(),
            ProviderKind::Gmail => false,
        }
    }

    /// An office365 account with nothing but its address and client id set,
    /// for unit tests to fill in what they need.
    #[cfg(test)]
    pub(crate) fn for_tests(username: &str) -> AccountConfig {
        AccountConfig {
            username: username.into(),
            provider: ProviderKind::Office365,
            tenant: None,
            client_id: "id".into(),
            client_secret: None,
            flow: Flow::DeviceCode,
            authorize_url: None,
            token_url: None,
            device_code_url: None,
            redirect_uri: None,
            scopes: None,
            password_hash: None,
            mailbox: None,
            cloud: None,
            client_certificate: None,
            client_key: None,
            verify_identity: None,
            graph_url: None,
            upstream_proxy: None,
            catch_all: None,
        }
    }

    /// The `user=` sent upstream: `mailbox` if set, else `username`.
    pub fn upstream_user(&self) -> &str {
        self.mailbox.as_deref().unwrap_or(&self.username)
    }

    /// The Microsoft cloud (`cloud`, default global).
    pub fn cloud(&self) -> Cloud {
        self.cloud.unwrap_or_default()
    }

    /// Microsoft Graph's base URL for this account, without a trailing `/`.
    pub fn graph_url(&self) -> String {
        let url = self
            .graph_url
            .as_deref()
            .unwrap_or(self.cloud().graph_url());
        url.trim_end_matches('/').to_owned()
    }

    /// Whether `other` is this account with nothing changed that matters to
    /// its tokens or its password, so a reload may keep what it unlocked.
    /// (Every field is named: a new one must be decided on here.)
    pub(crate) fn same_as(&self, other: &AccountConfig) -> bool {
        let AccountConfig {
            username,
            provider,
            tenant,
            client_id,
            client_secret,
            flow,
            authorize_url,
            token_url,
            device_code_url,
            // Only where a new sign-in's browser is sent: the tokens and
            // the password of the last one stay good.
            redirect_uri: _,
            scopes,
            password_hash,
            mailbox,
            cloud,
            client_certificate,
            client_key,
            verify_identity,
            graph_url,
            upstream_proxy,
            catch_all,
        } = self;
        let secret_eq = |a: &Option<SecretString>, b: &Option<SecretString>| match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
            _ => false,
        };
        username.eq_ignore_ascii_case(&other.username)
            && *provider == other.provider
            && *tenant == other.tenant
            && *client_id == other.client_id
            && secret_eq(client_secret, &other.client_secret)
            && *flow == other.flow
            && *authorize_url == other.authorize_url
            && *token_url == other.token_url
            && *device_code_url == other.device_code_url
            && *scopes == other.scopes
            && secret_eq(password_hash, &other.password_hash)
            && *mailbox == other.mailbox
            && *cloud == other.cloud
            && *client_certificate == other.client_certificate
            && *client_key == other.client_key
            && *verify_identity == other.verify_identity
            && *graph_url == other.graph_url
            && *upstream_proxy == other.upstream_proxy
            && *catch_all == other.catch_all
    }

    /// Whether the browser's answer can come back to this machine: no
    /// `redirect_uri` (the default is on localhost), or an http one to
    /// localhost. Otherwise only the paste sign-in can take it.
    pub fn redirect_on_this_machine(&self) -> bool {
        self.redirect_uri
            .as_deref()
            .is_none_or(values::is_local_redirect)
    }

    /// Whether a sign-in's id_token must name this account's user (`verify_identity`, default true).
    pub fn verifies_identity(&self) -> bool {
        self.verify_identity.unwrap_or(true)
    }

    /// The `@domain` whose users may sign in for this account: a catch-all's
    /// own, or the catch-all's of an address under it.
    pub fn catch_all_domain(&self) -> Option<&str> {
        if self.is_catch_all() {
            return Some(&self.username);
        }
        self.catch_all.as_deref()
    }

    /// `username = "@contoso.com"`: every address at the domain, each with
    /// its own tokens and its own sign-in.
    pub(crate) fn is_catch_all(&self) -> bool {
        self.username.starts_with('@')
    }

    /// Whether this catch-all covers `address` (case-insensitive).
    pub(crate) fn covers(&self, address: &str) -> bool {
        self.is_catch_all()
            && address.len() > self.username.len()
            && values::valid_address(address)
            && address
                .get(address.len() - self.username.len()..)
                .is_some_and(|d| d.eq_ignore_ascii_case(&self.username))
    }

    /// This catch-all's settings for one of its addresses.
    pub(crate) fn for_address(&self, address: &str) -> AccountConfig {
        AccountConfig {
            username: address.to_owned(),
            catch_all: Some(self.username.clone()),
            ..self.clone()
        }
    }
}

fn default_flow() -> Flow {
    Flow::Auto
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse(&text, path)
    }

    /// Reads `text` (the contents of `path`): a value of the wrong shape
    /// is refused here, naming its key (`listener[0].upstream`) and line;
    /// then relative file names are taken from `path`'s folder and the
    /// rules across keys are checked ([`Config::validate`]).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        };
        let document = toml::Deserializer::parse(text).map_err(parse_error)?;
        let mut config: Config = serde_path_to_error::deserialize(document).map_err(|e| {
            let key = e.path().to_string();
            let e = e.into_inner();
            if key.is_empty() || key == "." {
                return parse_error(e);
            }
            let line = e.span().map(|span| {
                let before = &text.as_bytes()[..span.start.min(text.len())];
                before.iter().filter(|&&b| b == b'\n').count() + 1
            });
            ConfigError::Invalid {
                path: path.to_owned(),
                key,
                message: match line {
                    Some(line) => format!("{} (line {line})", e.message().trim_end()),
                    None => e.message().trim_end().to_owned(),
                },
            }
        })?;
        config.source = path.to_owned();
        config.resolve_relative_paths(path.parent().unwrap_or(Path::new("")));
        config.validate()?;
        Ok(config)
    }

    /// File names in the configuration are relative to its folder, so the
    /// same file works whatever the working directory (a service manager's
    /// is `/` or `C:\Windows\System32`).
    fn resolve_relative_paths(&mut self, base: &Path) {
        let resolve = |file: &mut Option<PathBuf>| {
            if let Some(file) = file
                && file.is_relative()
            {
                *file = base.join(&*file);
            }
        };
        resolve(&mut self.proxy.ca_file);
        resolve(&mut self.proxy.cert_file);
        resolve(&mut self.proxy.key_file);
        for account in &mut self.accounts {
            resolve(&mut account.client_certificate);
            resolve(&mut account.client_key);
        }
    }

    /// Whether any listener serves TLS to its clients.
    pub(crate) fn uses_local_tls(&self) -> bool {
        self.listeners.iter().any(|l| l.local_tls != LocalTls::None)
    }

    /// The directory for tokens and runtime state.
    /// The configuration's name in the shared token store's keys.
    pub fn token_store_name(&self) -> &str {
        self.proxy
            .token_store_name
            .as_deref()
            .unwrap_or(DEFAULT_TOKEN_STORE_NAME)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.proxy.state_dir.clone().unwrap_or_else(|| {
            dirs::data_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("xoauth2-proxy")
        })
    }

    /// The account a client (or `authorize`, `forget`) means by `username`:
    /// its own `[[account]]`, or the catch-all of its domain with the
    /// address filled in.
    pub fn account(&self, username: &str) -> Option<Cow<'_, AccountConfig>> {
        resolve_account(&self.accounts, username)
    }
}

/// [`Config::account`] over a list of accounts: an exact address wins over
/// its domain's catch-all.
pub(crate) fn resolve_account<'a>(
    accounts: &'a [AccountConfig],
    username: &str,
) -> Option<Cow<'a, AccountConfig>> {
    if let Some(exact) = accounts
        .iter()
        .find(|a| !a.is_catch_all() && a.username.eq_ignore_ascii_case(username))
    {
        return Some(Cow::Borrowed(exact));
    }
    accounts
        .iter()
        .find(|a| a.covers(username))
        .map(|a| Cow::Owned(a.for_address(username)))
}

#[cfg(test)]
mod tests;
