//! xoauth2-proxy: password logins in front, SASL XOAUTH2 behind.
//!
//! Module map (see ARCHITECTURE.md for the path a connection takes):
//! - [`config`]: the TOML schema, defaults and validation.
//! - [`listener`]: accept loops, `allow_from`, connection limits.
//! - [`session`]: one client connection, from greeting to relay, per protocol.
//! - [`protocol`]: sans-IO pre-authentication parsers and state machines.
//! - [`sasl`]: PLAIN/LOGIN decoding, XOAUTH2 encoding, error challenges.
//! - [`upstream`]: TCP, TLS, STARTTLS and XOAUTH2 towards the real server.
//! - [`relay`]: the byte pipe after authentication.
//! - [`auth`]: accounts, the token store, token refresh and sign-in flows.
//! - [`tls`]: rustls configurations (ring provider) and the local certificate.

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
    let local_tls = if config.uses_local_tls() {
        Some(LocalTlsSetup::load(&config)?)
    } else {
        None
    };
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
        local_tls: local_tls.as_ref().map(|t| t.acceptor.clone()),
    });
    let mut bound = Vec::new();
    for l in &config.listeners {
        bound.push(listener::bind(l).await?);
    }
    let addrs = bound.iter().map(|b| b.local_addr()).collect();
    let (shutdown, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let limits = listener::Limits {
        max_connections: config.proxy.max_connections,
        max_per_source: config.proxy.max_connections_per_source,
    };
    for b in bound {
        tasks.spawn(listener::serve(b, context.clone(), limits, rx.clone()));
    }
    if let Some(tls) = local_tls {
        tasks.spawn(tls.renew_loop(rx.clone()));
    }
    Ok(Running {
        addrs,
        context,
        shutdown,
        tasks,
    })
}

/// The certificate and acceptor of the `local_tls` listeners.
struct LocalTlsSetup {
    acceptor: tokio_rustls::TlsAcceptor,
    cert: Arc<tls::local_cert::ReloadableCert>,
    source: tls::local_cert::CertSource,
}

impl LocalTlsSetup {
    fn load(config: &Config) -> anyhow::Result<LocalTlsSetup> {
        let source = tls::local_cert::CertSource::from_config(config);
        let loaded = source
            .load(std::time::SystemTime::now())
            .map_err(|e| anyhow::anyhow!("local TLS certificate: {e}"))?;
        log_certificate(&loaded);
        let cert = tls::local_cert::ReloadableCert::new(loaded.certified);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(cert.clone())?);
        Ok(LocalTlsSetup {
            acceptor,
            cert,
            source,
        })
    }

    /// Renews a generated certificate before it expires (and picks up
    /// replaced `cert_file`/`key_file`) while the proxy runs.
    async fn renew_loop(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tls::local_cert::CHECK_EVERY) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let source = self.source.clone();
            let loaded =
                tokio::task::spawn_blocking(move || source.load(std::time::SystemTime::now()))
                    .await;
            match loaded {
                Ok(Ok(loaded)) => {
                    if loaded.certified.cert != self.cert.current().cert {
                        log_certificate(&loaded);
                        self.cert.replace(loaded.certified);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot renew the local TLS certificate; keeping the current one")
                }
                Err(e) => tracing::warn!(error = %e, "certificate renewal task failed"),
            }
        }
    }
}

fn log_certificate(loaded: &tls::local_cert::Loaded) {
    let fingerprint = loaded
        .certified
        .cert
        .first()
        .map(|c| tls::local_cert::fingerprint(c))
        .unwrap_or_default();
    tracing::info!(path = %loaded.cert_path.display(), origin = ?loaded.origin, sha256 = %fingerprint,
        "local TLS certificate (clients must trust it: `xoauth2-proxy cert show`)");
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
