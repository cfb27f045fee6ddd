//! The HTTP client for token endpoints, adapted to the oauth2 crate.
//!
//! oauth2 folds every non-200 answer into a parse error, which would lose
//! what decides a retry. Here 429 and 5xx answers become `HttpError::Status`
//! (with `Retry-After`), so the caller can tell "try later" from "sign in".

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use secrecy::ExposeSecret as _;

use crate::config::{AccountConfig, ProxyServer, ProxySetting};
use crate::net::proxy::{ProxyPolicy, Route};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Transport(String),
    #[error("the token endpoint answered HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
}

#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    /// The clients of accounts with an `upstream_proxy` of their own, by
    /// that setting (see [`HttpClient::for_account`]).
    own: Arc<Vec<(ProxySetting, reqwest::Client)>>,
}

impl HttpClient {
    /// A client that takes the system's proxy (`upstream_proxy = "system"`).
    pub fn new(tls: Arc<ClientConfig>, timeout: Duration) -> anyhow::Result<HttpClient> {
        let system = ProxyPolicy::new(crate::config::ProxySetting::System, Vec::new());
        HttpClient::with_proxy(tls, timeout, system)
    }

    /// A client whose requests go the way `policy` says.
    pub fn with_proxy(
        tls: Arc<ClientConfig>,
        timeout: Duration,
        policy: ProxyPolicy,
    ) -> anyhow::Result<HttpClient> {
        Ok(HttpClient {
            inner: build(&tls, timeout, policy)?,
            own: Arc::new(Vec::new()),
        })
    }

    /// The client for `account`'s requests: its own `upstream_proxy`'s, or
    /// this one.
    pub fn for_account(&self, account: &AccountConfig) -> HttpClient {
        let Some(setting) = &account.upstream_proxy else {
            return self.clone();
        };
        match self.own.iter().find(|(s, _)| s == setting) {
            Some((_, inner)) => HttpClient {
                inner: inner.clone(),
                own: self.own.clone(),
            },
            // Every account's setting is built by `http_client`; one made
            // elsewhere (tests) has none.
            None => self.clone(),
        }
    }

    /// Sends one request built by the oauth2 crate.
    pub async fn send(
        &self,
        request: oauth2::HttpRequest,
    ) -> Result<oauth2::HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let response = self
            .inner
            .request(parts.method, url)
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| HttpError::Transport(describe(&e)))?;
        let status = response.status();
        if status.as_u16() == 429 || status.is_server_error() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(HttpError::Status {
                status: status.as_u16(),
                retry_after,
            });
        }
        let mut builder = http::Response::builder().status(status);
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| HttpError::Transport(describe(&e)))?;
        builder
            .body(body.to_vec())
            .map_err(|e| HttpError::Transport(e.to_string()))
    }
}

/// Why a request to an API (not a token endpoint) got no answer.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct SendError {
    /// No connection was made: the request cannot have arrived.
    pub unsent: bool,
    /// Transport only; never a header or the body.
    pub text: String,
}

impl HttpClient {
    /// Sends one API request (Microsoft Graph) within `timeout` and returns
    /// the answer whatever its status: the caller maps each status itself.
    pub async fn send_api(
        &self,
        request: http::Request<Vec<u8>>,
        timeout: Duration,
    ) -> Result<http::Response<Vec<u8>>, SendError> {
        let (parts, body) = request.into_parts();
        // Without its URL: a Graph upload URL carries a token in its query.
        let failed = |e: reqwest::Error| {
            let e = e.without_url();
            SendError {
                unsent: e.is_connect(),
                text: describe(&e).replace("the token endpoint", "the API"),
            }
        };
        let response = self
            .inner
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(failed)?;
        let mut builder = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let body = response.bytes().await.map_err(failed)?;
        builder.body(body.to_vec()).map_err(|e| SendError {
            unsent: false,
            text: e.to_string(),
        })
    }
}

/// A reqwest error in words, with its cause chain (the top-level message
/// alone is often just "error sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "the token endpoint did not answer in time".to_owned()
    } else if e.is_connect() {
        "cannot connect to the token endpoint".to_owned()
    } else {
        "request to the token endpoint failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    // Only the causes are quoted, never the top error, which may carry the
    // URL (token requests keep secrets in POST bodies; `send_api` drops
    // the URL anyway, for Graph's pre-authenticated upload URLs).
    text
}

/// The HTTP client for token endpoints, trusting what upstreams are trusted with.
pub fn http_client(config: &crate::config::Config) -> anyhow::Result<HttpClient> {
    let tls = crate::tls::client_config(config.proxy.ca_file.as_deref())?;
    let timeout = std::time::Duration::from_secs(config.proxy.connect_timeout_secs);
    let policy = ProxyPolicy::from_config(&config.proxy);
    let mut own: Vec<(ProxySetting, reqwest::Client)> = Vec::new();
    for setting in config
        .accounts
        .iter()
        .filter_map(|a| a.upstream_proxy.as_ref())
    {
        if !own.iter().any(|(s, _)| s == setting) {
            let client = build(&tls, timeout, policy.with_setting(Some(setting)))?;
            own.push((setting.clone(), client));
        }
    }
    Ok(HttpClient {
        inner: build(&tls, timeout, policy)?,
        own: Arc::new(own),
    })
}

/// One reqwest client: its TLS, timeouts and proxy routing.
fn build(
    tls: &Arc<ClientConfig>,
    timeout: Duration,
    policy: ProxyPolicy,
) -> anyhow::Result<reqwest::Client> {
    Ok(proxied(reqwest::Client::builder(), policy)
        .use_preconfigured_tls((**tls).clone())
        .timeout(timeout)
        .connect_timeout(timeout)
        // Token endpoints answer directly; a redirect would carry the form elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("xoauth2-proxy/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Sends each request the way `policy` routes its host: reqwest's own
/// HTTP CONNECT and SOCKS5 support, with the proxy chosen here (so
/// `no_proxy`, `"system"` and Windows' settings mean the same for HTTP as
/// for the mail connections). reqwest's reading of the environment is off.
pub(crate) fn proxied(
    builder: reqwest::ClientBuilder,
    policy: ProxyPolicy,
) -> reqwest::ClientBuilder {
    builder.proxy(reqwest::Proxy::custom(move |url| {
        match policy.route(url.host_str()?) {
            Route::Direct => None,
            Route::Via(proxy) => proxy_url(&proxy),
        }
    }))
}

/// The proxy as reqwest takes it: a URL, the credentials in it.
fn proxy_url(proxy: &ProxyServer) -> Option<reqwest::Url> {
    let mut url =
        reqwest::Url::parse(&format!("{}://{}", proxy.kind.scheme(), proxy.authority())).ok()?;
    if let Some((user, password)) = &proxy.credentials {
        url.set_username(user).ok()?;
        url.set_password(Some(password.expose_secret())).ok()?;
    }
    Some(url)
}
