//! Starts the proxy in-process against the fakes in `tests/support`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use secrecy::SecretString;
use xoauth2_proxy::Running;
use xoauth2_proxy::auth::vault::{StoredTokens, TokenStore};
use xoauth2_proxy::config::Config;

use crate::support::{FakeTokenServer, TestPki, USER};

/// The password the tests' mail clients use.
pub const PASSWORD: &str = "hunter2";
/// The refresh token every test starts with.
pub const SEED_REFRESH: &str = "rt-seed";

/// One proxy listener: protocol, upstream address, upstream TLS mode.
pub struct Upstream {
    pub protocol: &'static str,
    pub addr: SocketAddr,
    pub tls: &'static str,
}

pub fn imap(addr: SocketAddr) -> Upstream {
    Upstream {
        protocol: "imap",
        addr,
        tls: "implicit",
    }
}
pub fn imap_starttls(addr: SocketAddr) -> Upstream {
    Upstream {
        protocol: "imap",
        addr,
        tls: "starttls",
    }
}
pub fn pop3(addr: SocketAddr) -> Upstream {
    Upstream {
        protocol: "pop3",
        addr,
        tls: "implicit",
    }
}
pub fn smtp(addr: SocketAddr) -> Upstream {
    Upstream {
        protocol: "smtp",
        addr,
        tls: "starttls",
    }
}

/// The configuration text for one account and the given listeners.
/// `token_url` is the fake's base URL (or a dead one).
pub fn config_text(
    pki: &TestPki,
    state_dir: &Path,
    token_base: &str,
    upstreams: &[Upstream],
    proxy_extra: &str,
) -> String {
    let listeners: Vec<Listener<'_>> = upstreams
        .iter()
        .map(|u| Listener {
            upstream: u,
            listen: "127.0.0.1:0",
            extra: "",
        })
        .collect();
    config_text_listeners(pki, state_dir, token_base, &listeners, proxy_extra)
}

/// One `[[listener]]` with its address and extra lines (`local_tls = …`, `allow_from = […]`).
pub struct Listener<'a> {
    pub upstream: &'a Upstream,
    pub listen: &'a str,
    pub extra: &'a str,
}

/// [`config_text`] with listener-specific settings. The `[[account]]` comes last, so a
/// caller may append account keys (e.g. `password_hash`).
pub fn config_text_listeners(
    pki: &TestPki,
    state_dir: &Path,
    token_base: &str,
    listeners: &[Listener<'_>],
    proxy_extra: &str,
) -> String {
    // Many proxies run at once: no local page unless a test asks for one.
    let admin = if proxy_extra.contains("admin_listen") {
        ""
    } else {
        "admin_listen = \"off\"\n"
    };
    let mut text = format!(
        "[proxy]\nstate_dir = {state:?}\nca_file = {ca:?}\nconnect_timeout_secs = 5\n{admin}{proxy_extra}\n",
        state = state_dir.display().to_string(),
        ca = pki.ca_file.display().to_string(),
    );
    for l in listeners {
        let u = l.upstream;
        text.push_str(&format!(
            "[[listener]]\nprotocol = \"{}\"\nlisten = \"{}\"\nupstream = \"{}\"\nupstream_tls = \"{}\"\n{}\n\n",
            u.protocol, l.listen, u.addr, u.tls, l.extra
        ));
    }
    text.push_str(&format!(
        "[[account]]\nusername = \"{USER}\"\nprovider = \"custom\"\nclient_id = \"test-client\"\n\
         token_url = \"{token_base}/token\"\ndevice_code_url = \"{token_base}/devicecode\"\n\
         scopes = [\"https://outlook.office.com/IMAP.AccessAsUser.All\", \"offline_access\"]\n"
    ));
    text
}

/// Writes the signed-in state `authorize` leaves behind: a refresh token, no
/// access token, sealed under [`PASSWORD`] (chosen at sign-in), and tells
/// the fake token endpoint to accept it.
pub fn seed_tokens(state_dir: &Path, tokens: &FakeTokenServer) {
    tokens.state.seed_refresh_token(SEED_REFRESH);
    seal_tokens(
        state_dir,
        USER,
        PASSWORD,
        &StoredTokens {
            refresh_token: Some(SecretString::from(SEED_REFRESH.to_owned())),
            access_token: None,
            expires_at: None,
        },
    );
}

/// The signed-in state of an unattended (`password_hash`) account: its
/// sign-in stores the tokens unsealed (its password is in the configuration).
pub fn seed_unattended_tokens(state_dir: &Path, tokens: &FakeTokenServer) {
    tokens.state.seed_refresh_token(SEED_REFRESH);
    TokenStore::new(state_dir)
        .save(
            USER,
            &StoredTokens {
                refresh_token: Some(SecretString::from(SEED_REFRESH.to_owned())),
                access_token: None,
                expires_at: None,
            },
        )
        .expect("seed the token store");
}

/// Stores `tokens` for `user` as a sign-in does: sealed under `password`
/// with the proxy's KDF parameters (so its first login runs the KDF once).
pub fn seal_tokens(state_dir: &Path, user: &str, password: &str, tokens: &StoredTokens) {
    use xoauth2_proxy::auth::password::{KdfParams, SealKey, random_salt};
    let key = SealKey::derive(password.as_bytes(), KdfParams::CURRENT, random_salt())
        .expect("derive the sealing key");
    TokenStore::new(state_dir)
        .save_sealed(user, tokens, &key)
        .expect("seed the token store");
}

pub async fn start(text: &str) -> Running {
    let config = Config::parse(text, Path::new("test.toml")).expect("test config is valid");
    xoauth2_proxy::start(config).await.expect("proxy starts")
}

/// A proxy in front of the given upstreams, with tokens seeded.
pub struct Proxy {
    pub pki: TestPki,
    pub tokens: FakeTokenServer,
    pub state_dir: tempfile::TempDir,
    pub running: Running,
}

impl Proxy {
    /// Starts the proxy of `text` and keeps what it runs with.
    pub async fn start(
        pki: TestPki,
        tokens: FakeTokenServer,
        state_dir: tempfile::TempDir,
        text: &str,
    ) -> Proxy {
        let running = start(text).await;
        Proxy {
            pki,
            tokens,
            state_dir,
            running,
        }
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.running.addrs[i]
    }
}

/// An address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

/// A TLS client configuration that trusts only the certificate the proxy generated in
/// `state_dir/certs/` (as a user does after `xoauth2-proxy cert show`).
pub fn trust_generated_cert(state_dir: &Path) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = state_dir.join("certs").join("local-cert.pem");
    let cert = CertificateDer::from_pem_file(&path)
        .unwrap_or_else(|e| panic!("read the generated certificate {}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert)
        .expect("the generated certificate is a usable trust anchor");
    let config = rustls::ClientConfig::builder_with_provider(crate::support::pki::provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// The fakes and a signed-in state directory, for tests that start several
/// proxies with different listener settings.
pub struct Setup {
    pub pki: TestPki,
    pub tokens: FakeTokenServer,
    pub state_dir: tempfile::TempDir,
}

impl Setup {
    /// A scanner's SMTP listener on `listen` to `upstream`: no client login
    /// (`fixed_account` is [`USER`]), `MAIL FROM` limited to `senders`, plus
    /// the listener lines in `extra`. The account is unattended (a
    /// `password_hash`), so its sign-in left its tokens unsealed.
    pub async fn fixed_relay(
        &self,
        upstream: SocketAddr,
        listen: &str,
        senders: &[&str],
        extra: &str,
    ) -> Running {
        self.fixed_relay_in(upstream, listen, senders, extra, "")
            .await
    }

    /// [`Setup::fixed_relay`] with `proxy_extra` in `[proxy]`.
    pub async fn fixed_relay_in(
        &self,
        upstream: SocketAddr,
        listen: &str,
        senders: &[&str],
        extra: &str,
        proxy_extra: &str,
    ) -> Running {
        let m = smtp(upstream);
        let senders: Vec<String> = senders.iter().map(|s| format!("\"{s}\"")).collect();
        let lines = format!(
            "allow_from = [\"127.0.0.0/8\"]\nallow_plaintext = true\nfixed_account = \"{USER}\"\n\
             allowed_senders = [{}]\n{extra}",
            senders.join(", ")
        );
        let mut text = self.config(
            &[Listener {
                upstream: &m,
                listen,
                extra: &lines,
            }],
            proxy_extra,
        );
        let hash = xoauth2_proxy::auth::password::hash_password(b"unused by the relay")
            .expect("hash a password");
        text.push_str(&format!("password_hash = \"{hash}\"\n"));
        seed_unattended_tokens(self.state_dir.path(), &self.tokens);
        start(&text).await
    }
}

pub async fn setup() -> Setup {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    Setup {
        pki,
        tokens,
        state_dir,
    }
}

impl Setup {
    /// [`config_text_listeners`] for these fakes and this state directory.
    pub fn config(&self, listeners: &[Listener<'_>], proxy_extra: &str) -> String {
        config_text_listeners(
            &self.pki,
            self.state_dir.path(),
            &self.tokens.url(),
            listeners,
            proxy_extra,
        )
    }

    /// A client TLS configuration trusting the certificate the proxy generated.
    pub fn trust(&self) -> std::sync::Arc<rustls::ClientConfig> {
        trust_generated_cert(self.state_dir.path())
    }
}

/// A login through the gate as the drivers make it, returning the `user=`
/// for the upstream and the token.
pub trait GateLogin {
    /// From a source address of its own at each call, so the throttle
    /// (tested on its own) never delays these checks.
    async fn token_for(
        &self,
        credentials: &xoauth2_proxy::sasl::Credentials,
    ) -> Result<(String, SecretString), xoauth2_proxy::protocol::Failure>;

    /// From `peer`, throttled as a client from there would be.
    async fn token_for_peer(
        &self,
        peer: std::net::IpAddr,
        credentials: &xoauth2_proxy::sasl::Credentials,
    ) -> Result<(String, SecretString), xoauth2_proxy::protocol::Failure>;
}

impl GateLogin for xoauth2_proxy::session::Context {
    async fn token_for(
        &self,
        credentials: &xoauth2_proxy::sasl::Credentials,
    ) -> Result<(String, SecretString), xoauth2_proxy::protocol::Failure> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let source = std::net::Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff));
        self.token_for_peer(source.into(), credentials).await
    }

    async fn token_for_peer(
        &self,
        peer: std::net::IpAddr,
        credentials: &xoauth2_proxy::sasl::Credentials,
    ) -> Result<(String, SecretString), xoauth2_proxy::protocol::Failure> {
        self.login(credentials, SocketAddr::new(peer, 0))
            .await
            .map(|g| (g.upstream_user().to_owned(), g.token))
    }
}
