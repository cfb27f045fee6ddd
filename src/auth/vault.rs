//! The token store on disk: one file per account under `state_dir/tokens/`.
//!
//! Writes are atomic (temp file, fsync, rename, directory fsync) and
//! owner-only, so a crash leaves either the old or the new tokens, never
//! neither. The file is a versioned JSON envelope in one of two states:
//!
//! - unsealed: the tokens in clear (owner-only), for accounts with
//!   `password_hash` only. A delegated account's tokens are sealed from
//!   their first write ([`super::signin`]); an unsealed entry of one (an
//!   older version's pending state) is refused at login, never bound.
//!   Version 1 files (before sealing existed) read as unsealed.
//! - sealed: the tokens encrypted with XChaCha20-Poly1305 under a key
//!   derived from the local password ([`SealKey`]); beside the ciphertext,
//!   the KDF parameters and salt (so they can be raised later), a random
//!   nonce fresh for every write, and a check value that tells a wrong
//!   password from a damaged file. The account name, parameters and salt
//!   are bound to the ciphertext as associated data.

use parking_lot::Mutex;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::password::{KdfParams, SALT_LEN, SealKey, fill_random};

/// The envelope format this build writes. 1: tokens in clear; 2: adds sealing.
const FORMAT_VERSION: u32 = 2;
/// The only KDF this build seals with; named in the file so another can follow.
const KDF_ARGON2ID: &str = "argon2id";
/// XChaCha20-Poly1305's nonce: 24 random bytes, safe to draw at random per write.
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {path}: {cause}")]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} is damaged or not a token file ({reason})")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} was written by a newer xoauth2-proxy (format {version})")]
    TooNew { path: PathBuf, version: u32 },
    #[error("{path} is sealed with the local password; it opens only at a client login")]
    Sealed { path: PathBuf },
    /// The shared store cannot be reached: keep the tokens in hand, retry later.
    #[error(transparent)]
    Unreachable(#[from] crate::store::Unreachable),
    /// A write under the shared store's lock found the lock gone (held past
    /// [`STORE_LOCK_TTL`], then taken by another writer): nothing written.
    #[error("the token store's lock expired during a write; nothing was written")]
    LockLost,
}

/// An account's tokens as kept between runs.
#[derive(Default)]
pub struct StoredTokens {
    pub refresh_token: Option<SecretString>,
    pub access_token: Option<SecretString>,
    /// Wall-clock expiry of the access token, seconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for StoredTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTokens")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What an account's file holds.
#[derive(Debug)]
pub enum Entry {
    /// Tokens in clear: a `password_hash` account's (or an older version's
    /// pending entry, which a login refuses).
    Unsealed(StoredTokens),
    Sealed(SealedTokens),
}

/// A sealed entry as read from disk; [`SealedTokens::open`] needs the key.
pub struct SealedTokens {
    path: PathBuf,
    account: String,
    params: KdfParams,
    salt: [u8; SALT_LEN],
    check: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedTokens")
            .field("path", &self.path)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the password does not open the sealed tokens")]
    WrongPassword,
    #[error(transparent)]
    Damaged(StoreError),
}

impl SealedTokens {
    /// The parameters and salt to derive this entry's key with.
    pub fn params(&self) -> KdfParams {
        self.params
    }

    pub fn salt(&self) -> [u8; SALT_LEN] {
        self.salt
    }

    /// Whether `key` (derived from a password) is this entry's key; constant time.
    pub fn key_matches(&self, key: &SealKey) -> bool {
        key.params() == self.params && key.salt() == self.salt && key.check_matches(&self.check)
    }

    /// Decrypts the tokens. A key whose check fails is a wrong password; a
    /// right key that does not open the ciphertext means the file was damaged.
    pub fn open(&self, key: &SealKey) -> Result<StoredTokens, OpenError> {
        if !self.key_matches(key) {
            return Err(OpenError::WrongPassword);
        }
        let damaged = |reason: &str| {
            OpenError::Damaged(StoreError::Corrupt {
                path: self.path.clone(),
                reason: reason.to_owned(),
            })
        };
        let aad = associated_data(&self.account, self.params, &self.salt);
        let plain = XChaCha20Poly1305::new(key.seal_key().into())
            .decrypt(
                XNonce::from_slice(&self.nonce),
                Payload {
                    msg: &self.ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| damaged("the sealed tokens fail their integrity check"))?;
        let payload: Payload2 = serde_json::from_slice(&plain)
            .map_err(|_| damaged("the sealed tokens are not a token record"))?;
        Ok(payload.into_tokens())
    }
}

/// The sealed part of a version 2 envelope.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealFields {
    kdf: String,
    memory_kib: u32,
    iterations: u32,
    lanes: u32,
    salt: String,
    check: String,
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    version: u32,
    account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<SealFields>,
}

impl Drop for Envelope {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.refresh_token.zeroize();
        self.access_token.zeroize();
    }
}

/// The tokens inside a seal (the same three fields as in clear).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload2 {
    refresh_token: Option<String>,
    access_token: Option<String>,
    expires_at: Option<u64>,
}

impl Payload2 {
    fn from_tokens(tokens: &StoredTokens) -> Payload2 {
        Payload2 {
            refresh_token: tokens
                .refresh_token
                .as_ref()
                .map(|s| s.expose_secret().to_owned()),
            access_token: tokens
                .access_token
                .as_ref()
                .map(|s| s.expose_secret().to_owned()),
            expires_at: tokens.expires_at,
        }
    }

    fn into_tokens(mut self) -> StoredTokens {
        StoredTokens {
            refresh_token: self.refresh_token.take().map(SecretString::from),
            access_token: self.access_token.take().map(SecretString::from),
            expires_at: self.expires_at,
        }
    }
}

impl Drop for Payload2 {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.refresh_token.zeroize();
        self.access_token.zeroize();
    }
}

/// Binds the ciphertext to its account and key parameters, so a sealed
/// entry copied to another account's file, or with edited parameters, fails.
fn unsealed_envelope(account: &str, tokens: &StoredTokens) -> Envelope {
    Envelope {
        version: FORMAT_VERSION,
        account: account.to_owned(),
        refresh_token: tokens
            .refresh_token
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        access_token: tokens
            .access_token
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        expires_at: tokens.expires_at,
        sealed: None,
    }
}

fn sealed_envelope(account: &str, tokens: &StoredTokens, key: &SealKey) -> Envelope {
    let plain = Zeroizing::new(
        serde_json::to_vec(&Payload2::from_tokens(tokens)).expect("token record serialises"),
    );
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce);
    let params = key.params();
    let salt = key.salt();
    let aad = associated_data(account, params, &salt);
    let ciphertext = XChaCha20Poly1305::new(key.seal_key().into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &aad,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any length this small");
    Envelope {
        version: FORMAT_VERSION,
        account: account.to_owned(),
        refresh_token: None,
        access_token: None,
        expires_at: None,
        sealed: Some(SealFields {
            kdf: KDF_ARGON2ID.to_owned(),
            memory_kib: params.memory_kib,
            iterations: params.iterations,
            lanes: params.lanes,
            salt: B64.encode(salt),
            check: B64.encode(key.check_value()),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        }),
    }
}

fn associated_data(account: &str, params: KdfParams, salt: &[u8]) -> Vec<u8> {
    format!(
        "xoauth2-proxy tokens v{FORMAT_VERSION}\n{}\n{KDF_ARGON2ID} m={} t={} p={}\n{}",
        account.to_lowercase(),
        params.memory_kib,
        params.iterations,
        params.lanes,
        B64.encode(salt)
    )
    .into_bytes()
}

/// Where the entries live.
enum Backend {
    /// One file per account under `state_dir/tokens/`.
    Files,
    /// A Redis server shared by several proxies (`token_store`).
    Redis(Box<crate::store::Redis>),
}

/// How long the shared store's write lock lives if its holder dies: a
/// read-modify-write under it takes milliseconds (a few small commands), so
/// ten seconds is ample for a slow network and short for an outage.
pub const STORE_LOCK_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a writer waits for the shared store's lock: longer than
/// [`STORE_LOCK_TTL`], so a dead holder's lock runs out first.
pub const STORE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
/// How often a writer asks for the shared store's lock while another holds it.
const STORE_LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(10);

pub struct TokenStore {
    backend: Backend,
    dir: PathBuf,
    /// Serialises writers in this process; the rename makes each write atomic
    /// for readers, the lock keeps two writers from racing on the temp name.
    /// Writers in other processes are kept out by [`TokenStore::lock`].
    write_lock: Mutex<()>,
    counter: AtomicU64,
    /// The state and token folders were made owner-only by this store (at
    /// its first write); after that a write only re-creates a missing one.
    /// Once, because on Windows setting a folder's DACL rewrites the
    /// inherited ACEs of everything inside it.
    secured: AtomicBool,
}

/// The advisory lock file, beside the token directory (`state_dir`), so the
/// directory holds token files only. One for the store, not one per
/// account: writes are rare (a refresh, a sign-in), so a single lock costs
/// nothing, and it leaves no file per account behind.
pub const LOCK_FILE: &str = "tokens.lock";

/// The store held exclusively, across processes (an advisory lock that
/// every writer of this code takes: the proxy, `authorize`, `forget`), for
/// a read-modify-write: read the entry, decide, write. Released on drop.
pub struct StoreLock<'a> {
    store: &'a TokenStore,
    held: Held,
}

/// What a [`StoreLock`] holds.
enum Held {
    /// The lock file, locked (released when closed).
    File(#[allow(dead_code)] fs::File),
    /// The token of the shared store's lock key.
    Redis(String),
}

impl Drop for StoreLock<'_> {
    fn drop(&mut self) {
        if let (Held::Redis(token), Backend::Redis(redis)) = (&self.held, &self.store.backend) {
            // If this fails the lock runs out after STORE_LOCK_TTL.
            let _ = redis.unlock(&redis.key("lock"), token);
        }
    }
}

impl StoreLock<'_> {
    pub fn load_entry(&self, account: &str) -> Result<Option<Entry>, StoreError> {
        self.store.load_entry(account)
    }

    pub fn save(&self, account: &str, tokens: &StoredTokens) -> Result<(), StoreError> {
        self.store
            .write(&self.held, account, &unsealed_envelope(account, tokens))
    }

    /// A digest of `account`'s entry as stored (`None`: no entry): a new
    /// digest means another writer changed the entry, even one re-sealed
    /// under the same key (a rotated refresh token).
    pub fn fingerprint(&self, account: &str) -> Result<Option<[u8; 32]>, StoreError> {
        self.store.fingerprint(account)
    }

    /// Writes an entry as another store held it (`migrate`), after checking
    /// that it is one of `account`'s.
    pub fn save_raw(&self, account: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let env = parse_envelope(&self.store.location(account), account, bytes)?;
        self.store.write(&self.held, account, &env)
    }

    pub fn save_sealed(
        &self,
        account: &str,
        tokens: &StoredTokens,
        key: &SealKey,
    ) -> Result<(), StoreError> {
        self.store
            .write(&self.held, account, &sealed_envelope(account, tokens, key))
    }

    pub fn remove(&self, account: &str) -> Result<bool, StoreError> {
        self.store.remove_unlocked(&self.held, account)
    }
}

/// A temporary file this old is a crash's leftover, not a write in progress
/// (a write takes milliseconds; a minute leaves room for a stalled disk).
pub const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(60);

impl TokenStore {
    pub fn new(state_dir: &Path) -> TokenStore {
        TokenStore {
            backend: Backend::Files,
            dir: state_dir.join("tokens"),
            write_lock: Mutex::new(()),
            counter: AtomicU64::new(0),
            secured: AtomicBool::new(false),
        }
    }

    /// The store `config` names: its `token_store` (a Redis server), or
    /// the files under its `state_dir`. Nothing is connected yet.
    pub fn open(config: &crate::config::Config) -> Result<TokenStore, StoreError> {
        Self::open_setting(config, &config.proxy.token_store)
    }

    /// The store `setting` names, with `config`'s other settings (its
    /// `state_dir`, `token_store_name`, `ca_file`): `store migrate --to`.
    pub fn open_setting(
        config: &crate::config::Config,
        setting: &crate::config::TokenStoreSetting,
    ) -> Result<TokenStore, StoreError> {
        let mut store = TokenStore::new(&config.state_dir());
        if let crate::config::TokenStoreSetting::Redis(url) = setting {
            store.backend = Backend::Redis(Box::new(crate::store::Redis::open(
                url,
                config.token_store_name(),
                config.proxy.ca_file.as_deref(),
            )?));
        }
        Ok(store)
    }

    /// Where `account`'s entry lives, for messages: its file, or the
    /// server (without password) and key.
    pub fn location(&self, account: &str) -> PathBuf {
        match &self.backend {
            Backend::Files => self.path_for(account),
            Backend::Redis(r) => {
                PathBuf::from(format!("{} key {}", r.shown(), token_key(r, account)))
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `account`'s tokens: [`file_stem`], so two
    /// addresses never share a file and no address can leave the directory.
    pub fn path_for(&self, account: &str) -> PathBuf {
        self.dir.join(format!("{}.json", file_stem(account)))
    }

    /// Where builds before injective names kept `account`'s tokens (every
    /// character outside a safe set became `_`, so `a!b@x` and `a_b@x`
    /// shared a file). Read when the new file is missing and the old one
    /// names this account; removed once the account's tokens are written
    /// under the new name.
    fn legacy_path_for(&self, account: &str) -> PathBuf {
        let name: String = account
            .to_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '-' | '_' | '+') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = if name.starts_with('.') {
            format!("_{name}")
        } else {
            name
        };
        self.dir.join(format!("{name}.json"))
    }

    /// The old-style file of `account`, if there is one, it differs from the
    /// new one, and it says it is `account`'s (so a file two addresses
    /// shared goes to the one that wrote it last, never to the other).
    fn legacy_file_of(&self, account: &str) -> Option<PathBuf> {
        /// The one field the ownership check reads, whatever the format.
        #[derive(Deserialize)]
        struct Owner {
            account: String,
        }
        let legacy = self.legacy_path_for(account);
        if legacy == self.path_for(account) {
            return None;
        }
        let bytes = Zeroizing::new(fs::read(&legacy).ok()?);
        let owner: Owner = serde_json::from_slice(&bytes).ok()?;
        owner
            .account
            .eq_ignore_ascii_case(account)
            .then_some(legacy)
    }

    /// `account`'s file and its bytes: the current name, else an old-style
    /// file that belongs to it. `None`: no tokens.
    fn read_file(&self, account: &str) -> Result<Option<FileBytes>, StoreError> {
        if let Backend::Redis(r) = &self.backend {
            return Ok(r
                .get(&token_key(r, account))?
                .map(|bytes| (self.location(account), Zeroizing::new(bytes))));
        }
        let path = self.path_for(account);
        let path = match fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match self.legacy_file_of(account) {
                    Some(legacy) => legacy,
                    None => return Ok(None),
                }
            }
            _ => path,
        };
        match fs::read(&path) {
            Ok(b) => Ok(Some((path, Zeroizing::new(b)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(cause) => Err(StoreError::Io {
                action: "read",
                path,
                cause,
            }),
        }
    }

    /// Removes `account`'s old-style file once its tokens live under the
    /// new name (or were removed). `true` if there was one.
    fn remove_legacy(&self, account: &str) -> bool {
        match self.legacy_file_of(account) {
            Some(legacy) => fs::remove_file(legacy).is_ok(),
            None => false,
        }
    }

    /// `account`'s tokens if they are stored unsealed; a sealed entry is
    /// [`StoreError::Sealed`] (use [`TokenStore::load_entry`] and open it).
    pub fn load(&self, account: &str) -> Result<Option<StoredTokens>, StoreError> {
        match self.load_entry(account)? {
            None => Ok(None),
            Some(Entry::Unsealed(tokens)) => Ok(Some(tokens)),
            Some(Entry::Sealed(_)) => Err(StoreError::Sealed {
                path: self.location(account),
            }),
        }
    }

    /// What `account`'s file holds, checked for shape but not opened.
    pub fn load_entry(&self, account: &str) -> Result<Option<Entry>, StoreError> {
        let Some((path, bytes)) = self.read_file(account)? else {
            return Ok(None);
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let mut env = parse_envelope(&path, account, &bytes)?;
        let Some(sealed) = env.sealed.take() else {
            return Ok(Some(Entry::Unsealed(StoredTokens {
                refresh_token: env.refresh_token.take().map(SecretString::from),
                access_token: env.access_token.take().map(SecretString::from),
                expires_at: env.expires_at,
            })));
        };
        if env.version < 2 {
            return Err(corrupt("a format 1 file cannot be sealed".into()));
        }
        if env.refresh_token.is_some() || env.access_token.is_some() {
            return Err(corrupt("tokens in clear beside sealed ones".into()));
        }
        if sealed.kdf != KDF_ARGON2ID {
            return Err(corrupt(format!("unknown key derivation `{}`", sealed.kdf)));
        }
        let decode = |what: &str, text: &str| {
            B64.decode(text)
                .map_err(|_| corrupt(format!("{what} is not base64")))
        };
        let salt = decode("salt", &sealed.salt)?
            .try_into()
            .map_err(|_| corrupt(format!("the salt is not {SALT_LEN} bytes")))?;
        let nonce = decode("nonce", &sealed.nonce)?
            .try_into()
            .map_err(|_| corrupt(format!("the nonce is not {NONCE_LEN} bytes")))?;
        Ok(Some(Entry::Sealed(SealedTokens {
            path: path.clone(),
            account: account.to_owned(),
            params: KdfParams {
                memory_kib: sealed.memory_kib,
                iterations: sealed.iterations,
                lanes: sealed.lanes,
            },
            salt,
            check: decode("check", &sealed.check)?,
            nonce,
            ciphertext: decode("ciphertext", &sealed.ciphertext)?,
        })))
    }

    /// Replaces `account`'s tokens with unsealed ones, atomically. Returns
    /// after the new file and its directory entry are on stable storage.
    pub fn save(&self, account: &str, tokens: &StoredTokens) -> Result<(), StoreError> {
        self.lock()?.save(account, tokens)
    }

    /// Replaces `account`'s tokens with tokens sealed under `key` (with a
    /// fresh random nonce), atomically, like [`TokenStore::save`].
    pub fn save_sealed(
        &self,
        account: &str,
        tokens: &StoredTokens,
        key: &SealKey,
    ) -> Result<(), StoreError> {
        self.lock()?.save_sealed(account, tokens, key)
    }

    /// Takes the store's cross-process lock (waiting for another process
    /// that holds it) for a read-modify-write.
    pub fn lock(&self) -> Result<StoreLock<'_>, StoreError> {
        if let Backend::Redis(r) = &self.backend {
            let key = r.key("lock");
            let token = crate::store::lock_token();
            let started = std::time::Instant::now();
            while !r.try_lock(&key, &token, STORE_LOCK_TTL)? {
                if started.elapsed() > STORE_LOCK_WAIT {
                    return Err(StoreError::Unreachable(crate::store::Unreachable {
                        store: r.shown().to_owned(),
                        reason: format!(
                            "its write lock stayed taken for {} s",
                            STORE_LOCK_WAIT.as_secs()
                        ),
                    }));
                }
                std::thread::sleep(STORE_LOCK_POLL);
            }
            return Ok(StoreLock {
                store: self,
                held: Held::Redis(token),
            });
        }
        self.ensure_dir()?;
        let path = self.dir.with_file_name(LOCK_FILE);
        let mut options = fs::OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let io = |action| {
            let path = path.clone();
            move |cause| StoreError::Io {
                action,
                path,
                cause,
            }
        };
        let file = options.open(&path).map_err(io("open"))?;
        file.lock().map_err(io("lock"))?;
        Ok(StoreLock {
            store: self,
            held: Held::File(file),
        })
    }

    fn write(&self, held: &Held, account: &str, env: &Envelope) -> Result<(), StoreError> {
        let bytes = Zeroizing::new(serde_json::to_vec_pretty(env).expect("envelope serialises"));
        if let (Backend::Redis(r), Held::Redis(token)) = (&self.backend, held) {
            return match r.fenced_write(
                &r.key("lock"),
                token,
                &token_key(r, account),
                Some(&bytes),
            )? {
                Some(_) => Ok(()),
                None => Err(StoreError::LockLost),
            };
        }
        let _guard = self.write_lock.lock();
        self.ensure_dir()?;
        let path = self.path_for(account);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
        let result = write_synced(&tmp, &bytes)
            .and_then(|()| fs::rename(&tmp, &path).map_err(|e| ("rename", e)))
            .and_then(|()| sync_dir(&self.dir).map_err(|e| ("sync", e)));
        if let Err((action, cause)) = result {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io {
                action,
                path,
                cause,
            });
        }
        self.remove_legacy(account);
        Ok(())
    }

    /// Removes the temporary files of writes that a crash cut short (the
    /// token files themselves are always whole: a write is a rename). Only
    /// files older than [`STALE_TEMP_AGE`] go, so a write in progress in
    /// another process (`authorize` while the proxy runs) is left alone.
    /// Returns how many were removed.
    pub fn sweep_temp_files(&self) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.contains(".tmp.") {
                continue;
            }
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= STALE_TEMP_AGE);
            if stale && entry.file_type().is_ok_and(|t| t.is_file()) {
                let _guard = self.write_lock.lock();
                if fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Removes `account`'s tokens; true when there were any.
    pub fn remove(&self, account: &str) -> Result<bool, StoreError> {
        self.lock()?.remove(account)
    }

    fn remove_unlocked(&self, held: &Held, account: &str) -> Result<bool, StoreError> {
        if let (Backend::Redis(r), Held::Redis(token)) = (&self.backend, held) {
            return r
                .fenced_write(&r.key("lock"), token, &token_key(r, account), None)?
                .ok_or(StoreError::LockLost);
        }
        let path = self.path_for(account);
        let _guard = self.write_lock.lock();
        let legacy = self.remove_legacy(account);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(legacy),
            Err(cause) => Err(StoreError::Io {
                action: "remove",
                path,
                cause,
            }),
        }
    }

    /// Creates the token folder, and on the first call makes it and the state
    /// folder (which holds the lock file, and on Windows often the
    /// configuration) owner-only: Unix 0700, a protected DACL on Windows.
    fn ensure_dir(&self) -> Result<(), StoreError> {
        if self.secured.load(Ordering::Acquire) && self.dir.is_dir() {
            return Ok(());
        }
        let secure = |path: &Path| {
            crate::fs_secure::private_dir(path).map_err(|cause| StoreError::Io {
                action: "create",
                path: path.to_owned(),
                cause,
            })
        };
        if let Some(state_dir) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            secure(state_dir)?;
        }
        secure(&self.dir)?;
        self.secured.store(true, Ordering::Release);
        Ok(())
    }
}

/// The key suffix of the entries in a shared store.
const TOKENS_KEY: &str = "tokens:";

/// `account`'s entry key in a shared store (the address as the proxy
/// compares it: ASCII case folded).
fn token_key(r: &crate::store::Redis, account: &str) -> String {
    r.key(&format!("{TOKENS_KEY}{}", account.to_ascii_lowercase()))
}

/// The envelope in `bytes`, checked: a version this build reads, `account`'s.
fn parse_envelope(path: &Path, account: &str, bytes: &[u8]) -> Result<Envelope, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if env.version > FORMAT_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            version: env.version,
        });
    }
    if !env.account.eq_ignore_ascii_case(account) {
        return Err(corrupt(format!("it belongs to {}", env.account)));
    }
    Ok(env)
}

/// A token file's path and what it holds (wiped when dropped).
type FileBytes = (PathBuf, Zeroizing<Vec<u8>>);

/// The longest file name stem: well under the 255 bytes file systems
/// allow, with room for `.json` and a writer's `.tmp.PID.N` suffix.
const MAX_STEM_BYTES: usize = 180;
/// Hex digits of the SHA-256 that ends a stem cut to [`MAX_STEM_BYTES`].
const STEM_HASH_HEX: usize = 32;

/// The file name (without `.json`) of `account`'s tokens, one-to-one with
/// the address as the proxy compares it (ASCII case folded): letters,
/// digits, `@`, `-`, `+` and a `.` that does not lead stay; every other
/// byte, `_` itself included, becomes `_` and two hex digits, so the name
/// decodes back to exactly one address. Names beyond [`MAX_STEM_BYTES`]
/// (an address of hundreds of unusual characters) are cut and end in `~`
/// and a hash of the whole address (`~` never appears otherwise).
fn file_stem(account: &str) -> String {
    use std::fmt::Write as _;
    let folded = account.to_ascii_lowercase();
    let mut stem = String::with_capacity(folded.len());
    for (i, b) in folded.bytes().enumerate() {
        let kept =
            b.is_ascii_alphanumeric() || matches!(b, b'@' | b'-' | b'+') || (b == b'.' && i > 0);
        if kept {
            stem.push(char::from(b));
        } else {
            let _ = write!(stem, "_{b:02x}");
        }
    }
    if stem.len() > MAX_STEM_BYTES {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(folded.as_bytes());
        stem.truncate(MAX_STEM_BYTES - 1 - STEM_HASH_HEX);
        stem.push('~');
        for b in &digest[..STEM_HASH_HEX / 2] {
            let _ = write!(stem, "{b:02x}");
        }
    }
    stem
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), (&'static str, std::io::Error)> {
    // Owner-only from creation (a protected DACL on Windows), so the file
    // the rename puts in place is too: a rename keeps a file's security.
    let mut file = crate::fs_secure::create_private_file(path).map_err(|e| ("create", e))?;
    file.write_all(bytes).map_err(|e| ("write", e))?;
    file.sync_all().map_err(|e| ("sync", e))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    // Windows has no directory handles to flush; ReplaceFile/MoveFileEx with
    // the rename is as durable as the platform offers.
    Ok(())
}

mod shared;
pub use shared::{Copied, copy_entries};

#[cfg(test)]
#[path = "vault_tests.rs"]
mod tests;
