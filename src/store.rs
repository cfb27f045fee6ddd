//! The shared token store's engine: a Redis (or Valkey) server several
//! proxies use at once. This module knows keys, bytes and locks only; what
//! the bytes mean (the same envelopes as the token files) is
//! `auth::vault`'s. Every key starts with `xoauth2-proxy:<name>:`, the
//! configuration's name (`token_store_name`), so unrelated deployments
//! can share one server.
//!
//! Locks are `SET key <random> NX PX ttl`, released or renewed only by
//! their holder (compare-and-delete / compare-and-expire scripts), and a
//! write under the store lock is fenced: the script writes only while the
//! lock is still the writer's, so a writer whose lock expired (a stalled
//! or killed process) cannot overwrite what the next holder wrote.
//!
//! The client is `redis`'s synchronous one: the token store's API is
//! synchronous (it runs on blocking threads, and in the CLI commands).

use std::path::Path;
use std::time::Duration;

use parking_lot::Mutex;
use secrecy::ExposeSecret;

use crate::config::{REDIS_PASSWORD_ENV, RedisUrl};

/// How long connecting to the server may take before it counts as
/// unreachable: a server on the network answers in milliseconds; a login
/// waiting on a dead one must not hang.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may take: the commands are small (one key).
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How many keys one `SCAN` step asks for (listing entries for `migrate`).
const SCAN_COUNT: usize = 500;

/// The store cannot be reached (or refused us): the tokens in hand are
/// used, refreshes wait. Never holds the URL's password.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the token store {store} is unreachable: {reason}")]
pub struct Unreachable {
    pub store: String,
    pub reason: String,
}

/// Deletes the lock at KEYS[1] only if it holds ARGV[1].
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Extends the lock at KEYS[1] to ARGV[2] ms only if it holds ARGV[1].
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Sets KEYS[2] to ARGV[2] (or deletes it when ARGV[3] is `del`) only while
/// the lock KEYS[1] holds ARGV[1], and counts the change in KEYS[3].
/// Returns -1 when the lock is not ours, else 1 if KEYS[2] existed before.
const FENCED_WRITE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local existed = redis.call('EXISTS', KEYS[2])
if ARGV[3] == 'del' then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], ARGV[2])
end
redis.call('INCR', KEYS[3])
return existed";

pub struct Redis {
    client: redis::Client,
    /// One connection, made on first use and again after an error.
    conn: Mutex<Option<redis::Connection>>,
    prefix: String,
    shown: String,
    unlock: redis::Script,
    renew: redis::Script,
    write: redis::Script,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redis({} {})", self.shown, self.prefix)
    }
}

impl Redis {
    /// A client for `url` (nothing is connected yet). The password comes from
    /// the URL, else from [`REDIS_PASSWORD_ENV`]. A `rediss://` server is
    /// verified against the system's roots, or `ca_file` when set.
    pub fn open(url: &RedisUrl, name: &str, ca_file: Option<&Path>) -> Result<Redis, Unreachable> {
        let shown = url.shown().to_owned();
        let failed = |reason: String| Unreachable {
            store: shown.clone(),
            reason,
        };
        let mut parsed = url::Url::parse(url.expose()).map_err(|e| failed(e.to_string()))?;
        if parsed.password().is_none()
            && let Ok(password) = std::env::var(REDIS_PASSWORD_ENV)
            && !password.is_empty()
        {
            let password = secrecy::SecretString::from(password);
            if parsed.username().is_empty() {
                let _ = parsed.set_username("default");
            }
            parsed
                .set_password(Some(password.expose_secret()))
                .map_err(|()| failed("the URL cannot take a password".into()))?;
        }
        let client = if url.tls() {
            // redis builds its rustls configuration with the process's
            // default provider: the ring one, as everywhere in this program.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let root_cert =
                match ca_file {
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        failed(format!("cannot read ca_file {}: {e}", path.display()))
                    })?),
                    None => None,
                };
            redis::Client::build_with_tls(
                parsed,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert,
                },
            )
        } else {
            redis::Client::open(parsed)
        }
        .map_err(|e| failed(describe(&e)))?;
        Ok(Redis {
            client,
            conn: Mutex::new(None),
            prefix: format!("xoauth2-proxy:{name}:"),
            shown,
            unlock: redis::Script::new(UNLOCK),
            renew: redis::Script::new(RENEW),
            write: redis::Script::new(FENCED_WRITE),
        })
    }

    /// The URL without its password, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The full key for `suffix` under this configuration's prefix.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// The prefix every key of this configuration starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs `work` on the connection, made first if there is none. A kept
    /// connection found broken (the server restarted since) is made again
    /// and `work` tried once more; every command here is safe to repeat.
    fn with<T>(
        &self,
        mut work: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Unreachable> {
        let mut slot = self.conn.lock();
        let kept = slot.is_some();
        for attempt in 0..2 {
            if slot.is_none() {
                *slot = Some(self.connect()?);
            }
            let conn = slot.as_mut().expect("connected above");
            match work(conn) {
                Ok(value) => return Ok(value),
                Err(e) => {
                    // A server's refusal of one command keeps the connection.
                    let broken = e.is_io_error() || e.is_connection_dropped() || e.is_timeout();
                    if broken {
                        *slot = None;
                    }
                    if !(broken && kept && attempt == 0 && !e.is_timeout()) {
                        return Err(self.unreachable(&e));
                    }
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    fn connect(&self) -> Result<redis::Connection, Unreachable> {
        self.client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .and_then(|c| {
                c.set_read_timeout(Some(IO_TIMEOUT))?;
                c.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(c)
            })
            .map_err(|e| self.unreachable(&e))
    }

    fn unreachable(&self, e: &redis::RedisError) -> Unreachable {
        Unreachable {
            store: self.shown.clone(),
            reason: describe(e),
        }
    }

    /// Answers a PING: for `doctor` and the page.
    pub fn ping(&self) -> Result<(), Unreachable> {
        self.with(|c| redis::cmd("PING").query::<String>(c))
            .map(drop)
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Unreachable> {
        self.with(|c| redis::cmd("GET").arg(key).query(c))
    }

    /// Takes the lock `key` for `ttl` if nobody holds it.
    pub fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, Unreachable> {
        let ms = ttl.as_millis().max(1) as u64;
        let set: Option<String> = self.with(|c| {
            redis::cmd("SET")
                .arg(key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query(c)
        })?;
        Ok(set.is_some())
    }

    /// Extends our lock `key` to `ttl` from now; false if it is no longer ours.
    pub fn renew(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, Unreachable> {
        let ms = ttl.as_millis().max(1) as u64;
        let n: i64 = self.with(|c| self.renew.key(key).arg(token).arg(ms).invoke(c))?;
        Ok(n == 1)
    }

    /// Releases our lock `key`; false if it was no longer ours.
    pub fn unlock(&self, key: &str, token: &str) -> Result<bool, Unreachable> {
        let n: i64 = self.with(|c| self.unlock.key(key).arg(token).invoke(c))?;
        Ok(n == 1)
    }

    /// Sets (`Some`) or deletes (`None`) `key` while `lock` is held with
    /// `token`. `Ok(None)`: the lock is no longer ours, nothing written;
    /// `Ok(Some(existed))` otherwise.
    pub fn fenced_write(
        &self,
        lock: &str,
        token: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<Option<bool>, Unreachable> {
        let changes = self.key("changes");
        let n: i64 = self.with(|c| {
            self.write
                .key(lock)
                .key(key)
                .key(&changes)
                .arg(token)
                .arg(value.unwrap_or_default())
                .arg(if value.is_some() { "set" } else { "del" })
                .invoke(c)
        })?;
        Ok((n >= 0).then_some(n == 1))
    }

    /// The change counter: every fenced write adds one.
    pub fn changes(&self) -> Result<u64, Unreachable> {
        let n: Option<u64> = self.with(|c| redis::cmd("GET").arg(self.key("changes")).query(c))?;
        Ok(n.unwrap_or(0))
    }

    /// Every key that starts with `prefix` (under this configuration).
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, Unreachable> {
        let pattern = format!("{}*", escape_glob(&self.key(prefix)));
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = self.with(|c| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query(c)
            })?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

/// A random lock token (128 bits, hex).
pub fn lock_token() -> String {
    use std::fmt::Write as _;
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A Redis error in words, without the URL (which may hold a password).
fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        return "no answer in time".into();
    }
    if e.is_connection_refusal() {
        return "connection refused".into();
    }
    if let Some(cert) = certificate_error(e) {
        return format!(
            "its TLS certificate is not trusted ({cert}): check proxy.ca_file (without it, the \
             system's roots are used)"
        );
    }
    // Server replies (`WRONGPASS …`, `NOAUTH …`) and I/O errors; neither
    // repeats the URL.
    e.to_string()
}

/// The rustls verdict on a `rediss://` server's certificate, when that is
/// why connecting failed. redis keeps the I/O error (which holds rustls's)
/// behind an `Arc` as its source.
fn certificate_error(e: &redis::RedisError) -> Option<&rustls::Error> {
    use std::error::Error as _;
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let source = e.source()?;
    let source: &(dyn std::error::Error + 'static) = match source.downcast_ref::<Shared>() {
        Some(shared) => shared.as_ref(),
        None => source,
    };
    let io = source.downcast_ref::<std::io::Error>()?;
    let rustls = io.get_ref()?.downcast_ref::<rustls::Error>()?;
    matches!(rustls, rustls::Error::InvalidCertificate(_)).then_some(rustls)
}

/// `text` with the glob characters of `SCAN MATCH` escaped.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn lock_tokens_differ() {
        assert_eq!(lock_token().len(), 32);
        assert_ne!(lock_token(), lock_token());
    }

    #[test]
    fn debug_and_errors_hide_the_password() {
        let url = RedisUrl::parse("redis://u:topsecret@127.0.0.1:1/0").unwrap();
        let store = Redis::open(&url, "t", None).unwrap();
        assert!(!format!("{store:?}").contains("topsecret"));
        let e = store.ping().unwrap_err();
        assert!(!e.to_string().contains("topsecret"), "{e}");
    }
}
