//! The browser sign-in of `xoauth2-proxy authorize --browser`: a listener on
//! the loopback interface receives the provider's redirect (RFC 8252 §7.3),
//! the code is exchanged, and the browser is told how it went.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
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

/// Signs `account` in with the authorization code flow in a browser: listens
/// on 127.0.0.1 (and ::1 on the same port when it can) on a free port, hands
/// the URL to open to `show`, waits up to `timeout` for the redirect, checks
/// it and exchanges the code, and answers the browser with a short page
/// saying how it went.
pub async fn browser_sign_in(
    account: &AccountConfig,
    http: &HttpClient,
    timeout: Duration,
    show: impl FnOnce(&str),
) -> Result<StoredTokens, FlowError> {
    let local = |e: std::io::Error| {
        FlowError::Config(format!(
            "cannot listen on the loopback interface for the sign-in answer: {e}"
        ))
    };
    let v4 = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(local)?;
    let port = v4.local_addr().map_err(local)?.port();
    // Browsers may resolve localhost to ::1 first; serve there too if we can.
    let v6 = tokio::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
        .await
        .ok();
    let redirect_uri = format!("http://localhost:{port}{CALLBACK_PATH}");
    let (url, pending) = PendingSignIn::start(account, &redirect_uri)?;

    let (tx, mut rx) = mpsc::channel::<Answer>(4);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = Router::new()
        .route(CALLBACK_PATH, get(callback))
        .with_state(tx);
    let mut servers = Vec::new();
    for listener in std::iter::once(v4).chain(v6) {
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

async fn callback(
    State(tx): State<mpsc::Sender<Answer>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx.send((params, reply_tx)).await.is_err() {
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

    #[test]
    fn pages_escape_text() {
        assert_eq!(
            crate::escape::escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }
}
