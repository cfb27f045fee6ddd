//! xoauth2-proxy: password logins in front, SASL XOAUTH2 behind.
//!
//! Module map (see ARCHITECTURE.md for the path a connection takes):
//! - [`config`]: the TOML schema, defaults and validation.
//! - [`listener`]: accept loops and connection limits.
//! - [`session`]: one client connection, from greeting to relay, per protocol.
//! - [`protocol`]: sans-IO pre-authentication parsers and state machines.
//! - [`sasl`]: PLAIN/LOGIN decoding, XOAUTH2 encoding, error challenges.
//! - [`upstream`]: TCP, TLS, STARTTLS and XOAUTH2 towards the real server.
//! - [`relay`]: the byte pipe after authentication.
//! - [`auth`]: accounts, the token store, token refresh and sign-in flows.
//! - [`tls`]: rustls configurations (ring provider).

pub mod auth;
pub mod config;
pub mod listener;
pub mod protocol;
pub mod relay;
pub mod sasl;
pub mod session;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use auth::accounts::Accounts;
use auth::http::HttpClient;
use auth::tokens::TokenManager;
use auth::vault::TokenStore;
use config::Config;

/// A started proxy: its bound addresses (in listener order) and a handle to stop it.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub context: Arc<session::Context>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops accepting and waits for the accept loops to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The HTTP client for token endpoints, trusting what upstreams are trusted with.
pub fn http_client(config: &Config) -> anyhow::Result<HttpClient> {
    let tls = tls::client_config(config.proxy.ca_file.as_deref())?;
    HttpClient::new(tls, Duration::from_secs(config.proxy.connect_timeout_secs))
}

/// Binds every listener and starts serving. Fails before serving anything if
/// a listener cannot be bound.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let upstream_tls = tls::client_config(config.proxy.ca_file.as_deref())?;
    let http = http_client(&config)?;
    let store = Arc::new(TokenStore::new(&config.state_dir()));
    let context = Arc::new(session::Context {
        accounts: Accounts::new(&config.accounts),
        tokens: TokenManager::new(
            &config.accounts,
            http,
            store,
            Duration::from_secs(config.proxy.refresh_margin_secs),
        ),
        upstream_tls,
        connect_timeout: Duration::from_secs(config.proxy.connect_timeout_secs),
        preauth_timeout: Duration::from_secs(config.proxy.preauth_timeout_secs),
    });
    let mut bound = Vec::new();
    for l in &config.listeners {
        bound.push(listener::bind(l).await?);
    }
    let addrs = bound.iter().map(|b| b.local_addr()).collect();
    let (shutdown, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for b in bound {
        tasks.spawn(listener::serve(
            b,
            context.clone(),
            config.proxy.max_connections,
            rx.clone(),
        ));
    }
    Ok(Running {
        addrs,
        context,
        shutdown,
        tasks,
    })
}

/// Runs the proxy until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if config.listeners.is_empty() {
        anyhow::bail!("{}: no [[listener]] is configured", config.source.display());
    }
    let running = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
