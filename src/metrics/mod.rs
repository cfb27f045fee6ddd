//! `metrics_listen`: Prometheus metrics at `/metrics`, encoded by
//! `prometheus-client`. The counting is done below (`health::Counters`,
//! per listener; `auth::tokens` per account); this module only gathers at
//! a scrape (process and account figures read from the token manager in
//! use) and serves the text (`serve.rs`).

mod serve;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::tokens::RefreshOutcome;
use crate::config::{Config, Network};
use crate::health::Counters;
use crate::session::Context;

/// Every metric's name starts with this.
pub(crate) const PREFIX: &str = "xoauth2_proxy";
/// Hex digits of an address's SHA-256 in its label: 48 bits, no collision
/// among any office's accounts, and not an address.
const ACCOUNT_HASH_HEX: usize = 12;
/// Requests in progress get this long at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What a scrape reads that a reload replaces.
struct Current {
    context: Arc<Context>,
    account_labels: bool,
    allow_from: Vec<Network>,
}

/// The running metrics server: owned by `Running`, stopped at its shutdown.
pub(crate) struct Metrics {
    addr: SocketAddr,
    current: Arc<RwLock<Current>>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Binds `metrics_listen`, if set. Unlike the page's, a failure stops the
/// start: whoever set the key watches for it.
pub(crate) async fn bind(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = config.proxy.metrics_listen else {
        return Ok(None);
    };
    TcpListener::bind(addr).await.map(Some).map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} for metrics (proxy.metrics_listen): {e}")
    })
}

impl Metrics {
    /// Serves `/metrics` on `listener` (from [`bind`]).
    pub(crate) fn start(
        listener: TcpListener,
        config: &Config,
        context: Arc<Context>,
        counters: &Counters,
    ) -> std::io::Result<Metrics> {
        let addr = listener.local_addr()?;
        let current = Arc::new(RwLock::new(Current::new(config, context)));
        let mut registry = Registry::with_prefix(PREFIX);
        counters.register(&mut registry);
        registry.register(
            "build",
            "The proxy's version and commit",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("XOAUTH2_PROXY_COMMIT")),
            ]),
        );
        registry.register_collector(Box::new(Scraped {
            current: current.clone(),
            started: Instant::now(),
        }));
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(serve::serve(
            listener,
            Arc::new(registry),
            current.clone(),
            stop,
        ));
        tracing::info!(listen = %addr, "metrics: http://{addr}/metrics");
        Ok(Metrics {
            addr,
            current,
            shutdown,
            task,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A reload: scrapes read the new token manager and settings.
    pub(crate) fn update(&self, config: &Config, context: Arc<Context>) {
        if config
            .proxy
            .metrics_listen
            .is_some_and(|a| a != self.addr && a.port() != 0)
        {
            tracing::warn!(listen = %self.addr,
                "proxy.metrics_listen changed: metrics stay where they are until the next start");
        }
        *self.current.write() = Current::new(config, context);
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Current {
    fn new(config: &Config, context: Arc<Context>) -> Current {
        Current {
            context,
            account_labels: config.proxy.metrics_account_labels,
            allow_from: config.proxy.metrics_allow_from.clone(),
        }
    }
}

/// An account's label: its address with `metrics_account_labels`, else the
/// first hex digits of the SHA-256 of the (lower-case) address, stable
/// across restarts, so a dashboard can follow one account without the
/// scraper learning who it is.
pub(crate) fn account_label(address: &str, addresses: bool) -> String {
    let address = address.to_ascii_lowercase();
    if addresses {
        return address;
    }
    let digest = Sha256::digest(address.as_bytes());
    let mut hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex.truncate(ACCOUNT_HASH_HEX);
    hex
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    account: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    account: String,
    outcome: &'static str,
}

/// The figures computed at a scrape: uptime, and per account its refresh
/// counts, its access token's life left and the time since its last
/// successful refresh (from the token manager in use).
struct Scraped {
    current: Arc<RwLock<Current>>,
    started: Instant,
}

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scraped")
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let uptime = ConstGauge::new(self.started.elapsed().as_secs_f64());
        uptime.encode(encoder.encode_descriptor(
            "uptime_seconds",
            "Seconds since the proxy started",
            None,
            MetricType::Gauge,
        )?)?;

        let (figures, addresses) = {
            let current = self.current.read();
            (
                current.context.gate.tokens().refresh_figures(),
                current.account_labels,
            )
        };
        let label = |username: &str| account_label(username, addresses);

        let mut refreshes = encoder.encode_descriptor(
            "token_refreshes",
            "Token refreshes (and app-only token requests) per account, by outcome",
            None,
            MetricType::Counter,
        )?;
        for row in &figures {
            for (outcome, n) in RefreshOutcome::ALL.iter().zip(row.by_outcome) {
                let labels = RefreshLabels {
                    account: label(&row.username),
                    outcome: outcome.name(),
                };
                ConstCounter::new(n).encode(refreshes.encode_family(&labels)?)?;
            }
        }

        let mut expires = encoder.encode_descriptor(
            "access_token_expires_in_seconds",
            "Seconds until the account's access token in memory expires",
            None,
            MetricType::Gauge,
        )?;
        for row in &figures {
            if let Some(left) = row.expires_in {
                let labels = AccountLabels {
                    account: label(&row.username),
                };
                ConstGauge::new(left.as_secs() as i64).encode(expires.encode_family(&labels)?)?;
            }
        }

        let mut since = encoder.encode_descriptor(
            "seconds_since_last_refresh",
            "Seconds since the account's last successful token refresh in this process",
            None,
            MetricType::Gauge,
        )?;
        let now = SystemTime::now();
        for row in &figures {
            if let Some(at) = row.last_ok {
                let labels = AccountLabels {
                    account: label(&row.username),
                };
                let secs = now.duration_since(at).unwrap_or_default().as_secs();
                ConstGauge::new(secs as i64).encode(since.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_labels_are_a_stable_hash_unless_addresses_are_asked_for() {
        let hashed = account_label("Alice@Contoso.com", false);
        assert_eq!(hashed.len(), ACCOUNT_HASH_HEX);
        assert!(hashed.chars().all(|c| c.is_ascii_hexdigit()), "{hashed}");
        assert_eq!(hashed, account_label("alice@contoso.com", false));
        assert_ne!(hashed, account_label("bob@contoso.com", false));
        // The first 12 hex digits of SHA-256("alice@contoso.com").
        let full = Sha256::digest(b"alice@contoso.com");
        assert_eq!(
            hashed,
            format!(
                "{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                full[0], full[1], full[2], full[3], full[4], full[5]
            )
        );
        assert_eq!(
            account_label("Alice@Contoso.com", true),
            "alice@contoso.com"
        );
    }
}
