//! xoauth2-proxy: password logins in front, SASL XOAUTH2 behind.
//!
//! Module map (see ARCHITECTURE.md for the layers and the path a connection takes):
//! - [`admin`]: the local page (`admin_listen`): account states, sign-in, listener health.
//! - [`config`]: the TOML schema, defaults and validation.
//! - [`doctor`]: `xoauth2-proxy doctor`, the checks of upstreams, token endpoints and tokens.
//! - [`control`]: reload requests (SIGHUP, `xoauth2-proxy reload`, the Windows service).
//! - [`drain`]: client connections as tracked tasks; the bounded drain at shutdown.
//! - [`listener`]: accept loops, `allow_from`, connection limits.
//! - `metrics`: `metrics_listen`, Prometheus text of the counters `health` keeps.
//! - [`session`]: one client connection, from greeting to relay: one driver, a small part per protocol.
//! - [`protocol`]: sans-IO pre-authentication parsers and state machines.
//! - [`sasl`]: PLAIN/LOGIN decoding, XOAUTH2 encoding, error challenges.
//! - [`upstream`]: TCP, TLS, STARTTLS and XOAUTH2 towards the real server.
//! - [`relay`]: the byte pipe after authentication.
//! - [`net`]: what the OS says of a connection's other end (the local user of a loopback client).
//! - [`auth`]: the login gate, accounts, the token store, token refresh and sign-in flows.
//! - `escape`: the one HTML/XML escape.
//! - `fs_secure`: owner-only folders and files (Unix modes, Windows protected DACLs), read back for `doctor`.
//! - [`tls`]: rustls configurations (ring provider) and the local certificate.
//! - [`notify`]: notifications (sign-in needed, failures, expiring certificates, recovery).

pub(crate) mod admin;
pub mod auth;
pub mod config;
pub mod control;
pub mod doctor;
pub(crate) mod drain;
pub(crate) mod escape;
pub(crate) mod fs_secure;
pub(crate) mod health;
pub mod init;
pub(crate) mod listener;
pub mod logging;
pub(crate) mod metrics;
pub mod net;
pub mod notify;
pub mod protocol;
pub(crate) mod relay;
pub mod sasl;
pub mod service;
pub mod session;
pub mod store;
pub mod tls;
pub(crate) mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use auth::accounts::Accounts;
use auth::gate::Gate;
use auth::tokens::TokenManager;
use auth::vault::TokenStore;
use config::Config;

/// A started proxy: its bound addresses (in listener order) and a handle to
/// reload or stop it.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    /// Counters per listener, in the same order.
    listener_stats: Vec<Arc<health::ListenerStats>>,
    /// The counters' families, for every listener of every configuration.
    counters: health::Counters,
    /// `metrics_listen`, when set; it outlives reloads.
    metrics: Option<metrics::Metrics>,
    pub context: Arc<session::Context>,
    pub sessions: Arc<drain::Sessions>,
    /// Where the local page listens (`None`: `admin_listen = "off"`, or it could not bind).
    pub admin_addr: Option<SocketAddr>,
    /// The local page; it outlives reloads.
    admin: Option<admin::Admin>,
    /// Notifications; outlive reloads (with what they remember).
    notifier: Option<notify::Notifier>,
    grace: Duration,
    /// The configured listeners, in order.
    configured: Vec<Arc<config::ListenerConfig>>,
    shutdown: watch::Sender<bool>,
    /// Accept loops; each hands its socket back when it stops.
    listeners: JoinSet<listener::Bound>,
    tasks: JoinSet<()>,
    /// The connections and token managers of configurations replaced by
    /// [`Running::reload`]: untouched, and drained at shutdown too.
    earlier: Vec<(Arc<drain::Sessions>, Arc<session::Context>)>,
}

impl Running {
    /// Stops accepting, gives open connections `shutdown_grace_secs` to end,
    /// closes the rest, and waits for token refreshes in flight to be
    /// written (a refresh token rotated by the endpoint must reach the disk).
    pub async fn shutdown(mut self) {
        if let Some(page) = self.admin.take() {
            page.stop().await;
        }
        if let Some(metrics) = self.metrics.take() {
            metrics.stop().await;
        }
        if let Some(notifier) = self.notifier.take() {
            notifier.stop().await;
        }
        let _ = self.shutdown.send(true);
        while self.listeners.join_next().await.is_some() {}
        while self.tasks.join_next().await.is_some() {}
        self.earlier
            .push((self.sessions.clone(), self.context.clone()));
        let open: usize = self.earlier.iter().map(|(s, _)| s.open()).sum();
        if open > 0 {
            tracing::info!(
                open,
                grace_secs = self.grace.as_secs(),
                "waiting for open connections to end"
            );
        }
        let mut drains = JoinSet::new();
        for (sessions, _) in &self.earlier {
            let (sessions, grace) = (sessions.clone(), self.grace);
            drains.spawn(async move { sessions.drain(grace).await });
        }
        let mut closed = 0;
        while let Some(drained) = drains.join_next().await {
            closed += drained.map(|d| d.closed).unwrap_or(0);
        }
        if closed > 0 {
            tracing::warn!(
                closed,
                "closed the connections still open after the grace time"
            );
        }
        for (_, context) in &self.earlier {
            // A refresh request is bounded by the connect timeout; its write by the disk.
            let limit = context.connect_timeout + Duration::from_secs(5);
            if !context.gate.tokens().wait_idle(limit).await {
                tracing::warn!("a token refresh was still running at exit; its result may be lost");
            }
        }
    }

    /// Applies a new configuration without a restart: listeners on an
    /// address that stays keep their socket (no connection is refused),
    /// new ones are bound, removed ones closed; new connections get the new
    /// accounts and settings. Connections already open keep what they
    /// started with. On an error (a listener that cannot be bound, a
    /// certificate that cannot be loaded) nothing changes and the proxy
    /// keeps running as it was.
    pub async fn reload(mut self, config: Config) -> (Running, anyhow::Result<()>) {
        if config.listeners.is_empty() {
            let e = anyhow::anyhow!("{}: no [[listener]] is configured", config.source.display());
            return (self, Err(e));
        }
        let (context, local_tls) = match build_context(&config, Some(&self.context)) {
            Ok(built) => built,
            Err(e) => return (self, Err(e)),
        };
        if let Some(page) = &self.admin {
            let _ = context.sign_in_page.set(page.page_url().to_owned());
        }
        // Bind what is new while the old listeners still serve.
        let mut kept = self.configured.clone();
        let mut fresh: Vec<Option<listener::Bound>> = Vec::new();
        for l in &config.listeners {
            if let Some(i) = kept.iter().position(|old| same_socket(old, l)) {
                kept.swap_remove(i);
                fresh.push(None);
                continue;
            }
            match listener::bind(l, &self.counters).await {
                Ok(b) => fresh.push(Some(b)),
                Err(e) => return (self, Err(e)),
            }
        }
        let _ = self.shutdown.send(true);
        let mut old = Vec::new();
        while let Some(stopped) = self.listeners.join_next().await {
            if let Ok(b) = stopped {
                old.push(b);
            }
        }
        while self.tasks.join_next().await.is_some() {}
        let mut bound = Vec::new();
        for (l, fresh) in config.listeners.iter().zip(fresh) {
            let b = match fresh {
                Some(b) => b,
                None => {
                    let i = old
                        .iter()
                        .position(|b| same_socket(&b.config, l))
                        .expect("an accept loop hands its socket back");
                    let b = old.swap_remove(i);
                    listener::Bound {
                        listener: b.listener,
                        config: Arc::new(l.clone()),
                        stats: b.stats,
                    }
                }
            };
            bound.push(b);
        }
        for b in &old {
            tracing::info!(listen = %b.local_addr(), "listener removed by the reload; closed");
        }
        drop(old);
        let mut earlier = std::mem::take(&mut self.earlier);
        earlier.push((self.sessions.clone(), self.context.clone()));
        earlier.retain(|(sessions, _)| sessions.open() > 0);
        let mut running = launch(&config, context, local_tls, bound, self.counters.clone());
        running.earlier = earlier;
        match self.metrics.take() {
            Some(metrics) => {
                metrics.update(&config, running.context.clone());
                running.metrics = Some(metrics);
            }
            None if config.proxy.metrics_listen.is_some() => {
                tracing::warn!(
                    "proxy.metrics_listen was set by the reload: metrics are served from the next start"
                )
            }
            None => {}
        }
        if let Some(page) = self.admin.take() {
            page.update(running.admin_view(&config));
            running.admin_addr = Some(page.addr());
            running.admin = Some(page);
        }
        if let Some(notifier) = self.notifier.take() {
            notifier.update(running.notify_setup(&config));
            running.notifier = Some(notifier);
        }
        tracing::info!(
            listeners = running.addrs.len(),
            accounts = config.accounts.len(),
            "configuration reloaded"
        );
        (running, Ok(()))
    }
}

/// Whether a reload keeps `old`'s socket for `new`: the same address, and
/// for "any port" (0) the same protocol too (the port was chosen for it).
fn same_socket(old: &config::ListenerConfig, new: &config::ListenerConfig) -> bool {
    old.listen == new.listen && (new.listen.port() != 0 || old.protocol == new.protocol)
}

pub use auth::http::http_client;

/// Binds every listener and starts serving. Fails before serving anything if
/// a listener cannot be bound.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let (context, local_tls) = build_context(&config, None)?;
    let counters = health::Counters::default();
    let mut bound = Vec::new();
    for l in &config.listeners {
        bound.push(listener::bind(l, &counters).await?);
    }
    let scrape = metrics::bind(&config).await?;
    let page = admin::bind(&config).await;
    if let Some(addr) = page.as_ref().and_then(|l| l.local_addr().ok()) {
        let _ = context.sign_in_page.set(admin::page_url(addr));
    }
    let mut running = launch(&config, context, local_tls, bound, counters);
    if let Some(listener) = scrape {
        let context = running.context.clone();
        running.metrics = Some(metrics::Metrics::start(
            listener,
            &config,
            context,
            &running.counters,
        )?);
    }
    if let Some(listener) = page {
        match admin::Admin::start(listener, &config, running.admin_view(&config)) {
            Ok(page) => {
                running.admin_addr = Some(page.addr());
                running.admin = Some(page);
            }
            Err(e) => tracing::warn!(error = %e, "cannot serve the sign-in page"),
        }
    }
    running.notifier = Some(notify::Notifier::start(running.notify_setup(&config)));
    Ok(running)
}

impl Running {
    /// Where the metrics are served (`None`: no `metrics_listen`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr())
    }

    /// What the notifier watches of this configuration.
    fn notify_setup(&self, config: &Config) -> notify::Setup {
        notify::Setup::new(config, self.context.clone(), &self.addrs)
    }

    /// Shortens the notifier's thresholds and timeout (tests).
    #[doc(hidden)]
    pub fn set_notify_timing(&self, timing: notify::Timing) {
        if let Some(notifier) = &self.notifier {
            notifier.set_timing(timing);
        }
    }

    /// What the local page shows of this configuration.
    fn admin_view(&self, config: &Config) -> admin::View {
        admin::View::new(
            config,
            self.context.clone(),
            &self.addrs,
            &self.listener_stats,
            self.sessions.clone(),
        )
    }
}

/// What sessions share, from the configuration.
/// With `previous` (a reload), accounts whose settings did not change keep
/// their unlocked state, verified passwords and cached tokens.
fn build_context(
    config: &Config,
    previous: Option<&session::Context>,
) -> anyhow::Result<(Arc<session::Context>, Option<LocalTlsSetup>)> {
    let upstream_tls = tls::client_config(config.proxy.ca_file.as_deref())?;
    let http = http_client(config)?;
    let local_tls = if config.uses_local_tls() {
        Some(LocalTlsSetup::load(config)?)
    } else {
        None
    };
    let store = Arc::new(TokenStore::open(config)?);
    let swept = store.sweep_temp_files();
    if swept > 0 {
        tracing::info!(files = swept, dir = %store.dir().display(), "removed temporary token files a crash left behind");
    }
    let mut gate = Gate::new(
        Accounts::new(&config.accounts),
        TokenManager::new(
            &config.accounts,
            http,
            store,
            Duration::from_secs(config.proxy.refresh_margin_secs),
        ),
    );
    if let Some(previous) = previous {
        gate = gate.carry_over(&previous.gate);
    }
    let context = Arc::new(session::Context {
        gate,
        upstream_tls,
        connect_timeout: Duration::from_secs(config.proxy.connect_timeout_secs),
        proxy: crate::net::proxy::ProxyPolicy::from_config(&config.proxy),
        preauth_timeout: Duration::from_secs(config.proxy.preauth_timeout_secs),
        local_tls: local_tls.as_ref().map(|t| t.acceptor.clone()),
        sign_in_page: std::sync::OnceLock::new(),
        upstream_health: previous
            .map(|p| p.upstream_health.clone())
            .unwrap_or_default(),
        notices: previous.map(|p| p.notices.clone()).unwrap_or_default(),
        graph_memory: graph_memory(config, previous),
    });
    Ok((context, local_tls))
}

/// `graph_memory_mib` in octets, in the bound the previous configuration
/// shared with its sessions (their reservations stay counted) or a new one.
fn graph_memory(
    config: &Config,
    previous: Option<&session::Context>,
) -> Arc<session::graph::MessageMemory> {
    let limit = config.proxy.graph_memory_mib.saturating_mul(1024 * 1024);
    match previous {
        Some(p) => {
            p.graph_memory.set_limit(limit);
            p.graph_memory.clone()
        }
        None => Arc::new(session::graph::MessageMemory::new(limit)),
    }
}

/// Starts the accept loops and the background tasks.
fn launch(
    config: &Config,
    context: Arc<session::Context>,
    local_tls: Option<LocalTlsSetup>,
    bound: Vec<listener::Bound>,
    counters: health::Counters,
) -> Running {
    let addrs = bound.iter().map(|b| b.local_addr()).collect();
    let listener_stats = bound.iter().map(|b| b.stats.clone()).collect();
    let (shutdown, rx) = watch::channel(false);
    let sessions = drain::Sessions::new();
    let mut listeners = JoinSet::new();
    let mut tasks = JoinSet::new();
    let limits = listener::Limits {
        max_connections: config.proxy.max_connections,
        max_per_source: config.proxy.max_connections_per_source,
    };
    for b in bound {
        listeners.spawn(listener::serve(
            b,
            context.clone(),
            limits,
            sessions.clone(),
            rx.clone(),
        ));
    }
    if let Some(tls) = local_tls {
        tasks.spawn(tls.renew_loop(rx.clone()));
    }
    // Renews unlocked accounts' access tokens before they expire.
    let refresher = context.clone();
    let refresher_rx = rx.clone();
    tasks.spawn(async move { refresher.gate.tokens().keep_fresh(refresher_rx).await });
    // With a shared token store: notices other proxies' sign-ins and forgets.
    let follower = context.clone();
    let follower_rx = rx.clone();
    tasks.spawn(async move {
        follower
            .gate
            .tokens()
            .follow_shared_store(follower_rx)
            .await
    });
    Running {
        addrs,
        listener_stats,
        counters,
        metrics: None,
        context,
        sessions,
        admin_addr: None,
        admin: None,
        notifier: None,
        grace: Duration::from_secs(config.proxy.shutdown_grace_secs),
        configured: config
            .listeners
            .iter()
            .map(|l| Arc::new(l.clone()))
            .collect(),
        shutdown,
        listeners,
        tasks,
        earlier: Vec::new(),
    }
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

/// macOS refuses a soft limit of open files above `OPEN_MAX` (10240), even
/// when the hard limit is unlimited; the kernel's own per-process cap is
/// usually about that.
#[cfg(target_vendor = "apple")]
const APPLE_OPEN_MAX: libc::rlim_t = 10_240;

/// Raises the soft limit of open files to the hard limit: every client
/// connection costs two descriptors (client and upstream), and a default
/// soft limit (256 on macOS, 1024 on many Linux systems) would make a busy
/// proxy refuse connections with EMFILE long before the machine runs out.
/// Windows has no such per-process limit.
#[cfg(unix)]
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot read the open file limit");
        return;
    }
    let before = limit.rlim_cur;
    #[allow(unused_mut)]
    let mut target = limit.rlim_max;
    #[cfg(target_vendor = "apple")]
    {
        target = target.min(APPLE_OPEN_MAX).max(before);
    }
    if target > before {
        limit.rlim_cur = target;
        // SAFETY: setrlimit reads one `rlimit` through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            tracing::debug!(from = before, to = target, error = %std::io::Error::last_os_error(),
                "cannot raise the open file limit");
            return;
        }
    }
    tracing::debug!(open_files = limit.rlim_cur, was = before, "open file limit");
}

#[cfg(not(unix))]
fn raise_open_file_limit() {}

/// Completes at Ctrl-C, or at SIGTERM on Unix (how systemd and launchd stop a service).
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Answers a token request (`xoauth2-proxy token`) of the control channel
/// (the Unix socket, or the Windows named pipe) through the login gate, as a
/// client login of the channel's local user: the same throttle, failure
/// counting, password checks and single refresh as a mail client's login.
/// The token goes back only to the connection that asked.
pub async fn answer_token(context: Arc<session::Context>, request: control::token::TokenRequest) {
    use auth::gate::LoginError;
    use auth::throttle::Source;
    use control::token::{Refusal, TokenAnswer};
    use net::peer_user::PeerUser;
    let control::token::TokenRequest {
        account,
        password,
        client,
        reply,
    } = request;
    let source = match client {
        Some(control::Client::Uid(uid)) => Source::LocalUser(PeerUser::Uid(uid)),
        // The pipe client's user; a process whose user this proxy may not
        // read shares one record with all such.
        Some(control::Client::Pid(pid)) => {
            Source::LocalUser(net::peer_user::process_user(pid).unwrap_or(PeerUser::Unreadable))
        }
        // Not known (no peer credentials): all such requests share one record.
        None => Source::Address(std::net::Ipv4Addr::LOCALHOST.into()),
    };
    let credentials = sasl::Credentials {
        username: account,
        password,
    };
    let answer = match context.gate.login_from(&credentials, source).await {
        Ok(grant) => {
            tracing::info!(account = %grant.address(), "access token handed out on the control channel");
            TokenAnswer::Granted {
                user: grant.upstream_user().to_owned(),
                token: grant.token,
            }
        }
        Err(e) => {
            let refusal = match &e {
                LoginError::Refused(_) => Refusal::Refused,
                LoginError::Throttled(_) => Refusal::Throttled,
                LoginError::SignInNeeded(_) => Refusal::SignInNeeded,
                LoginError::Unavailable(_) => Refusal::Unavailable,
            };
            // The words a mail client would get: no paths or endpoint texts
            // (those are in the proxy's log).
            let failure = context.failure(&credentials, e);
            TokenAnswer::Refused(refusal, failure.text().to_owned())
        }
    };
    let _ = reply.send(answer);
}

/// Runs the proxy until `shutdown` completes, reloading the configuration
/// on each request of `reloads` (and, on Unix, at SIGHUP and through the
/// control socket in `state_dir`).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    mut reloads: control::Reloads,
) -> anyhow::Result<()> {
    if config.listeners.is_empty() {
        anyhow::bail!("{}: no [[listener]] is configured", config.source.display());
    }
    raise_open_file_limit();
    #[cfg(any(unix, windows))]
    let _control = control::listen(
        &config.state_dir(),
        reloads.sender(),
        reloads.token_sender(),
    );
    let mut running = start(config).await?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(request) = reloads.token_requests.recv() => {
                // Answered by the configuration in use now, beside the loop:
                // a refresh must not hold up a reload or the shutdown (which
                // waits for refreshes in flight itself).
                let context = running.context.clone();
                tokio::spawn(answer_token(context, request));
            }
            Some(request) = reloads.requests.recv() => {
                let outcome = match (reloads.load)() {
                    Ok(config) => {
                        let (next, outcome) = running.reload(config).await;
                        running = next;
                        outcome
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = &outcome {
                    tracing::error!(error = %logging::error_chain(e.as_ref()), "reload failed; the configuration in use is unchanged");
                }
                if let Some(reply) = request.reply {
                    let _ = reply.send(outcome.map_err(|e| logging::error_chain(e.as_ref())));
                }
            }
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
