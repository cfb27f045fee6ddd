//! The TOML configuration: schema, defaults and validation.
//!
//! Key names are an interface (users' files and other tools rely on them).
//! Every error names the key and says what is wrong.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// How long a client may take from connecting to finishing its login. Long
/// enough for a person typing a password into a prompt, short enough that
/// idle half-open connections do not pile up.
pub const DEFAULT_PREAUTH_TIMEOUT_SECS: u64 = 60;
/// Concurrent client connections per listener. Office 365 allows few sessions
/// per mailbox; more than this from one machine is a runaway client.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Refresh an access token when less than this is left (a login must never
/// carry a token that expires while the server checks it).
pub const DEFAULT_REFRESH_MARGIN_SECS: u64 = 300;
/// TCP + TLS set-up to the upstream, and each HTTP request to a token endpoint.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 20;
/// Concurrent connections from one source address per listener reachable
/// from the network (on a loopback-only listener every client is the same
/// source, and `max_connections` is the limit). A mail
/// client opens a handful (Thunderbird up to 5 per account, Outlook a few
/// more); a burst beyond this from one address is a loop or an attack, and
/// it must not starve the other machines on a shared listener.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 32;
/// At shutdown, how long sessions get to finish on their own before the rest
/// are closed. Below the stop timeouts of service managers (Windows gives a
/// service about 20 s at system shutdown, launchd 20 s, systemd 90 s), so the
/// proxy closes its sessions itself instead of being killed mid-write.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Daily log files kept in `log_dir` (two weeks).
pub const DEFAULT_LOG_KEEP: usize = 14;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
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
}

/// The page's default address: loopback only, a port unlikely to be taken.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8089);

/// Where the local page listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AdminListen {
    Off,
    At(SocketAddr),
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
        }
    }
}

fn default_preauth_timeout() -> u64 {
    DEFAULT_PREAUTH_TIMEOUT_SECS
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
    /// `host:port` of the real server.
    pub upstream: String,
    pub upstream_tls: UpstreamTls,
    #[serde(default)]
    pub local_tls: LocalTls,
    /// Networks (`192.168.1.0/24`, or single addresses) that may connect.
    /// Required when `listen` is not a loopback address; empty means any
    /// (only allowed on loopback).
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// Accept passwords without TLS on a listener exposed to the network
    /// (devices that cannot do TLS 1.2, on a protected segment).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// SMTP only: relay every message as this account, without a client
    /// login (scanners that cannot authenticate). Needs `allow_from` and
    /// `allowed_senders`.
    pub fixed_account: Option<String>,
    /// With `fixed_account`: the only `MAIL FROM` addresses accepted.
    #[serde(default)]
    pub allowed_senders: Vec<String>,
}

impl ListenerConfig {
    /// The parsed `allow_from` networks (validated by [`Config::validate`]).
    pub fn allowed_networks(&self) -> Vec<IpNet> {
        self.allow_from
            .iter()
            .filter_map(|n| parse_network(n).ok())
            .collect()
    }

    /// Whether other machines are meant to reach this listener: a
    /// non-loopback address, or any `allow_from` (a loopback listener with
    /// one is reached through a port forward or a container bridge). Such a
    /// listener refuses passwords without TLS unless `allow_plaintext`.
    pub fn is_exposed(&self) -> bool {
        !self.listen.ip().is_loopback() || !self.allow_from.is_empty()
    }

    /// Whether a password may be taken on a connection, given whether the
    /// connection has TLS by now.
    pub fn accepts_password(&self, tls: bool) -> bool {
        tls || self.allow_plaintext || !self.is_exposed()
    }

    /// The upstream's host name (for SNI and certificate checks) and port.
    pub fn upstream_host_port(&self) -> Option<(&str, u16)> {
        let (host, port) = self.upstream.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse().ok()?;
        (!host.is_empty()).then_some((host, port))
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    AuthorizationCode,
    DeviceCode,
    ClientCredentials,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The mailbox address; also the user name the mail client logs in with.
    pub username: String,
    pub provider: ProviderKind,
    pub tenant: Option<String>,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    #[serde(default = "default_flow")]
    pub flow: Flow,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub device_code_url: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// An Argon2 PHC string (`xoauth2-proxy hash-password`). When set, the
    /// local password is checked against it and the tokens are not sealed
    /// with it (unattended accounts: scanners, fixed-account relays).
    pub password_hash: Option<SecretString>,
    /// A shared mailbox the signed-in user may open: sent as the `user=` of
    /// XOAUTH2 instead of `username` (which stays the login name, the
    /// account that signs in, and the name of its tokens).
    pub mailbox: Option<String>,
    /// office365 only: `global` (the default), `usgov` or `china`.
    pub cloud: Option<Cloud>,
    /// A certificate credential instead of `client_secret`: the app's
    /// certificate (PEM), as uploaded to its registration, with `client_key`.
    pub client_certificate: Option<PathBuf>,
    /// The RSA private key (PEM: PKCS#8 or PKCS#1, unencrypted) of `client_certificate`.
    pub client_key: Option<PathBuf>,
}

impl AccountConfig {
    /// The `user=` sent upstream: `mailbox` if set, else `username`.
    pub fn upstream_user(&self) -> &str {
        self.mailbox.as_deref().unwrap_or(&self.username)
    }

    /// The Microsoft cloud (`cloud`, default global).
    pub fn cloud(&self) -> Cloud {
        self.cloud.unwrap_or_default()
    }

    /// Whether `other` is this account with nothing changed that matters to
    /// its tokens or its password, so a reload may keep what it unlocked.
    /// (Every field is named: a new one must be decided on here.)
    pub fn same_as(&self, other: &AccountConfig) -> bool {
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
            scopes,
            password_hash,
            mailbox,
            cloud,
            client_certificate,
            client_key,
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
    }

    /// `username = "@contoso.com"`: every address at the domain, each with
    /// its own tokens and its own sign-in.
    pub fn is_catch_all(&self) -> bool {
        self.username.starts_with('@')
    }

    /// Whether this catch-all covers `address` (case-insensitive).
    pub fn covers(&self, address: &str) -> bool {
        self.is_catch_all()
            && address.len() > self.username.len()
            && valid_address(address)
            && address
                .get(address.len() - self.username.len()..)
                .is_some_and(|d| d.eq_ignore_ascii_case(&self.username))
    }

    /// This catch-all's settings for one of its addresses.
    pub fn for_address(&self, address: &str) -> AccountConfig {
        AccountConfig {
            username: address.to_owned(),
            ..self.clone()
        }
    }
}

fn default_flow() -> Flow {
    Flow::DeviceCode
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.source = path.to_owned();
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, key: String, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone(),
            key,
            message: message.into(),
        }
    }

    /// Checks what serde cannot: cross-field rules and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.proxy.preauth_timeout_secs == 0 {
            return Err(self.invalid("proxy.preauth_timeout_secs".into(), "must be at least 1"));
        }
        if self.proxy.max_connections == 0 {
            return Err(self.invalid("proxy.max_connections".into(), "must be at least 1"));
        }
        if self.proxy.connect_timeout_secs == 0 {
            return Err(self.invalid("proxy.connect_timeout_secs".into(), "must be at least 1"));
        }
        if self.proxy.max_connections_per_source == 0 {
            return Err(self.invalid(
                "proxy.max_connections_per_source".into(),
                "must be at least 1",
            ));
        }
        if self.proxy.log_keep == 0 {
            return Err(self.invalid("proxy.log_keep".into(), "must be at least 1"));
        }
        if let AdminListen::At(addr) = self.proxy.admin_listen
            && !addr.ip().is_loopback()
            && !self.proxy.admin_allow_remote
        {
            return Err(self.invalid(
                "proxy.admin_listen".into(),
                format!(
                    "{addr} is not a loopback address: the page signs accounts in, so other \
                     machines must not reach it; use 127.0.0.1, or set admin_allow_remote = true \
                     if this network is trusted"
                ),
            ));
        }
        match (&self.proxy.cert_file, &self.proxy.key_file) {
            (Some(_), None) => {
                return Err(self.invalid(
                    "proxy.key_file".into(),
                    "is missing: cert_file needs the private key that goes with it",
                ));
            }
            (None, Some(_)) => {
                return Err(self.invalid(
                    "proxy.cert_file".into(),
                    "is missing: key_file needs the certificate that goes with it",
                ));
            }
            _ => {}
        }
        for (name, file) in [
            ("cert_file", &self.proxy.cert_file),
            ("key_file", &self.proxy.key_file),
        ] {
            if let Some(file) = file
                && !file.is_file()
            {
                return Err(self.invalid(
                    format!("proxy.{name}"),
                    format!("{} does not exist or is not a file", file.display()),
                ));
            }
        }
        for (i, name) in self.proxy.cert_names.iter().enumerate() {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(self.invalid(
                    format!("proxy.cert_names[{i}]"),
                    format!("`{name}` is neither a DNS name nor an IP address"),
                ));
            }
        }
        if let Some(ca) = &self.proxy.ca_file
            && !ca.is_file()
        {
            return Err(self.invalid(
                "proxy.ca_file".into(),
                format!("{} does not exist or is not a file", ca.display()),
            ));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let key = |k: &str| format!("listener[{i}].{k}");
            if l.upstream_host_port().is_none() {
                return Err(self.invalid(
                    key("upstream"),
                    format!(
                        "`{}` is not host:port (for example outlook.office365.com:993)",
                        l.upstream
                    ),
                ));
            }
            self.validate_exposure(l, &key)?;
            if let Some(j) = self.listeners[..i]
                .iter()
                .position(|o| o.listen == l.listen && l.listen.port() != 0)
            {
                return Err(self.invalid(
                    key("listen"),
                    format!("{} is already used by listener[{j}]", l.listen),
                ));
            }
        }
        for (i, a) in self.accounts.iter().enumerate() {
            let key = |k: &str| format!("account[{i}].{k}");
            if a.is_catch_all() {
                if !valid_domain(&a.username[1..]) {
                    return Err(self.invalid(
                        key("username"),
                        format!(
                            "`{}` is not a catch-all (`@` and a domain, like `@contoso.com`)",
                            a.username
                        ),
                    ));
                }
                if a.mailbox.is_some() {
                    return Err(self.invalid(
                        key("mailbox"),
                        "cannot be used with a catch-all account: each address opens its own mailbox",
                    ));
                }
            } else if !valid_address(&a.username) {
                return Err(self.invalid(
                    key("username"),
                    format!("`{}` is not a mail address", a.username),
                ));
            }
            if let Some(mailbox) = &a.mailbox
                && !valid_address(mailbox)
            {
                return Err(self.invalid(
                    key("mailbox"),
                    format!("`{mailbox}` is not a mail address (the shared mailbox to open)"),
                ));
            }
            if a.client_id.trim().is_empty() {
                return Err(self.invalid(
                    key("client_id"),
                    "is empty: put the application (client) id of your Entra app here",
                ));
            }
            if let Some(j) = self.accounts[..i]
                .iter()
                .position(|o| o.username.eq_ignore_ascii_case(&a.username))
            {
                return Err(self.invalid(
                    key("username"),
                    format!("`{}` is already configured as account[{j}]", a.username),
                ));
            }
            if a.provider == ProviderKind::Custom {
                if a.token_url.is_none() {
                    return Err(
                        self.invalid(key("token_url"), "is required with provider = \"custom\"")
                    );
                }
                if a.scopes.is_none() {
                    return Err(
                        self.invalid(key("scopes"), "is required with provider = \"custom\"")
                    );
                }
            }
            for (name, url) in [
                ("authorize_url", &a.authorize_url),
                ("token_url", &a.token_url),
                ("device_code_url", &a.device_code_url),
            ] {
                if let Some(url) = url
                    && reqwest::Url::parse(url).is_err()
                {
                    return Err(self.invalid(key(name), format!("`{url}` is not a URL")));
                }
            }
            if let Some(phc) = &a.password_hash
                && let Err(why) =
                    crate::auth::password::validate_phc(secrecy::ExposeSecret::expose_secret(phc))
            {
                return Err(self.invalid(
                    key("password_hash"),
                    format!("{why}; make one with `xoauth2-proxy hash-password`"),
                ));
            }
            self.validate_flow(a, &key)?;
        }
        Ok(())
    }

    /// The provider presets, the flow and the app's credential of an account.
    fn validate_flow(
        &self,
        a: &AccountConfig,
        key: &dyn Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        if a.cloud.is_some() && a.provider != ProviderKind::Office365 {
            return Err(self.invalid(
                key("cloud"),
                "only applies with provider = \"office365\" (the Microsoft cloud of the tenant)",
            ));
        }
        if a.tenant.is_some() && a.provider == ProviderKind::Gmail {
            return Err(self.invalid(key("tenant"), "only applies with provider = \"office365\""));
        }
        match (&a.client_certificate, &a.client_key) {
            (Some(_), None) => {
                return Err(self.invalid(
                    key("client_key"),
                    "is missing: client_certificate needs the private key that goes with it",
                ));
            }
            (None, Some(_)) => {
                return Err(self.invalid(
                    key("client_certificate"),
                    "is missing: client_key needs the certificate that goes with it",
                ));
            }
            (Some(cert), Some(pem)) => {
                if a.client_secret.is_some() {
                    return Err(self.invalid(
                        key("client_secret"),
                        "set either client_secret or client_certificate and client_key, not both",
                    ));
                }
                if let Err(e) = crate::auth::assertion::ClientCertificate::load(cert, pem) {
                    let setting = e.setting();
                    let message = e.to_string();
                    let message = message
                        .strip_prefix(&format!("{setting}: "))
                        .unwrap_or(&message)
                        .to_owned();
                    return Err(self.invalid(key(setting), message));
                }
            }
            (None, None) => {}
        }
        match a.flow {
            Flow::DeviceCode => {}
            Flow::AuthorizationCode => {
                if a.provider == ProviderKind::Custom && a.authorize_url.is_none() {
                    return Err(self.invalid(
                        key("authorize_url"),
                        "is required with provider = \"custom\" and flow = \"authorization_code\"",
                    ));
                }
            }
            Flow::ClientCredentials => {
                if a.provider == ProviderKind::Gmail {
                    return Err(self.invalid(
                        key("flow"),
                        "\"client_credentials\" is not offered by Gmail; use \"authorization_code\" or \"device_code\"",
                    ));
                }
                if a.password_hash.is_none() {
                    return Err(self.invalid(
                        key("password_hash"),
                        "is required with flow = \"client_credentials\": there is no user sign-in \
                         whose tokens a client's password could seal, so the local password is \
                         checked against this hash; make one with `xoauth2-proxy hash-password`",
                    ));
                }
                if a.client_secret.is_none() && a.client_certificate.is_none() {
                    return Err(self.invalid(
                        key("client_secret"),
                        "is missing: flow = \"client_credentials\" needs the app's credential, \
                         client_secret or client_certificate and client_key",
                    ));
                }
            }
        }
        Ok(())
    }

    /// `allow_from`, plaintext on the network, and fixed-account relays.
    fn validate_exposure(
        &self,
        l: &ListenerConfig,
        key: &dyn Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        for (j, net) in l.allow_from.iter().enumerate() {
            if let Err(why) = parse_network(net) {
                return Err(self.invalid(key(&format!("allow_from[{j}]")), why));
            }
        }
        if !l.listen.ip().is_loopback() && l.allow_from.is_empty() {
            return Err(self.invalid(
                key("allow_from"),
                format!(
                    "{} is not a loopback address, so other machines can connect: list the \
                     networks that may, e.g. allow_from = [\"192.168.1.0/24\"] (or listen on 127.0.0.1)",
                    l.listen
                ),
            ));
        }
        if let Some(account) = &l.fixed_account {
            if l.protocol != Protocol::Smtp {
                return Err(self.invalid(
                    key("fixed_account"),
                    "is for SMTP listeners only (devices that send mail without logging in)",
                ));
            }
            if l.allow_from.is_empty() {
                return Err(self.invalid(
                    key("allow_from"),
                    "is required with fixed_account: anyone who can connect sends as that account, \
                     so list the devices' networks, e.g. allow_from = [\"192.168.1.0/24\"]",
                ));
            }
            match self.account(account) {
                None => {
                    return Err(self.invalid(
                        key("fixed_account"),
                        format!("`{account}` is not an [[account]] of this file"),
                    ));
                }
                Some(a) if a.password_hash.is_none() => {
                    return Err(self.invalid(
                        key("fixed_account"),
                        format!(
                            "`{account}` needs password_hash (an unattended account): no client \
                             logs in on this listener, so its tokens cannot be sealed with a client's \
                             password; make one with `xoauth2-proxy hash-password`"
                        ),
                    ));
                }
                Some(_) => {}
            }
            if l.allowed_senders.is_empty() {
                return Err(self.invalid(
                    key("allowed_senders"),
                    format!(
                        "is required with fixed_account: list the MAIL FROM addresses the \
                         devices use, e.g. allowed_senders = [\"{account}\"]"
                    ),
                ));
            }
            for (j, sender) in l.allowed_senders.iter().enumerate() {
                if !sender.contains('@') || sender.trim() != sender || sender.contains(['<', '>']) {
                    return Err(self.invalid(
                        key(&format!("allowed_senders[{j}]")),
                        format!("`{sender}` is not a mail address"),
                    ));
                }
            }
        } else if !l.allowed_senders.is_empty() {
            return Err(self.invalid(
                key("allowed_senders"),
                "only applies with fixed_account; client logins may send as their account",
            ));
        }
        if l.is_exposed()
            && l.local_tls == LocalTls::None
            && !l.allow_plaintext
            && l.fixed_account.is_none()
        {
            return Err(self.invalid(
                key("local_tls"),
                format!(
                    "{} is reachable from other machines and would take passwords in the clear: \
                     set local_tls = \"starttls\" or \"implicit\", or allow_plaintext = true for \
                     devices that cannot do TLS on a protected network",
                    l.listen
                ),
            ));
        }
        Ok(())
    }

    /// Whether any listener serves TLS to its clients.
    pub fn uses_local_tls(&self) -> bool {
        self.listeners.iter().any(|l| l.local_tls != LocalTls::None)
    }

    /// The directory for tokens and runtime state.
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
pub fn resolve_account<'a>(
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

/// A plain check of a mail address: one `@`, something on each side, no
/// spaces or angle brackets (it ends up in XOAUTH2 and in file names).
fn valid_address(address: &str) -> bool {
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
pub fn parse_network(text: &str) -> Result<IpNet, String> {
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
pub fn is_allowed(networks: &[IpNet], peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    networks.iter().any(|n| n.contains(&peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[proxy]
state_dir = "/tmp/x"

[[listener]]
protocol = "imap"
listen = "127.0.0.1:1143"
upstream = "outlook.office365.com:993"
upstream_tls = "implicit"

[[account]]
username = "alice@contoso.com"
provider = "office365"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("proxy.toml"))
    }

    #[test]
    fn networks_parse_strictly_and_match_mapped_addresses() {
        let lan = parse_network("192.168.1.0/24").unwrap();
        let one = parse_network(" 10.0.0.7 ").unwrap();
        let v6 = parse_network("fd00::/8").unwrap();
        assert_eq!(one.to_string(), "10.0.0.7/32");
        assert!(
            parse_network("192.168.1.1/24")
                .unwrap_err()
                .contains("192.168.1.0/24")
        );
        assert!(parse_network("192.168.1.0/33").is_err());
        assert!(parse_network("lan").is_err());
        let nets = [lan, one, v6];
        for (peer, allowed) in [
            ("192.168.1.77", true),
            ("::ffff:192.168.1.77", true),
            ("192.168.2.1", false),
            ("10.0.0.7", true),
            ("10.0.0.8", false),
            ("fd12::1", true),
            ("fe80::1", false),
        ] {
            let ip: IpAddr = peer.parse().unwrap();
            assert_eq!(is_allowed(&nets, ip), allowed, "{peer}");
        }
    }

    #[test]
    fn exposure_follows_the_address_and_allow_from() {
        let lan = GOOD.replace("127.0.0.1:1143", "192.168.1.10:1143").replace(
            "upstream_tls = \"implicit\"",
            "upstream_tls = \"implicit\"\nallow_from = [\"192.168.1.0/24\"]\nlocal_tls = \"starttls\"",
        );
        let l = &parse(&lan).unwrap().listeners[0];
        assert!(l.is_exposed());
        assert!(!l.accepts_password(false));
        assert!(l.accepts_password(true));
        let local = &parse(GOOD).unwrap().listeners[0];
        assert!(!local.is_exposed());
        assert!(local.accepts_password(false));
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.proxy.max_connections_per_source,
            DEFAULT_MAX_CONNECTIONS_PER_SOURCE
        );
        assert!(!c.uses_local_tls());
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listeners[0].protocol, Protocol::Imap);
        assert_eq!(c.listeners[0].local_tls, LocalTls::None);
        assert_eq!(
            c.listeners[0].upstream_host_port(),
            Some(("outlook.office365.com", 993))
        );
        assert_eq!(c.accounts[0].flow, Flow::DeviceCode);
        assert_eq!(c.proxy.preauth_timeout_secs, DEFAULT_PREAUTH_TIMEOUT_SECS);
        assert!(c.account("ALICE@contoso.com").is_some());
        assert_eq!(c.accounts[0].upstream_user(), "alice@contoso.com");
        let shared = GOOD.replace("tenant =", "mailbox = \"info@contoso.com\"\ntenant =");
        let c = parse(&shared).unwrap();
        assert_eq!(c.accounts[0].upstream_user(), "info@contoso.com");
        assert_eq!(c.accounts[0].username, "alice@contoso.com");
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("protocol = \"imap\"", "protocol = \"imapx\"", "imapx"),
            (
                "upstream = \"outlook.office365.com:993\"",
                "upstream = \"outlook.office365.com\"",
                "listener[0].upstream",
            ),
            (
                "listen = \"127.0.0.1:1143\"",
                "listen = \"localhost:1143\"",
                "listen",
            ),
            (
                "upstream_tls = \"implicit\"",
                "upstream_tls = \"ssl\"",
                "upstream_tls",
            ),
            (
                "username = \"alice@contoso.com\"",
                "username = \"alice\"",
                "account[0].username",
            ),
            (
                "client_id = \"00000000-0000-0000-0000-000000000000\"",
                "client_id = \" \"",
                "account[0].client_id",
            ),
            (
                "provider = \"office365\"",
                "provider = \"custom\"",
                "account[0].token_url",
            ),
            ("[proxy]", "[proxy]\nbogus = 1", "bogus"),
            (
                "tenant = \"contoso.onmicrosoft.com\"",
                "tenant = 5",
                "tenant",
            ),
            (
                "state_dir = \"/tmp/x\"",
                "state_dir = \"/tmp/x\"\npreauth_timeout_secs = 0",
                "preauth_timeout_secs",
            ),
            (
                "state_dir = \"/tmp/x\"",
                "ca_file = \"/nonexistent/ca.pem\"",
                "proxy.ca_file",
            ),
            (
                "tenant = \"contoso.onmicrosoft.com\"",
                "password_hash = \"hunter2\"",
                "account[0].password_hash",
            ),
            (
                "tenant = \"contoso.onmicrosoft.com\"",
                "mailbox = \"shared mailbox\"",
                "account[0].mailbox",
            ),
            (
                "tenant = \"contoso.onmicrosoft.com\"",
                "mailbox = \"<info@contoso.com>\"",
                "account[0].mailbox",
            ),
            (
                "tenant = \"contoso.onmicrosoft.com\"",
                "password_hash = \"$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\"",
                "account[0].password_hash",
            ),
        ];
        for (from, to, needle) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "case {to} did not apply");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "`{to}`: message `{err}` does not name `{needle}`"
            );
            assert!(err.starts_with("proxy.toml"), "{err}");
        }
    }

    #[test]
    fn catch_all_accounts_cover_their_domain_only() {
        let text = format!(
            "{GOOD}\n[[account]]\nusername = \"@Contoso.com\"\nprovider = \"office365\"\nclient_id = \"y\"\n"
        );
        let c = parse(&text).unwrap();
        // An account of its own wins over the catch-all.
        let alice = c.account("ALICE@contoso.com").unwrap();
        assert!(matches!(alice, Cow::Borrowed(_)));
        assert_eq!(alice.client_id, "00000000-0000-0000-0000-000000000000");
        let table: &[(&str, Option<&str>)] = &[
            ("bob@contoso.com", Some("bob@contoso.com")),
            ("Bob@CONTOSO.COM", Some("Bob@CONTOSO.COM")),
            ("bob@contoso.co", None),
            ("bob@contoso.com.evil.example", None),
            ("bob@sub.contoso.com", None),
            ("bob@evilcontoso.com", None),
            ("@contoso.com", None),
            ("contoso.com", None),
            ("a@b@contoso.com", None),
            ("bob <x>@contoso.com", None),
            ("", None),
        ];
        for (address, want) in table {
            let got = c.account(address);
            assert_eq!(
                got.as_ref().map(|a| a.username.as_str()),
                *want,
                "{address}"
            );
            if let Some(a) = got {
                assert_eq!(a.client_id, "y", "{address}");
            }
        }
    }

    #[test]
    fn bad_catch_alls_and_admin_addresses_name_the_key() {
        let catch_all = |user: &str, extra: &str| {
            format!(
                "{GOOD}\n[[account]]\nusername = \"{user}\"\nprovider = \"office365\"\nclient_id = \"y\"\n{extra}"
            )
        };
        for (text, want) in [
            (catch_all("@", ""), "account[1].username"),
            (catch_all("@ contoso.com", ""), "account[1].username"),
            (catch_all("@a@contoso.com", ""), "account[1].username"),
            (
                catch_all("@contoso.com", "mailbox = \"shared@contoso.com\"\n"),
                "account[1].mailbox",
            ),
            (
                GOOD.replace("state_dir", "admin_listen = \"0.0.0.0:8089\"\nstate_dir"),
                "proxy.admin_listen",
            ),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        let err = parse(&GOOD.replace("state_dir", "admin_listen = \"8089\"\nstate_dir"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin_listen") && err.contains("off"), "{err}");
        let c = parse(GOOD).unwrap();
        assert_eq!(c.proxy.admin_listen, AdminListen::At(DEFAULT_ADMIN_LISTEN));
        let c = parse(&GOOD.replace("state_dir", "admin_listen = \"off\"\nstate_dir")).unwrap();
        assert_eq!(c.proxy.admin_listen, AdminListen::Off);
        let c = parse(&GOOD.replace(
            "state_dir",
            "admin_listen = \"192.168.1.5:8089\"\nadmin_allow_remote = true\nstate_dir",
        ))
        .unwrap();
        assert_eq!(
            c.proxy.admin_listen,
            AdminListen::At("192.168.1.5:8089".parse().unwrap())
        );
    }

    #[test]
    fn duplicate_accounts_and_listeners_are_refused() {
        let twice = format!(
            "{GOOD}\n[[account]]\nusername = \"Alice@contoso.com\"\nprovider = \"office365\"\nclient_id = \"x\"\n"
        );
        assert!(
            parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("already configured")
        );
        let l = "\n[[listener]]\nprotocol = \"imap\"\nlisten = \"127.0.0.1:1143\"\nupstream = \"a:1\"\nupstream_tls = \"implicit\"\n";
        let twice = format!("{GOOD}{l}");
        assert!(
            parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("already used")
        );
    }

    #[test]
    fn password_hash_is_checked_and_never_echoed() {
        let phc = crate::auth::password::hash_password(b"pw").unwrap();
        let text = GOOD.replace("tenant =", &format!("password_hash = \"{phc}\"\ntenant ="));
        let c = parse(&text).unwrap();
        assert!(c.accounts[0].password_hash.is_some());
        assert!(!format!("{c:?}").contains(&phc));
        let bad = GOOD.replace("tenant =", "password_hash = \"hunter2\"\ntenant =");
        let err = parse(&bad).unwrap_err().to_string();
        assert!(
            err.contains("hash-password") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn client_secret_is_not_printed_by_debug() {
        let text = GOOD.replace("tenant =", "client_secret = \"s3cr3t-value\"\ntenant =");
        let c = parse(&text).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
    }
}
