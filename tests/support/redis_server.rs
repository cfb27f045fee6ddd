//! A real `redis-server` for the shared token store's tests: its own
//! process on a free port, its data (append-only file) in a temp dir, so a
//! restart keeps what was written. Without the binary, [`RedisServer::start`]
//! says the test is skipped and returns `None`, unless
//! `XOAUTH2_PROXY_REQUIRE_REDIS=1` (CI), where that is a failure.
//! [`RedisServer::start_tls`] starts one that speaks TLS only (`rediss://`)
//! with a certificate from the test PKI and a password.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pki::TestPki;

/// Set to 1 where the tests must not be skipped (CI installs redis-server).
pub const REQUIRE_ENV: &str = "XOAUTH2_PROXY_REQUIRE_REDIS";
/// How long a started server gets to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);

pub struct RedisServer {
    binary: PathBuf,
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    tls: Option<TlsServer>,
}

/// A TLS-only server's settings.
struct TlsServer {
    /// Required by the server (`requirepass`) and written into [`RedisServer::url`].
    password: String,
    /// For the readiness check: trusts the test CA only.
    client: Arc<rustls::ClientConfig>,
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

impl RedisServer {
    /// A fresh server, or `None` (the test returns) where there is none.
    pub fn start(test: &str) -> Option<RedisServer> {
        Self::start_with(test, None)
    }

    /// A fresh server that speaks TLS only, with a certificate for
    /// 127.0.0.1 and `localhost` signed by `pki`'s CA, and that requires
    /// `password`; `None` (the test returns) where there is no redis-server.
    /// A redis-server built without TLS fails the test: it does not start.
    pub fn start_tls(test: &str, pki: &TestPki, password: &str) -> Option<RedisServer> {
        Self::start_with(
            test,
            Some((
                pki,
                TlsServer {
                    password: password.to_owned(),
                    client: pki.client_config.clone(),
                },
            )),
        )
    }

    fn start_with(test: &str, tls: Option<(&TestPki, TlsServer)>) -> Option<RedisServer> {
        let Some(binary) = find_binary() else {
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{test}: redis-server not found, and {REQUIRE_ENV}=1 requires it");
            }
            println!("{test}: skipped: redis-server not found (set {REQUIRE_ENV}=1 to require it)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = tls.map(|(pki, tls)| {
            let (cert, key) = pki.leaf_pem(&["localhost", "127.0.0.1"]);
            std::fs::write(dir.path().join("server.pem"), cert).expect("write server.pem");
            std::fs::write(dir.path().join("server.key"), key).expect("write server.key");
            std::fs::copy(&pki.ca_file, dir.path().join("ca.pem")).expect("copy the CA");
            tls
        });
        let mut server = RedisServer {
            binary,
            child: None,
            port,
            dir,
            tls,
        };
        server.run();
        Some(server)
    }

    /// `redis://127.0.0.1:P/0`, or for a TLS server
    /// `rediss://:<password>@127.0.0.1:P/0`.
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{}/0", self.port),
            Some(tls) => format!("rediss://:{}@127.0.0.1:{}/0", tls.password, self.port),
        }
    }

    fn run(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new(&self.binary);
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(tls) => {
                let file = |name: &str| self.dir.path().join(name);
                command
                    .args(["--port", "0", "--tls-port", &port])
                    .arg("--tls-cert-file")
                    .arg(file("server.pem"))
                    .arg("--tls-key-file")
                    .arg(file("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(file("ca.pem"))
                    .args(["--tls-auth-clients", "no"])
                    .args(["--requirepass", &tls.password])
            }
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers() {
            assert!(
                started.elapsed() < READY_WITHIN,
                "redis-server did not answer on port {}{}",
                self.port,
                if self.tls.is_some() {
                    " over TLS (was it built with TLS? see its --tls-port)"
                } else {
                    ""
                }
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a PING gets its answer (over TLS, verified against the
    /// test CA, for a TLS server; there `-NOAUTH` is the answer too).
    fn answers(&self) -> bool {
        let Ok(tcp) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        let mut ping = |s: &mut dyn ReadWrite| {
            s.write_all(b"PING\r\n").is_ok()
                && s.read(&mut buf).is_ok_and(|n| {
                    buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH")
                })
        };
        match &self.tls {
            None => ping(&mut { tcp }),
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("an IP");
                let Ok(conn) = rustls::ClientConnection::new(tls.client.clone(), name) else {
                    return false;
                };
                ping(&mut rustls::StreamOwned::new(conn, tcp))
            }
        }
    }

    /// Kills the server (SIGKILL: what an outage looks like). The data
    /// written so far is in the append-only file.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
