//! The TOML configuration: schema, defaults and validation.
//!
//! Key names are an interface (users' files and other tools rely on them).
//! Every error names the key and says what is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
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
}

impl ListenerConfig {
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
    Office365,
    Custom,
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
            if l.local_tls != LocalTls::None {
                return Err(self.invalid(
                    key("local_tls"),
                    "only \"none\" is supported by this version; put the listener on a loopback address",
                ));
            }
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
            if !a.username.contains('@') || a.username.trim() != a.username {
                return Err(self.invalid(
                    key("username"),
                    format!("`{}` is not a mail address", a.username),
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
            if a.flow != Flow::DeviceCode {
                return Err(self.invalid(
                    key("flow"),
                    "only \"device_code\" is supported by this version",
                ));
            }
        }
        Ok(())
    }

    /// The directory for tokens and runtime state.
    pub fn state_dir(&self) -> PathBuf {
        self.proxy.state_dir.clone().unwrap_or_else(|| {
            dirs::data_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("xoauth2-proxy")
        })
    }

    pub fn account(&self, username: &str) -> Option<&AccountConfig> {
        self.accounts
            .iter()
            .find(|a| a.username.eq_ignore_ascii_case(username))
    }
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
    fn client_secret_is_not_printed_by_debug() {
        let text = GOOD.replace("tenant =", "client_secret = \"s3cr3t-value\"\ntenant =");
        let c = parse(&text).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
    }
}
