//! `xoauth2-proxy init`: the first configuration. Finds the tenant from the
//! address's domain (OpenID discovery), writes an owner-only `proxy.toml`
//! and says what to type into the mail client. The prompts live in the
//! binary's `cli/init.rs`; everything here is callable from tests.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ListenerConfig, Protocol};

/// The discovery base URL; the env var [`DISCOVERY_ENV`] replaces it (tests only).
pub const DEFAULT_DISCOVERY_BASE: &str = "https://login.microsoftonline.com";
/// Test-only: another base URL for the OpenID discovery (a fake server).
pub const DISCOVERY_ENV: &str = "XOAUTH2_PROXY_DISCOVERY_URL";
/// The tenant used when discovery does not find one: any work or school account.
pub const FALLBACK_TENANT: &str = "organizations";
/// How long discovery may take before `init` goes on without it: long
/// enough for a slow link, short enough that an offline machine is not stuck.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// A tenant id is a GUID (36 characters); anything longer in `issuer` is not one.
const MAX_TENANT_LEN: usize = 64;

/// What the discovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// The tenant id.
    Found(String),
    /// The service answered, but knows no tenant for the domain.
    NotFound,
    /// No answer (offline, blocked, timed out); the reason, one line.
    Unreachable(String),
}

impl Discovery {
    /// The tenant to write, and a line saying how it was found.
    pub fn tenant(&self, domain: &str) -> (String, String) {
        match self {
            Discovery::Found(t) => (t.clone(), format!("Tenant of {domain}: {t}.")),
            Discovery::NotFound => (
                FALLBACK_TENANT.to_owned(),
                format!(
                    "No Microsoft 365 tenant was found for {domain}; using \
                     \"{FALLBACK_TENANT}\" (any work or school account)."
                ),
            ),
            Discovery::Unreachable(why) => (
                FALLBACK_TENANT.to_owned(),
                format!(
                    "Could not look up the tenant of {domain} ({why}); using \
                     \"{FALLBACK_TENANT}\" (any work or school account)."
                ),
            ),
        }
    }
}

/// The discovery base: [`DISCOVERY_ENV`] when set, else Microsoft's.
pub fn discovery_base() -> String {
    std::env::var(DISCOVERY_ENV).unwrap_or_else(|_| DEFAULT_DISCOVERY_BASE.to_owned())
}

/// Asks `base/<domain>/v2.0/.well-known/openid-configuration` for the tenant.
pub async fn discover_tenant(base: &str, domain: &str) -> Discovery {
    if domain.is_empty()
        || !domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Discovery::NotFound;
    }
    let url = format!(
        "{}/{domain}/v2.0/.well-known/openid-configuration",
        base.trim_end_matches('/')
    );
    let tls = match crate::tls::client_config(None) {
        Ok(t) => t,
        Err(e) => return Discovery::Unreachable(one_line(&e.to_string())),
    };
    let http = match crate::auth::http::HttpClient::new(tls, DISCOVERY_TIMEOUT) {
        Ok(h) => h,
        Err(e) => return Discovery::Unreachable(one_line(&e.to_string())),
    };
    let request = match http::Request::get(url).body(Vec::new()) {
        Ok(r) => r,
        Err(_) => return Discovery::NotFound,
    };
    match http.send(request).await {
        Ok(response) if response.status().is_success() => {
            tenant_from_document(response.body()).map_or(Discovery::NotFound, Discovery::Found)
        }
        Ok(_) => Discovery::NotFound,
        Err(e) => Discovery::Unreachable(one_line(&e.to_string())),
    }
}

/// The tenant id in an openid-configuration document: the path segment
/// before `/v2.0` of `issuer`, else of `token_endpoint`.
pub(crate) fn tenant_from_document(body: &[u8]) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["issuer", "token_endpoint"].iter().find_map(|key| {
        let url = oauth2::url::Url::parse(doc.get(key)?.as_str()?).ok()?;
        let tenant = url.path_segments()?.find(|s| !s.is_empty())?;
        let ok = !tenant.is_empty()
            && tenant.len() <= MAX_TENANT_LEN
            && tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && tenant != "{tenantid}";
        ok.then(|| tenant.to_owned())
    })
}

/// What goes into the first configuration.
#[derive(Debug, Clone)]
pub struct Answers {
    pub address: String,
    pub tenant: String,
    pub client_id: String,
    pub listeners: Vec<Protocol>,
}

/// The local port and Office 365 upstream of each protocol (as in proxy.toml.example).
fn listener_defaults(protocol: Protocol) -> (&'static str, &'static str, &'static str) {
    match protocol {
        Protocol::Imap => ("127.0.0.1:1143", "outlook.office365.com:993", "implicit"),
        Protocol::Pop3 => ("127.0.0.1:1110", "outlook.office365.com:995", "implicit"),
        Protocol::Smtp => ("127.0.0.1:1587", "smtp.office365.com:587", "starttls"),
    }
}

/// Parses `imap,smtp,pop3` (order kept, duplicates dropped).
pub fn parse_listeners(text: &str) -> Result<Vec<Protocol>, InitError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p = match part.to_ascii_lowercase().as_str() {
            "imap" => Protocol::Imap,
            "pop3" | "pop" => Protocol::Pop3,
            "smtp" => Protocol::Smtp,
            _ => return Err(InitError::Listener(one_line(part))),
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(InitError::Listener(String::new()));
    }
    Ok(out)
}

/// Why `init` stops; the caller tells `--force` from the rest.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} exists already; pass --force to replace it")]
    Exists(String),
    #[error("cannot write {path}: {cause}")]
    Write { path: String, cause: std::io::Error },
    #[error("the written configuration does not load: {0}")]
    Invalid(String),
    #[error("unknown listener {0:?}: use imap, pop3 and smtp, separated by commas")]
    Listener(String),
    #[error("{0}")]
    Answer(String),
}

/// Checks an answer before it goes into TOML: an address, a client id.
pub fn check_answers(a: &Answers) -> Result<(), InitError> {
    let (local, domain) = a
        .address
        .split_once('@')
        .ok_or_else(|| InitError::Answer("the address needs an @".into()))?;
    let fine = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '@')
    };
    if !fine(local) || !fine(domain) {
        return Err(InitError::Answer(format!(
            "{} is not a mail address",
            one_line(&a.address)
        )));
    }
    let id_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    if !id_ok(&a.client_id) {
        return Err(InitError::Answer(
            "the client id is the app's Application (client) ID, a GUID".into(),
        ));
    }
    if !id_ok(&a.tenant) {
        return Err(InitError::Answer(
            "the tenant is a domain, a tenant id or organizations".into(),
        ));
    }
    Ok(())
}

/// The configuration text for `answers`.
pub fn render(a: &Answers) -> String {
    let mut out = String::from(
        "# Written by `xoauth2-proxy init`; see proxy.toml.example for every key.\n\n[proxy]\n",
    );
    for p in &a.listeners {
        let (listen, upstream, tls) = listener_defaults(*p);
        out.push_str(&format!(
            "\n[[listener]]\nprotocol = \"{p}\"\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n\
             upstream_tls = \"{tls}\"\nlocal_tls = \"none\"\n"
        ));
    }
    out.push_str(&format!(
        "\n[[account]]\nusername = \"{}\"\nprovider = \"office365\"\ntenant = \"{}\"\n\
         client_id = \"{}\"\n# flow: unset = the browser where there is a desktop, else the device code.\n",
        a.address, a.tenant, a.client_id
    ));
    out
}

/// Writes `text` to `path` owner-only and loads it back with the
/// configuration loader (what `check-config` does). An existing file is
/// kept unless `force`; it is replaced in one rename, never half-written.
pub fn write(path: &Path, text: &str, force: bool) -> Result<Config, InitError> {
    let shown = path.display().to_string();
    if path.exists() && !force {
        return Err(InitError::Exists(shown));
    }
    let werr = |cause| InitError::Write {
        path: shown.clone(),
        cause,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        crate::fs_secure::private_dir(dir).map_err(werr)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".init-tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut file = crate::fs_secure::create_private_file(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e));
    }
    Config::load(path).map_err(|e| InitError::Invalid(e.to_string()))
}

/// What a mail client needs for one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub protocol: &'static str,
    pub server: String,
    pub port: u16,
    pub security: &'static str,
}

/// The settings to type into a mail client for `listener`.
pub fn client_settings(listener: &ListenerConfig) -> ClientSettings {
    let ip = listener.listen.ip();
    let server = if ip.is_unspecified() {
        "this machine's address".to_owned()
    } else {
        ip.to_string()
    };
    ClientSettings {
        protocol: match listener.protocol {
            Protocol::Imap => "IMAP",
            Protocol::Pop3 => "POP3",
            Protocol::Smtp => "SMTP",
        },
        server,
        port: listener.listen.port(),
        security: listener.client_security(),
    }
}

/// The mail client settings of every listener, as printed by `init`.
pub fn describe_settings(config: &Config) -> String {
    let mut out = String::from("Mail client settings (authentication: normal password):\n");
    for l in &config.listeners {
        let s = client_settings(l);
        out.push_str(&format!(
            "  {}: server {}, port {}, security {}, user name: your address\n",
            s.protocol, s.server, s.port, s.security
        ));
    }
    out
}

/// Text from elsewhere (an error, an answer) on one line, control characters escaped.
fn one_line(text: &str) -> String {
    crate::escape::log_text(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_from_issuer_or_token_endpoint() {
        let tid = "9188040d-6c67-4c5b-b112-36a304b66dad";
        let doc = format!(r#"{{"issuer":"https://login.microsoftonline.com/{tid}/v2.0"}}"#);
        assert_eq!(tenant_from_document(doc.as_bytes()).as_deref(), Some(tid));
        let doc = format!(
            r#"{{"token_endpoint":"https://login.microsoftonline.com/{tid}/oauth2/v2.0/token"}}"#
        );
        assert_eq!(tenant_from_document(doc.as_bytes()).as_deref(), Some(tid));
        assert_eq!(tenant_from_document(b"not json"), None);
        assert_eq!(
            tenant_from_document(br#"{"issuer":"https://x/{tenantid}/v2.0"}"#),
            None
        );
    }

    #[test]
    fn listeners_parse() {
        assert_eq!(
            parse_listeners("imap, smtp,imap").unwrap(),
            vec![Protocol::Imap, Protocol::Smtp]
        );
        assert!(parse_listeners("ftp").is_err());
        assert!(parse_listeners("").is_err());
    }
}
