//! The browser sign-in of `xoauth2-proxy authorize --browser`: a listener on
//! the loopback interface receives the provider's redirect (RFC 8252 §7.3),
//! the code is exchanged, and the browser is told how it went.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use tokio::sync::{mpsc, oneshot};

use super::authcode::{PendingSignIn, callback_error, constant_time_eq, finish_sign_in};
use super::flows::FlowError;
use super::http::HttpClient;
use super::vault::StoredTokens;
use crate::config::AccountConfig;

/// The path of the redirect URI (`http://localhost:PORT/callback`).
pub const CALLBACK_PATH: &str = "/callback";
/// How long `authorize --browser` waits for the browser to come back.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// After answering the browser, how long its connection may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// One redirect as the listener received it, and where its page goes.
type Answer = (HashMap<String, String>, oneshot::Sender<Response>);

/// Where the browser sign-in listens, and the redirect URI it names.
#[derive(Debug, PartialEq, Eq)]
struct Listen {
    /// 127.0.0.1 (required unless `ipv6_only`).
    ipv6_only: bool,
    /// Also ::1 on the same port, when it can be had (a `localhost` URI).
    ipv6_too: bool,
    /// The port to listen on; `None`: a free one.
    port: Option<u16>,
    /// The path the answer comes to.
    path: String,
}

impl Listen {
    /// The account's `redirect_uri` taken apart, or the default
    /// (`http://localhost:PORT/callback`, a free port).
    fn of(account: &AccountConfig) -> Result<Listen, FlowError> {
        let Some(text) = account.redirect_uri.as_deref() else {
            return Ok(Listen {
                ipv6_only: false,
                ipv6_too: true,
                port: None,
                path: CALLBACK_PATH.to_owned(),
            });
        };
        if !account.redirect_on_this_machine() {
            return Err(FlowError::Config(format!(
                "the account's redirect_uri `{text}` is not on this machine, so the browser \
                 sign-in cannot receive its answer here; use `authorize --paste` (or flow = \
                 \"paste\") and paste back the address the browser ends on"
            )));
        }
        let url = reqwest::Url::parse(text)
            .map_err(|e| FlowError::Config(format!("redirect_uri `{text}`: {e}")))?;
        let host = url.host_str().unwrap_or("");
        Ok(Listen {
            ipv6_only: host == "[::1]",
            ipv6_too: host == "localhost",
            // `:80` written out is a port asked for, though the URL parser drops it.
            port: explicit_port(text).then(|| url.port_or_known_default().unwrap_or(80)),
            path: url.path().to_owned(),
        })
    }

    /// The redirect URI to send: the configured one as written (with the
    /// port put in when it names none), or the default on `port`.
    fn redirect_uri(&self, account: &AccountConfig, port: u16) -> String {
        match account.redirect_uri.as_deref() {
            None => format!("http://localhost:{port}{CALLBACK_PATH}"),
            Some(text) if self.port.is_some() => text.to_owned(),
            Some(text) => {
                let (head, tail) = text.split_at(authority_end(text));
                format!("{head}:{port}{tail}")
            }
        }
    }
}

/// Where the host (and port) of `text` ends: the first `/`, `?` or `#`
/// after `://` (a checked redirect URI has no user name).
fn authority_end(text: &str) -> usize {
    let start = text.find("://").map_or(0, |i| i + 3);
    text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| start + i)
}

/// Whether `text` writes a port after its host (`[::1]:8400`, `localhost:80`).
fn explicit_port(text: &str) -> bool {
    let start = text.find("://").map_or(0, |i| i + 3);
    let authority = &text[start..authority_end(text)];
    let after_host = authority.rfind(']').map_or(authority, |i| &authority[i..]);
    after_host.contains(':')
}

/// Signs `account` in with the authorization code flow in a browser: listens
/// on the loopback interface (127.0.0.1, and ::1 on the same port when it
/// can; or what the account's `redirect_uri` names: its host, port and
/// path) on a free port unless one is configured, hands the URL to open to
/// `show`, waits up to `timeout` for the redirect, checks it and exchanges
/// the code, and answers the browser with a short page saying how it went.
pub async fn browser_sign_in(
    account: &AccountConfig,
    http: &HttpClient,
    timeout: Duration,
    show: impl FnOnce(&str),
) -> Result<StoredTokens, FlowError> {
    let plan = Listen::of(account)?;
    let local = |e: std::io::Error| {
        FlowError::Config(format!(
            "cannot listen on the loopback interface for the sign-in answer{}: {e}",
            plan.port
                .map(|p| format!(" (port {p} of the account's redirect_uri)"))
                .unwrap_or_default()
        ))
    };
    let port = plan.port.unwrap_or(0);
    let first = if plan.ipv6_only {
        SocketAddr::from((Ipv6Addr::LOCALHOST, port))
    } else {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    };
    let first = tokio::net::TcpListener::bind(first).await.map_err(local)?;
    let port = first.local_addr().map_err(local)?.port();
    // Browsers may resolve localhost to ::1 first; serve there too if we can.
    let v6 = if plan.ipv6_too {
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
            .await
            .ok()
    } else {
        None
    };
    let redirect_uri = plan.redirect_uri(account, port);
    let (url, pending) = PendingSignIn::start(account, &redirect_uri)?;

    let (tx, mut rx) = mpsc::channel::<Answer>(4);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Every path comes to one handler, which compares it with the redirect
    // URI's (a configured path is not route syntax for the router).
    let app = Router::new().fallback(callback).with_state(Callback {
        tx,
        path: plan.path.into(),
    });
    let mut servers = Vec::new();
    for listener in std::iter::once(first).chain(v6) {
        let app = app.clone();
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        }));
    }
    drop(app);

    show(&url);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pending = Some(pending);
    let result = loop {
        let (params, reply) = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(answer)) => answer,
            Ok(None) | Err(_) => break Err(FlowError::TimedOut(timeout)),
        };
        // A visit without an answer (a reload, a prefetch): keep waiting.
        if !["code", "error", "state"]
            .iter()
            .any(|k| params.contains_key(*k))
        {
            let _ = reply.send(page(
                "Waiting for the sign-in",
                "This page receives the answer of the sign-in; nothing arrived yet.",
            ));
            continue;
        }
        let state = params.get("state").map(String::as_str).unwrap_or("");
        // Any local program can call this port: an answer that is not this
        // sign-in's (a wrong or missing `state`) is refused on its own, and
        // the real one is still awaited until the timeout.
        let ours = pending
            .as_ref()
            .is_some_and(|p| constant_time_eq(p.state().as_bytes(), state.as_bytes()));
        if !ours {
            tracing::warn!(
                "a sign-in answer that does not belong to this sign-in (state mismatch) was \
                 ignored; still waiting for the real one"
            );
            let refused = page(
                "Sign-in answer ignored",
                "This answer does not belong to the sign-in in progress (state mismatch), so it \
                 was ignored; the sign-in still waits for its own answer.",
            );
            let _ = reply.send((StatusCode::BAD_REQUEST, refused).into_response());
            continue;
        }
        let Some(signing_in) = pending.take() else {
            break Err(FlowError::MissingCode);
        };
        let outcome = if let Some(denied) = callback_error(&params) {
            Err(denied)
        } else {
            let code = params.get("code").map(String::as_str).unwrap_or("");
            finish_sign_in(signing_in, account, http, state, code).await
        };
        let _ = reply.send(match &outcome {
            Ok(_) => page(
                "Signed in",
                &format!("{} is signed in; you can close this tab.", account.username),
            ),
            Err(e) => page("Sign-in failed", &e.to_string()),
        });
        break outcome;
    };
    drop(rx);
    let _ = stop_tx.send(true);
    for server in servers {
        let abort = server.abort_handle();
        if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
            abort.abort();
        }
    }
    result
}

/// What the listener's one handler holds: where answers go, and the path
/// they must come to.
#[derive(Clone)]
struct Callback {
    tx: mpsc::Sender<Answer>,
    path: std::sync::Arc<str>,
}

async fn callback(
    State(callback): State<Callback>,
    method: Method,
    uri: Uri,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if method != Method::GET || uri.path() != &*callback.path {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let (reply_tx, reply_rx) = oneshot::channel();
    if callback.tx.send((params, reply_tx)).await.is_err() {
        return page(
            "Sign-in over",
            "This sign-in has finished; you can close this tab.",
        );
    }
    reply_rx.await.unwrap_or_else(|_| {
        page(
            "Sign-in over",
            "This sign-in has finished; you can close this tab.",
        )
    })
}

/// A small HTML page (text escaped), never cached.
fn page(title: &str, text: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body style=\"font-family:sans-serif;margin:3em\"><h1>{t}</h1><p>{x}</p>\
         <p>xoauth2-proxy</p></body></html>",
        t = crate::escape::escape(title),
        x = crate::escape::escape(text)
    );
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(body),
    )
        .into_response()
}

/// Asks the desktop to open `url` in the default browser (`xdg-open` on
/// Linux and the BSDs, `open` on macOS, the URL protocol handler on
/// Windows, which unlike `cmd /c start` does not split the URL at `&`).
/// Returns once the opener started; it is not waited for.
pub fn open_browser(url: &str) -> std::io::Result<()> {
    #[cfg(target_os = "macos")]
    let mut command = {
        let mut c = std::process::Command::new("open");
        c.arg(url);
        c
    };
    #[cfg(windows)]
    let mut command = {
        let mut c = std::process::Command::new("rundll32");
        c.arg("url.dll,FileProtocolHandler").arg(url);
        c
    };
    #[cfg(all(unix, not(target_os = "macos")))]
    let mut command = {
        let mut c = std::process::Command::new("xdg-open");
        c.arg(url);
        c
    };
    #[cfg(not(any(unix, windows)))]
    {
        let _ = url;
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "no known way to open a browser here",
        ));
    }
    #[cfg(any(unix, windows))]
    {
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        // Reap it whenever it ends.
        std::thread::spawn(move || child.wait());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(redirect: Option<&str>) -> AccountConfig {
        let mut a: AccountConfig = toml::from_str(
            "username = \"alice@contoso.com\"\nprovider = \"office365\"\nclient_id = \"c\"",
        )
        .unwrap();
        a.redirect_uri = redirect.map(str::to_owned);
        a
    }

    #[test]
    fn the_redirect_uri_says_where_to_listen() {
        /// redirect_uri, v6 only, v6 too, port, path, the URI sent when the port is 5000.
        type Row<'a> = (Option<&'a str>, bool, bool, Option<u16>, &'a str, &'a str);
        let rows: &[Row] = &[
            (
                None,
                false,
                true,
                None,
                "/callback",
                "http://localhost:5000/callback",
            ),
            (
                Some("http://localhost"),
                false,
                true,
                None,
                "/",
                "http://localhost:5000",
            ),
            (
                Some("http://localhost/"),
                false,
                true,
                None,
                "/",
                "http://localhost:5000/",
            ),
            (
                Some("http://LOCALHOST/a/b"),
                false,
                true,
                None,
                "/a/b",
                "http://LOCALHOST:5000/a/b",
            ),
            (
                Some("http://localhost:8400/cb"),
                false,
                true,
                Some(8400),
                "/cb",
                "http://localhost:8400/cb",
            ),
            // `:80` written out is asked for, though the URL parser drops it.
            (
                Some("http://localhost:80/cb"),
                false,
                true,
                Some(80),
                "/cb",
                "http://localhost:80/cb",
            ),
            (
                Some("http://127.0.0.1/cb"),
                false,
                false,
                None,
                "/cb",
                "http://127.0.0.1:5000/cb",
            ),
            (
                Some("http://[::1]/cb"),
                true,
                false,
                None,
                "/cb",
                "http://[::1]:5000/cb",
            ),
            (
                Some("http://[::1]:8400"),
                true,
                false,
                Some(8400),
                "/",
                "http://[::1]:8400",
            ),
        ];
        for (redirect, v6_only, v6_too, port, path, sent) in rows {
            let a = account(*redirect);
            let plan = Listen::of(&a).unwrap_or_else(|e| panic!("{redirect:?}: {e}"));
            assert_eq!(
                plan,
                Listen {
                    ipv6_only: *v6_only,
                    ipv6_too: *v6_too,
                    port: *port,
                    path: path.to_string(),
                },
                "{redirect:?}"
            );
            assert_eq!(
                plan.redirect_uri(&a, port.unwrap_or(5000)),
                *sent,
                "{redirect:?}"
            );
        }
        let elsewhere = account(Some(
            "https://login.microsoftonline.com/common/oauth2/nativeclient",
        ));
        let err = Listen::of(&elsewhere).unwrap_err().to_string();
        assert!(
            err.contains("--paste") && err.contains("nativeclient"),
            "{err}"
        );
    }

    /// A configured path is served (and only it), whatever characters the
    /// router would read as its own syntax.
    #[tokio::test]
    async fn only_the_redirect_path_is_answered() {
        let plan = Listen::of(&account(Some("http://localhost/{x}/*rest"))).unwrap();
        let (tx, mut rx) = mpsc::channel::<Answer>(1);
        let app = Router::new().fallback(callback).with_state(Callback {
            tx,
            path: plan.path.into(),
        });
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        tokio::spawn(async move {
            while let Some((params, reply)) = rx.recv().await {
                let _ = reply.send(page("got", &params["state"]));
            }
        });
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("http://{addr}{path}")).send();
        let other = get("/callback?state=s").await.unwrap();
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
        let ours = get("/%7Bx%7D/*rest?state=s").await.unwrap();
        assert_eq!(ours.status(), StatusCode::OK);
        assert!(ours.text().await.unwrap().contains("got"));
        let post = client
            .post(format!("http://{addr}/%7Bx%7D/*rest?state=s"))
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn pages_escape_text() {
        assert_eq!(
            crate::escape::escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }
}
