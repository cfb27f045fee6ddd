//! `xoauth2-proxy doctor`: checks what the proxy needs, one line per check,
//! and for each problem what to do about it. The configuration was already
//! loaded and validated; this reaches out: each upstream (name, TCP, TLS,
//! greeting), each token endpoint (any HTTP answer will do: nothing is
//! sent but a GET), each account's tokens on disk, and who else can read
//! the folders and files that hold tokens, the local TLS key and the logs.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::provider::endpoints;
use crate::auth::vault::{Entry, TokenStore};
use crate::config::{AdminListen, Config, Protocol};
use crate::net::proxy::Route;
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

/// How long the page's port is given to answer like the page.
const PAGE_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether `admin_listen` is free, or held by what answers like this
/// proxy's page; anything else holds the page's address and would take the
/// sign-ins of whoever opens it.
async fn page_port(addr: std::net::SocketAddr, http: &reqwest::Client) -> Finding {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => {
            return Finding::Ok(format!(
                "the sign-in page's port {addr} is free; the proxy serves its page there"
            ));
        }
        Err(e) if e.kind() != std::io::ErrorKind::AddrInUse => {
            return Finding::Problem(format!(
                "cannot listen on {addr} for the sign-in page ({e}): check proxy.admin_listen"
            ));
        }
        Err(_) => {}
    }
    let squatted = crate::config::squatted_page_warning(addr);
    if let Some(owner) = listening_owner(addr.port())
        && owner != own_uid()
    {
        return Finding::Problem(format!(
            "{squatted}. The port belongs to user id {owner}, not to the user running doctor \
             (if that is the proxy's service account, this is its page after all)"
        ));
    }
    let url = format!("http://127.0.0.1:{}/", addr.port());
    let answer = tokio::time::timeout(
        PAGE_PROBE_TIMEOUT,
        http.get(&url)
            .header(reqwest::header::HOST, format!("localhost:{}", addr.port()))
            .send(),
    )
    .await;
    let looks_like_page = match answer {
        Ok(Ok(r)) if r.status().is_success() => {
            let has_csp = r
                .headers()
                .contains_key(reqwest::header::CONTENT_SECURITY_POLICY);
            let body = tokio::time::timeout(PAGE_PROBE_TIMEOUT, r.text()).await;
            has_csp && matches!(body, Ok(Ok(b)) if b.contains("xoauth2-proxy"))
        }
        _ => false,
    };
    if looks_like_page {
        Finding::Ok(format!(
            "the sign-in page's port {addr} is in use by what answers like this proxy's page \
             (the proxy is running); if no proxy of yours runs, another program holds it"
        ))
    } else {
        Finding::Problem(squatted)
    }
}

/// The user id that owns the listening socket on `port` (Linux only: read
/// from /proc/net/tcp and tcp6; elsewhere unknown).
#[cfg(target_os = "linux")]
fn listening_owner(port: u16) -> Option<u32> {
    /// The `st` column of a listening socket.
    const LISTEN: &str = "0A";
    let wanted = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit(':').next()?;
                    (local_port == wanted && *fields.get(3)? == LISTEN)
                        .then(|| fields.get(7)?.parse().ok())
                        .flatten()
                })
                .collect::<Vec<u32>>()
        })
        .next()
}

#[cfg(not(target_os = "linux"))]
fn listening_owner(_port: u16) -> Option<u32> {
    None
}

#[cfg(target_os = "linux")]
fn own_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(not(target_os = "linux"))]
fn own_uid() -> u32 {
    0
}

/// For a `backend = "graph"` listener: Microsoft Graph answers on the
/// account's way out, and an app-only account gets a Graph token (nothing
/// is sent). A delegated account's Graph token comes from its sign-in,
/// whose tokens are sealed: its first message asks for it.
async fn graph_check(
    a: &crate::config::AccountConfig,
    i: usize,
    http: &reqwest::Client,
    policy: &crate::net::proxy::ProxyPolicy,
    config: &Config,
) -> Finding {
    let user = &a.username;
    let graph = a.graph_url();
    let route = endpoint_route(policy, &graph);
    if let Err(e) = http.get(format!("{graph}/v1.0/")).send().await {
        return Finding::Problem(format!(
            "{user}: Microsoft Graph {graph} cannot be reached {route} ({}): the Graph \
             listener cannot send; check the network, upstream_proxy and account[{i}].graph_url",
            crate::logging::error_chain(&e)
        ));
    }
    if a.flow != crate::config::Flow::ClientCredentials {
        return Finding::Ok(format!(
            "{user}: Microsoft Graph {graph} answers, {route}; the Graph token comes from the \
             account's sign-in (permission Mail.Send{})",
            if a.mailbox.is_some() { ".Shared" } else { "" }
        ));
    }
    let mut graph_account = a.clone();
    graph_account.scopes = Some(crate::auth::tokens::graph_scopes(a));
    let tokens = match crate::auth::http::http_client(config) {
        Ok(tokens) => tokens,
        Err(e) => return Finding::Problem(format!("cannot make an HTTP client: {e}")),
    };
    match crate::auth::flows::client_credentials(&graph_account, &tokens).await {
        Ok(_) => Finding::Ok(format!(
            "{user}: app-only; Microsoft Graph {graph} answers, {route}, and the token endpoint \
             issued a Graph token (no message sent)"
        )),
        Err(e) => Finding::Problem(format!(
            "{user}: app-only Graph token refused ({}): grant the app the Mail.Send \
             application permission (admin consent) for the Graph listener",
            crate::auth::flows::describe(e)
        )),
    }
}

/// "direct" or "through the proxy …" for an endpoint URL.
fn endpoint_route(policy: &crate::net::proxy::ProxyPolicy, url: &str) -> Route {
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    policy.route(&host)
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
        // A Graph listener has no server of its own to reach.
        let Some((host, port)) = l.upstream_host_port() else {
            continue;
        };
        let what = format!(
            "listener[{i}] ({} on {}) → {}",
            l.protocol,
            l.listen,
            l.upstream_name()
        );
        let route = crate::net::proxy::ProxyPolicy::from_config(&config.proxy)
            .route_with(l.upstream_proxy.as_ref(), host);
        // Through an HTTP or socks5h proxy, the proxy resolves the name.
        let resolves_here = match &route {
            Route::Direct => true,
            Route::Via(proxy) => proxy.kind == crate::config::ProxyKind::Socks5,
        };
        let resolved = !resolves_here
            || tokio::net::lookup_host((host, port))
                .await
                .map(|mut addrs| addrs.next().is_some())
                .unwrap_or(false);
        if !resolved {
            note(Finding::Problem(format!(
                "{what}: cannot resolve {host}: check the name in listener[{i}].upstream and this machine's DNS"
            )));
            continue;
        }
        note(Finding::Ok(format!("{what}: {route}")));
        let target = Target {
            host: host.to_owned(),
            port,
            tls: tls.clone(),
            timeout,
            route,
        };
        let greeting = match l.protocol {
            Protocol::Imap => crate::upstream::imap::connect(&target, l.upstream_tls_mode())
                .await
                .map(|_| ()),
            Protocol::Pop3 => crate::upstream::pop3::connect(&target, l.upstream_tls_mode())
                .await
                .map(|_| ()),
            Protocol::Smtp => crate::upstream::smtp::connect(&target, l.upstream_tls_mode())
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
    // The page is on this machine: never through a proxy.
    let local = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build();
    if let (AdminListen::At(addr), Ok(local)) = (config.proxy.admin_listen, &local) {
        note(page_port(addr, local).await);
    }
    let store = match TokenStore::open(config) {
        Ok(store) => store,
        Err(e) => {
            note(Finding::Problem(format!(
                "cannot use the token store: {e}: check proxy.token_store"
            )));
            TokenStore::new(&config.state_dir())
        }
    };
    if store.is_shared() {
        // A CLI check: the blocking ping (at most the store's timeouts) is fine here.
        note(match store.ping() {
            Ok(()) => Finding::Ok(format!("the token store, {}, answers", store.describe())),
            Err(e) => Finding::Problem(format!(
                "{e}: the proxies serve with the tokens they hold but cannot refresh them; \
                 check that Redis runs and is reachable, proxy.token_store and \
                 XOAUTH2_PROXY_REDIS_PASSWORD"
            )),
        });
    }
    let sends_by_graph = config
        .listeners
        .iter()
        .any(|l| l.backend == crate::config::Backend::Graph);
    for (i, a) in config.accounts.iter().enumerate() {
        let user = &a.username;
        let token_url = endpoints(a).token_url;
        // The account's way out: its own upstream_proxy, else [proxy]'s.
        let policy = crate::net::proxy::ProxyPolicy::from_config(&config.proxy)
            .with_setting(a.upstream_proxy.as_ref());
        let http = crate::auth::http::proxied(reqwest::Client::builder(), policy.clone())
            .use_preconfigured_tls((*tls).clone())
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build();
        match &http {
            Ok(http) => match http.get(&token_url).send().await {
                Ok(r) => note(Finding::Ok(format!(
                    "{user}: token endpoint {token_url} answers (HTTP {}), {}",
                    r.status().as_u16(),
                    endpoint_route(&policy, &token_url)
                ))),
                Err(e) => note(Finding::Problem(format!(
                    "{user}: cannot reach the token endpoint {token_url} {} ({}): check the \
                     network and upstream_proxy, and account[{i}].tenant / token_url",
                    endpoint_route(&policy, &token_url),
                    crate::logging::error_chain(&e)
                ))),
            },
            Err(e) => note(Finding::Problem(format!("cannot make an HTTP client: {e}"))),
        }
        if sends_by_graph && let Ok(http) = &http {
            note(graph_check(a, i, http, &policy, config).await);
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
    for finding in permissions(config) {
        note(finding);
    }
    findings
}

/// The folders, then the files, that hold secrets (tokens, the local TLS
/// key) or logs, as far as they exist: `(path, is a folder, what it is)`.
fn private_paths(config: &Config) -> Vec<(PathBuf, bool, &'static str)> {
    let state = config.state_dir();
    let tokens = TokenStore::new(&state).dir().to_owned();
    let certs = state.join("certs");
    let mut dirs = vec![
        (state.clone(), "state folder"),
        (tokens.clone(), "token folder"),
        (certs.clone(), "certificate folder"),
        // The Windows service's logs in the README's layout.
        (state.join("logs"), "log folder"),
    ];
    if let Some(logs) = &config.proxy.log_dir {
        dirs.push((logs.clone(), "log folder"));
    }
    let mut found: Vec<(PathBuf, bool, &'static str)> = Vec::new();
    for (path, what) in dirs {
        if path.is_dir() && !found.iter().any(|(p, ..)| *p == path) {
            found.push((path, true, what));
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tokens)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut found_files: Vec<(PathBuf, bool, &'static str)> = files
        .into_iter()
        .map(|p| (p, false, "token file"))
        .collect();
    let key = config
        .proxy
        .key_file
        .clone()
        .unwrap_or_else(|| certs.join(crate::tls::local_cert::KEY_FILE_NAME));
    if key.is_file() {
        found_files.push((key, false, "TLS key"));
    }
    found.extend(found_files);
    found
}

/// Who else can read each of [`private_paths`]: an `Ok` per folder and one
/// for all the files that are fine, a `Problem` per path others can read,
/// with the command that closes it.
pub(crate) fn permissions(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut files_ok = 0;
    for (path, is_dir, what) in private_paths(config) {
        match crate::fs_secure::exposure(&path) {
            Ok(found) if found.is_empty() && is_dir => findings.push(Finding::Ok(format!(
                "{what} {}: {}",
                path.display(),
                crate::fs_secure::PRIVATE
            ))),
            Ok(found) if found.is_empty() => files_ok += 1,
            Ok(found) => findings.push(Finding::Problem(format!(
                "{what} {}: {}: {}",
                path.display(),
                found.join("; "),
                crate::fs_secure::how_to_fix(&path, is_dir)
            ))),
            Err(e) => findings.push(Finding::Problem(format!(
                "{what} {}: cannot read its permissions ({e}): run doctor as the proxy's user \
                 (or as administrator)",
                path.display()
            ))),
        }
    }
    if files_ok > 0 {
        findings.push(Finding::Ok(format!(
            "{files_ok} token or key file(s): {}",
            crate::fs_secure::PRIVATE
        )));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Whether `path` is one of the folders or files doctor checks.
    fn checked(config: &Config, path: &Path) -> bool {
        private_paths(config).iter().any(|(p, ..)| p == path)
    }

    fn tokens() -> crate::auth::vault::StoredTokens {
        crate::auth::vault::StoredTokens {
            access_token: Some(secrecy::SecretString::from("at".to_owned())),
            refresh_token: Some(secrecy::SecretString::from("rt".to_owned())),
            expires_at: None,
        }
    }

    #[test]
    fn what_the_proxy_writes_is_reported_private() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let logs = root.path().join("logs");
        let config = config(&state, &logs);
        let store = TokenStore::new(&state);
        store.save("alice@contoso.com", &tokens()).unwrap();
        crate::fs_secure::private_dir(&logs).unwrap();
        assert!(checked(&config, &store.path_for("alice@contoso.com")));
        assert!(checked(&config, &logs));
        let findings = permissions(&config);
        assert_eq!(problems(&findings), Vec::<String>::new(), "{findings:?}");
        // state, tokens, logs; and the one token file.
        assert_eq!(findings.len(), 4, "{findings:?}");
    }

    fn config(state_dir: &Path, log_dir: &Path) -> Config {
        let text = format!(
            r#"
[proxy]
state_dir = '{}'
log_dir = '{}'

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
"#,
            state_dir.display(),
            log_dir.display()
        );
        Config::parse(&text, Path::new("proxy.toml")).unwrap()
    }

    fn problems(findings: &[Finding]) -> Vec<String> {
        findings
            .iter()
            .filter_map(|f| match f {
                Finding::Problem(m) => Some(m.clone()),
                Finding::Ok(_) => None,
            })
            .collect()
    }

    #[cfg(unix)]
    #[test]
    fn files_and_folders_others_can_read_are_reported_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let logs = root.path().join("logs");
        let config = config(&state, &logs);
        let store = TokenStore::new(&state);
        let tokens = tokens();
        store.save("alice@contoso.com", &tokens).unwrap();
        crate::fs_secure::private_dir(&logs).unwrap();
        let token_file = store.path_for("alice@contoso.com");

        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        mode(&state, 0o755).unwrap();
        mode(&token_file, 0o644).unwrap();
        mode(&logs, 0o750).unwrap();
        let found = problems(&permissions(&config));
        assert_eq!(found.len(), 3, "{found:?}");
        let about = |path: &Path| {
            found
                .iter()
                .find(|m| m.contains(&format!("{}:", path.display())))
                .unwrap_or_else(|| panic!("{} not reported: {found:?}", path.display()))
                .clone()
        };
        let state_line = about(&state);
        assert!(state_line.starts_with("state folder"), "{state_line}");
        assert!(state_line.contains("mode 0755"), "{state_line}");
        assert!(state_line.contains("chmod 700"), "{state_line}");
        let token_line = about(&token_file);
        assert!(token_line.starts_with("token file"), "{token_line}");
        assert!(token_line.contains("mode 0644"), "{token_line}");
        assert!(token_line.contains("chmod 600"), "{token_line}");
        assert!(about(&logs).contains("mode 0750"));

        // The next write makes the store's folders owner-only again.
        TokenStore::new(&state)
            .save("alice@contoso.com", &tokens)
            .unwrap();
        let found = problems(&permissions(&config));
        assert_eq!(found.len(), 1, "only the log folder is left: {found:?}");
    }
}
