//! The local page (`admin_listen`, default `127.0.0.1:8089`): every
//! account's state with a Sign in button, the device code panel, a health
//! line per listener. Server-rendered HTML, no script, no external asset.
//!
//! - `page.rs`: the HTML, a pure function of what it shows.
//! - `guard.rs`: `Host`/`Origin` checks, the CSRF token, the response headers.
//! - `routes.rs`: the handlers (page, sign-in, callback, device code).
//! - `pending.rs`: browser sign-ins waiting for their redirect.
//! - `device.rs`: device code sign-ins running in the background.
//!
//! The server outlives reloads: it reads the current configuration's
//! [`View`] from a watch channel that `Running::reload` updates.

mod device;
pub mod guard;
pub mod page;
pub mod pending;
mod routes;
pub(crate) mod serve;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::authcode::PendingSignIn;
use crate::auth::signin::LocalPassword;
use crate::config::{AccountConfig, AdminListen, Config};
use crate::drain::Sessions;
use crate::health::ListenerStats;
use crate::session::Context;

/// The largest request body accepted (the forms are a few hundred bytes).
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024;
/// Sign-in outcomes kept for the page, newest first.
pub(crate) const MAX_NOTICES: usize = 8;
/// At shutdown, how long requests in progress may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// One listener as the page sees it: what is configured, and where its
/// live figures come from.
pub(crate) struct ListenerView {
    pub protocol: String,
    pub listen: SocketAddr,
    pub upstream: String,
    /// The key of its upstream in `Context::upstream_health` (`host:port`).
    pub upstream_key: String,
    /// "SSL/TLS", "STARTTLS" or "none", for the mail client settings.
    pub security: &'static str,
    pub stats: Arc<ListenerStats>,
}

impl ListenerView {
    /// The row to render now.
    pub fn row(&self, context: &Context) -> page::ListenerRow {
        page::ListenerRow {
            protocol: self.protocol.clone(),
            listen: self.listen,
            upstream: self.upstream.clone(),
            security: self.security,
            open: self.stats.open(),
            upstream_seen: context.upstream_health.get(&self.upstream_key),
        }
    }
}

/// What the page shows and acts on: the configuration in use.
pub(crate) struct View {
    pub context: Arc<Context>,
    /// The configured accounts (catch-alls included, for their endpoints).
    pub accounts: Vec<AccountConfig>,
    pub listeners: Vec<ListenerView>,
    pub sessions: Arc<Sessions>,
    /// The configured `admin_listen`: a reload that changes it takes effect
    /// at the next start (the page keeps its port).
    pub admin_listen: AdminListen,
}

impl View {
    /// The view of a started configuration; `addrs`: the bound listener
    /// addresses, in the order of `config.listeners`.
    pub fn new(
        config: &Config,
        context: Arc<Context>,
        addrs: &[SocketAddr],
        stats: &[Arc<ListenerStats>],
        sessions: Arc<Sessions>,
    ) -> View {
        View {
            context,
            accounts: config.accounts.clone(),
            listeners: config
                .listeners
                .iter()
                .zip(addrs)
                .zip(stats)
                .map(|((l, addr), stats)| ListenerView {
                    protocol: l.protocol.to_string(),
                    listen: *addr,
                    upstream: l.upstream_name(),
                    // The key the sessions record under (`Target`'s host and port).
                    upstream_key: match l.upstream_host_port() {
                        Some((host, port)) => format!("{host}:{port}"),
                        None => String::new(),
                    },
                    security: l.client_security(),
                    stats: stats.clone(),
                })
                .collect(),
            sessions,
            admin_listen: config.proxy.admin_listen,
        }
    }
}

/// What the handlers share.
struct AppState {
    view: watch::Receiver<Arc<View>>,
    hosts: guard::Hosts,
    csrf: guard::CsrfToken,
    /// `http://localhost:PORT/`.
    page_url: String,
    /// Each with the local password chosen in its form (sealed accounts).
    pending: Mutex<pending::PendingMap<(PendingSignIn, Option<LocalPassword>)>>,
    device: device::Panels,
    notices: Mutex<VecDeque<page::Notice>>,
    /// Device code sign-ins running in the background.
    tasks: Mutex<JoinSet<()>>,
}

impl AppState {
    fn current(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    fn notify(&self, account: &str, ok: bool, text: impl Into<String>) {
        let mut notices = self.notices.lock();
        notices.retain(|n| !n.account.eq_ignore_ascii_case(account));
        notices.push_front(page::Notice {
            account: account.to_owned(),
            ok,
            text: text.into(),
        });
        notices.truncate(MAX_NOTICES);
    }

    fn redirect_uri(&self) -> String {
        format!(
            "{}{}",
            self.page_url.trim_end_matches('/'),
            crate::auth::loopback::CALLBACK_PATH
        )
    }
}

/// The page's address as a browser should open it: `localhost` for a
/// loopback or wildcard address (the redirect URI providers accept over
/// plain HTTP), else the address itself.
pub(crate) fn page_url(bound: SocketAddr) -> String {
    if bound.ip().is_loopback() || bound.ip().is_unspecified() {
        format!("http://localhost:{}/", bound.port())
    } else {
        format!("http://{bound}/")
    }
}

/// Binds `admin_listen`, if set. A failure is logged and the proxy runs
/// without the page: the mail listeners matter more.
pub async fn bind(config: &Config) -> Option<TcpListener> {
    let AdminListen::At(addr) = config.proxy.admin_listen else {
        return None;
    };
    match TcpListener::bind(addr).await {
        Ok(listener) => Some(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::error!(listen = %addr, "{}", crate::config::squatted_page_warning(addr));
            None
        }
        Err(e) => {
            tracing::warn!(listen = %addr, error = %e,
                "cannot listen for the sign-in page (proxy.admin_listen); running without it");
            None
        }
    }
}

/// The running page: owned by `Running`, stopped at its shutdown (or
/// aborted when dropped).
pub(crate) struct Admin {
    addr: SocketAddr,
    page_url: String,
    view: watch::Sender<Arc<View>>,
    shutdown: watch::Sender<bool>,
    state: Arc<AppState>,
    task: tokio::task::JoinHandle<()>,
}

impl Admin {
    /// Serves the page on `listener` (from [`bind`]).
    pub fn start(listener: TcpListener, config: &Config, view: View) -> std::io::Result<Admin> {
        let addr = listener.local_addr()?;
        let page_url = page_url(addr);
        let (view_tx, view_rx) = watch::channel(Arc::new(view));
        let state = Arc::new(AppState {
            view: view_rx,
            hosts: guard::Hosts::new(addr, config.proxy.admin_allow_remote),
            csrf: guard::CsrfToken::random(),
            page_url: page_url.clone(),
            pending: Mutex::new(pending::PendingMap::default()),
            device: device::Panels::default(),
            notices: Mutex::new(VecDeque::new()),
            tasks: Mutex::new(JoinSet::new()),
        });
        let (shutdown, stop) = watch::channel(false);
        let app = routes::router(state.clone());
        let timeouts = serve::Timeouts {
            request: Duration::from_secs(config.proxy.admin_timeout_secs),
        };
        let task = tokio::spawn(serve::serve(listener, app, timeouts, stop));
        tracing::info!("sign-in page: {page_url}");
        Ok(Admin {
            addr,
            page_url,
            view: view_tx,
            shutdown,
            state,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://localhost:PORT/`.
    pub(crate) fn page_url(&self) -> &str {
        &self.page_url
    }

    /// A reload: the page shows and acts on the new configuration.
    pub(crate) fn update(&self, view: View) {
        if view.admin_listen != self.view.borrow().admin_listen {
            tracing::warn!(listen = %self.addr,
                "proxy.admin_listen changed: the page stays where it is until the next start");
        }
        self.view.send_replace(Arc::new(view));
    }

    /// Stops serving (requests in progress get a moment) and cancels
    /// device code sign-ins still waiting.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        self.state.tasks.lock().abort_all();
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.task.abort();
        self.state.tasks.lock().abort_all();
    }
}
