//! `xoauth2-proxy doctor`: checks what the proxy needs, one line per check,
//! and for each problem what to do about it. The configuration was already
//! loaded and validated; this reaches out: each upstream (name, TCP, TLS,
//! greeting), each token endpoint (any HTTP answer will do: nothing is
//! sent but a GET), and each account's tokens on disk.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::provider::endpoints;
use crate::auth::vault::{Entry, TokenStore};
use crate::config::{Config, Protocol};
use crate::upstream::Target;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Ok(String),
    /// What is wrong, and what to do.
    Problem(String),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Ok(m) => write!(f, "ok:      {m}"),
            Finding::Problem(m) => write!(f, "PROBLEM: {m}"),
        }
    }
}

/// Runs every check; `report` gets each finding as it is made.
pub async fn check(config: &Config, mut report: impl FnMut(&Finding)) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut note = |f: Finding| {
        report(&f);
        findings.push(f);
    };
    note(Finding::Ok(format!(
        "{}: {} listener(s), {} account(s)",
        config.source.display(),
        config.listeners.len(),
        config.accounts.len()
    )));
    let tls = match crate::tls::client_config(config.proxy.ca_file.as_deref()) {
        Ok(tls) => tls,
        Err(e) => {
            note(Finding::Problem(format!(
                "cannot set up TLS ({e:#}): check proxy.ca_file"
            )));
            return findings;
        }
    };
    let timeout = Duration::from_secs(config.proxy.connect_timeout_secs);
    for (i, l) in config.listeners.iter().enumerate() {
        let (host, port) = (l.upstream.host(), l.upstream.port());
        let what = format!(
            "listener[{i}] ({} on {}) → {}",
            l.protocol, l.listen, l.upstream
        );
        let resolved = tokio::net::lookup_host((host, port))
            .await
            .map(|mut addrs| addrs.next().is_some())
            .unwrap_or(false);
        if !resolved {
            note(Finding::Problem(format!(
                "{what}: cannot resolve {host}: check the name in listener[{i}].upstream and this machine's DNS"
            )));
            continue;
        }
        let target = Target {
            host: host.to_owned(),
            port,
            tls: tls.clone(),
            timeout,
        };
        let greeting = match l.protocol {
            Protocol::Imap => crate::upstream::imap::connect(&target, l.upstream_tls)
                .await
                .map(|_| ()),
            Protocol::Pop3 => crate::upstream::pop3::connect(&target, l.upstream_tls)
                .await
                .map(|_| ()),
            Protocol::Smtp => crate::upstream::smtp::connect(&target, l.upstream_tls)
                .await
                .map(|_| ()),
        };
        match greeting {
            Ok(()) => note(Finding::Ok(format!(
                "{what}: connected, TLS ({:?}) and greeting fine",
                l.upstream_tls
            ))),
            Err(e) => note(Finding::Problem(format!(
                "{what}: {e}: check that the server is reachable from here (firewall, proxy) and that \
                 upstream_tls matches the port (implicit for 993/995, starttls for 587/143/110)"
            ))),
        }
    }
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let store = TokenStore::new(&config.state_dir());
    for (i, a) in config.accounts.iter().enumerate() {
        let user = &a.username;
        let token_url = endpoints(a).token_url;
        match &http {
            Ok(http) => match http.get(&token_url).send().await {
                Ok(r) => note(Finding::Ok(format!(
                    "{user}: token endpoint {token_url} answers (HTTP {})",
                    r.status().as_u16()
                ))),
                Err(e) => note(Finding::Problem(format!(
                    "{user}: cannot reach the token endpoint {token_url} ({e}): check the network, \
                     and account[{i}].tenant / token_url"
                ))),
            },
            Err(e) => note(Finding::Problem(format!("cannot make an HTTP client: {e}"))),
        }
        if a.is_catch_all() {
            note(Finding::Ok(format!(
                "{user}: catch-all; each address signs in on its own \
                 (`xoauth2-proxy authorize name{user}` or the sign-in page)"
            )));
            continue;
        }
        if a.flow == crate::config::Flow::ClientCredentials {
            let http = match crate::auth::http::http_client(config) {
                Ok(http) => http,
                Err(e) => {
                    note(Finding::Problem(format!("cannot make an HTTP client: {e}")));
                    continue;
                }
            };
            match crate::auth::flows::client_credentials(a, &http).await {
                Ok(_) => note(Finding::Ok(format!(
                    "{user}: app-only; the token endpoint issued a token for the app's credential"
                ))),
                Err(e) => note(Finding::Problem(format!(
                    "{user}: app-only token request refused ({}): check account[{i}].client_id, \
                     client_secret / client_certificate, and the app's API permissions",
                    crate::auth::flows::describe(e)
                ))),
            }
            continue;
        }
        match store.load_entry(user) {
            Ok(None) => note(Finding::Problem(format!(
                "{user}: not signed in (no tokens in {}): run `xoauth2-proxy authorize {user}`",
                store.dir().display()
            ))),
            Ok(Some(Entry::Sealed(_))) if a.password_hash.is_some() => {
                note(Finding::Problem(format!(
                    "{user}: the tokens are sealed with a client's password, but the account has \
                     password_hash: run `xoauth2-proxy forget {user}` and `xoauth2-proxy authorize {user}`"
                )))
            }
            Ok(Some(Entry::Sealed(_))) => note(Finding::Ok(format!(
                "{user}: signed in; tokens sealed with the local password chosen at sign-in"
            ))),
            Ok(Some(Entry::Unsealed(tokens))) if tokens.refresh_token.is_none() => {
                note(Finding::Problem(format!(
                    "{user}: the stored sign-in has no refresh token: run `xoauth2-proxy authorize {user}` \
                     (with the offline_access scope)"
                )))
            }
            Ok(Some(Entry::Unsealed(_))) if a.password_hash.is_none() => {
                note(Finding::Problem(format!(
                    "{user}: the tokens were stored without a local password (by an older \
                     version); no login opens them: run `xoauth2-proxy authorize {user}` and choose \
                     the password there"
                )))
            }
            Ok(Some(Entry::Unsealed(tokens))) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let access = match tokens.expires_at {
                    Some(at) if at > now => {
                        format!("access token valid for {} min", (at - now) / 60)
                    }
                    _ => "access token refreshed at the next login".to_owned(),
                };
                note(Finding::Ok(format!(
                    "{user}: signed in (unattended account); {access}"
                )));
            }
            Err(e) => note(Finding::Problem(format!(
                "{user}: the token file cannot be used ({e}): run `xoauth2-proxy authorize {user}` \
                 to sign in again"
            ))),
        }
    }
    findings
}
