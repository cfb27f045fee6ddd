//! The token store's side for several proxies (`token_store` on Redis):
//! whether it is shared, its health, the per-account refresh lease, the
//! change counter, and copying entries between stores (`store migrate`).
//! With files each is the trivial answer of a store one process owns.

use std::fs;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::{Backend, StoreError, TOKENS_KEY, TokenStore, parse_envelope};

impl TokenStore {
    /// Whether other proxies share this store (Redis): a refresh then takes
    /// the account's refresh lease first.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// Where the entries live, in words (no password).
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Files => format!("the files in {}", self.dir.display()),
            Backend::Redis(r) => format!("Redis at {} (keys {}…)", r.shown(), r.prefix()),
        }
    }

    /// Whether the store answers (files: always).
    pub fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Files => Ok(()),
            Backend::Redis(r) => Ok(r.ping()?),
        }
    }

    /// The shared store's change counter (one more at every write or
    /// removal by any proxy); always 0 for files.
    pub fn changes(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Files => Ok(0),
            Backend::Redis(r) => Ok(r.changes()?),
        }
    }

    /// Takes `account`'s refresh lease (`token`, for `ttl`) in the shared
    /// store: whoever holds it is the one proxy that may redeem the
    /// account's refresh token. Files: always granted (one process).
    pub fn try_refresh_lease(
        &self,
        account: &str,
        token: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Files => Ok(true),
            Backend::Redis(r) => Ok(r.try_lock(&refresh_key(r, account), token, ttl)?),
        }
    }

    /// Extends a lease this process holds; false if it is no longer its.
    pub fn renew_refresh_lease(
        &self,
        account: &str,
        token: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Files => Ok(true),
            Backend::Redis(r) => Ok(r.renew(&refresh_key(r, account), token, ttl)?),
        }
    }

    /// Gives a lease back (only if it is still this holder's).
    pub fn release_refresh_lease(&self, account: &str, token: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Files => Ok(()),
            Backend::Redis(r) => r
                .unlock(&refresh_key(r, account), token)
                .map(drop)
                .map_err(Into::into),
        }
    }

    /// A digest of `account`'s stored entry; see [`StoreLock::fingerprint`].
    pub fn fingerprint(&self, account: &str) -> Result<Option<[u8; 32]>, StoreError> {
        use sha2::Digest as _;
        Ok(self
            .read_file(account)?
            .map(|(_, bytes)| sha2::Sha256::digest(&bytes[..]).into()))
    }

    /// `account`'s entry as stored (for `migrate`), checked for shape.
    pub fn raw(&self, account: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let Some(entry) = self.read_file(account)? else {
            return Ok(None);
        };
        drop(parse_envelope(&entry.0, account, &entry.1)?);
        Ok(Some(entry.1))
    }

    /// Every account with an entry (for `migrate`).
    pub fn accounts(&self) -> Result<Vec<String>, StoreError> {
        #[derive(Deserialize)]
        struct Owner {
            account: String,
        }
        match &self.backend {
            Backend::Redis(r) => {
                let prefix = r.key(TOKENS_KEY);
                Ok(r.keys(TOKENS_KEY)?
                    .into_iter()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
                    .collect())
            }
            Backend::Files => {
                let entries = match fs::read_dir(&self.dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(cause) => {
                        return Err(StoreError::Io {
                            action: "list",
                            path: self.dir.clone(),
                            cause,
                        });
                    }
                };
                let mut accounts = Vec::new();
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.extension().is_none_or(|e| e != "json") {
                        continue;
                    }
                    let Ok(bytes) = fs::read(&path).map(Zeroizing::new) else {
                        continue;
                    };
                    if let Ok(owner) = serde_json::from_slice::<Owner>(&bytes) {
                        accounts.push(owner.account.to_lowercase());
                    }
                }
                accounts.sort();
                accounts.dedup();
                Ok(accounts)
            }
        }
    }
}

/// What [`copy_entries`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Accounts whose entry was written to the destination.
    pub copied: Vec<String>,
    /// Accounts the destination already held an entry for (left as it was).
    pub kept: Vec<String>,
}

/// Copies every entry of `from` into `to` as it is (sealed entries stay
/// sealed: the envelope names its account, not its place). An entry the
/// destination already holds is kept unless `replace`.
pub fn copy_entries(
    from: &TokenStore,
    to: &TokenStore,
    replace: bool,
) -> Result<Copied, StoreError> {
    let mut done = Copied::default();
    for account in from.accounts()? {
        let Some(bytes) = from.raw(&account)? else {
            continue;
        };
        let lock = to.lock()?;
        if !replace && lock.fingerprint(&account)?.is_some() {
            done.kept.push(account);
            continue;
        }
        lock.save_raw(&account, &bytes)?;
        done.copied.push(account);
    }
    Ok(done)
}

/// `account`'s refresh lease key in a shared store.
fn refresh_key(r: &crate::store::Redis, account: &str) -> String {
    r.key(&format!("refresh:{}", account.to_ascii_lowercase()))
}
