//! A real `redis-server` for the shared token store's tests: its own
//! process on a free port, its data (append-only file) in a temp dir, so a
//! restart keeps what was written. Without the binary, [`RedisServer::start`]
//! says the test is skipped and returns `None`, unless
//! `XOAUTH2_PROXY_REQUIRE_REDIS=1` (CI), where that is a failure.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set to 1 where the tests must not be skipped (CI installs redis-server).
pub const REQUIRE_ENV: &str = "XOAUTH2_PROXY_REQUIRE_REDIS";
/// How long a started server gets to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);

pub struct RedisServer {
    binary: PathBuf,
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
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
        let mut server = RedisServer {
            binary,
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        server.run();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn run(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
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
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
