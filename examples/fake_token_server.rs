//! The hermetic tests' fake token endpoint (`tests/support/token_server.rs`)
//! as a stand-alone HTTPS server, for the interop suite (`tests/interop/run.sh`):
//! the proxy signs in and refreshes against it, and Dovecot validates the
//! access tokens through its `/introspect` route. With `--graph-dir` it is
//! also Microsoft Graph for a `backend = "graph"` listener: `sendMail`, and
//! the draft, attachment and upload-session endpoints of large messages.
//!
//! ```sh
//! cargo run --example fake_token_server -- --listen 127.0.0.1:0 \
//!     --cert server.pem --key server.key --username user@example.test
//! ```
//!
//! Prints `listening on https://ADDR` once it accepts connections, then
//! serves until it is killed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use support::graph_server::{GraphState, router as graph_router};
use support::token_server::{TokenState, router};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(about = "The fake OAuth token endpoint of the tests, over HTTPS")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The server certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// The server certificate's private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// The mailbox that `/introspect` names as the owner of valid tokens.
    #[arg(long)]
    username: String,
    /// Refresh tokens to accept as if a sign-in had issued them (repeatable).
    #[arg(long = "refresh-token")]
    refresh_tokens: Vec<String>,
    /// Also serve Microsoft Graph's `sendMail` and drafts (bearer tokens
    /// checked against this server's), writing each message sent to this
    /// folder as `N.eml`, a draft's attachments beside it as `N.att-K`
    /// (the bytes) and `N.att-K.json` (name, contentType, isInline,
    /// contentId).
    #[arg(long)]
    graph_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = tls_config(&args)?;

    let state = Arc::new(TokenState::new());
    state.set_introspection_username(Some(&args.username));
    // Sign-ins (`authorize --device`) complete as the account's own user.
    state.set_signed_in_user(Some(&args.username));
    for token in &args.refresh_tokens {
        state.seed_refresh_token(token);
    }

    let tcp = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = tcp.local_addr()?;
    let listener = TlsListener::start(tcp, TlsAcceptor::from(tls), addr);
    println!("listening on https://{addr}");
    std::io::stdout().flush()?;
    let mut app = router(state.clone());
    if let Some(dir) = &args.graph_dir {
        let graph = Arc::new(GraphState::default());
        *graph.save_dir.lock().expect("not poisoned") = Some(dir.clone());
        // Upload URLs point back here, over HTTPS like the rest.
        *graph.upload_scheme.lock().expect("not poisoned") = Some("https");
        app = app.merge(graph_router(graph, state));
    }
    axum::serve(listener, app).await?;
    Ok(())
}

fn tls_config(args: &Args) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(&args.cert)
        .with_context(|| format!("cannot read {}", args.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", args.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .with_context(|| format!("cannot read a PEM private key from {}", args.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not match")?;
    Ok(Arc::new(config))
}

/// Accepts TCP connections and hands over those whose TLS handshake
/// succeeded; handshakes run concurrently, so one stalled client does not
/// hold up the others.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    fn start(tcp: TcpListener, acceptor: TlsAcceptor, addr: SocketAddr) -> Self {
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        eprintln!("fake_token_server: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            eprintln!("fake_token_server: TLS handshake with {peer}: {e}")
                        }
                        Err(_) => {
                            eprintln!("fake_token_server: TLS handshake with {peer} timed out")
                        }
                    }
                });
            }
        });
        TlsListener { ready, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
