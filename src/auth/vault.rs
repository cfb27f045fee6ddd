//! The token store on disk: one file per account under `state_dir/tokens/`.
//!
//! Writes are atomic (temp file, fsync, rename, directory fsync) and
//! owner-only, so a crash leaves either the old or the new tokens, never
//! neither. The file carries a format version; sealing with a key derived
//! from the local password (DESIGN.md) becomes a new version of the same
//! envelope, read and written through these same three calls.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The envelope format this build writes.
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged or not a token file ({reason})")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} was written by a newer xoauth2-proxy (format {version})")]
    TooNew { path: PathBuf, version: u32 },
}

/// An account's tokens as kept between runs.
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

#[derive(Serialize, Deserialize)]
struct Envelope {
    version: u32,
    account: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_at: Option<u64>,
}

impl Drop for Envelope {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.refresh_token.zeroize();
        self.access_token.zeroize();
    }
}

pub struct TokenStore {
    dir: PathBuf,
    /// Serialises writers in this process; the rename makes each write atomic
    /// for readers, the lock keeps two writers from racing on the temp name.
    write_lock: Mutex<()>,
    counter: AtomicU64,
}

impl TokenStore {
    pub fn new(state_dir: &Path) -> TokenStore {
        TokenStore {
            dir: state_dir.join("tokens"),
            write_lock: Mutex::new(()),
            counter: AtomicU64::new(0),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `account`'s tokens. Names are folded to lower case
    /// and anything outside a safe set is replaced, so no address can escape
    /// the directory.
    pub fn path_for(&self, account: &str) -> PathBuf {
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

    pub fn load(&self, account: &str) -> Result<Option<StoredTokens>, StoreError> {
        let path = self.path_for(account);
        let bytes = match fs::read(&path) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        let env: Envelope = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if env.version > FORMAT_VERSION {
            return Err(StoreError::TooNew {
                path,
                version: env.version,
            });
        }
        if !env.account.eq_ignore_ascii_case(account) {
            return Err(StoreError::Corrupt {
                path,
                reason: format!("it belongs to {}", env.account),
            });
        }
        Ok(Some(StoredTokens {
            refresh_token: env
                .refresh_token
                .as_deref()
                .map(|s| SecretString::from(s.to_owned())),
            access_token: env
                .access_token
                .as_deref()
                .map(|s| SecretString::from(s.to_owned())),
            expires_at: env.expires_at,
        }))
    }

    /// Replaces `account`'s tokens atomically. Returns after the new file and
    /// its directory entry are on stable storage.
    pub fn save(&self, account: &str, tokens: &StoredTokens) -> Result<(), StoreError> {
        let env = Envelope {
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
        };
        let bytes = Zeroizing::new(serde_json::to_vec_pretty(&env).expect("envelope serialises"));
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.ensure_dir()?;
        let path = self.path_for(account);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
        let result = write_synced(&tmp, &bytes)
            .and_then(|()| fs::rename(&tmp, &path).map_err(|e| ("rename", e)))
            .and_then(|()| sync_dir(&self.dir).map_err(|e| ("sync", e)));
        if let Err((action, source)) = result {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io {
                action,
                path,
                source,
            });
        }
        Ok(())
    }

    /// Removes `account`'s tokens; true when there were any.
    pub fn remove(&self, account: &str) -> Result<bool, StoreError> {
        let path = self.path_for(account);
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io {
                action: "remove",
                path,
                source,
            }),
        }
    }

    fn ensure_dir(&self) -> Result<(), StoreError> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&self.dir).map_err(|source| StoreError::Io {
            action: "create",
            path: self.dir.clone(),
            source,
        })
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), (&'static str, std::io::Error)> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| ("create", e))?;
    file.write_all(bytes).map_err(|e| ("write", e))?;
    file.sync_all().map_err(|e| ("sync", e))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    // Windows has no directory handles to flush; ReplaceFile/MoveFileEx with
    // the rename is as durable as the platform offers.
    let _ = File::open;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(rt: &str) -> StoredTokens {
        StoredTokens {
            refresh_token: Some(SecretString::from(rt.to_owned())),
            access_token: Some(SecretString::from(format!("at-for-{rt}"))),
            expires_at: Some(1_900_000_000),
        }
    }

    #[test]
    fn save_load_replace_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        assert!(store.load("alice@contoso.com").unwrap().is_none());
        store.save("alice@contoso.com", &tokens("rt-1")).unwrap();
        store.save("Alice@Contoso.com", &tokens("rt-2")).unwrap();
        let t = store.load("alice@contoso.com").unwrap().unwrap();
        assert_eq!(t.refresh_token.unwrap().expose_secret(), "rt-2");
        assert_eq!(t.expires_at, Some(1_900_000_000));
        let leftovers: Vec<_> = fs::read_dir(store.dir()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files are left behind");
        assert!(store.remove("alice@contoso.com").unwrap());
        assert!(!store.remove("alice@contoso.com").unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        store.save("a@b.c", &tokens("rt")).unwrap();
        let mode = fs::metadata(store.path_for("a@b.c"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(store.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn hostile_names_stay_inside_the_directory() {
        let store = TokenStore::new(Path::new("/state"));
        for name in [
            "../../etc/passwd",
            "..",
            "a/b@c",
            "a\\b@c",
            "x\0y",
            ".hidden@x",
        ] {
            let p = store.path_for(name);
            assert_eq!(p.parent().unwrap(), Path::new("/state/tokens"), "{name}");
            assert!(
                !p.file_name().unwrap().to_string_lossy().starts_with('.'),
                "{name}"
            );
        }
    }

    #[test]
    fn damaged_and_foreign_files_are_reported_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        store.save("a@b.c", &tokens("rt")).unwrap();
        fs::write(store.path_for("a@b.c"), b"{not json").unwrap();
        assert!(matches!(
            store.load("a@b.c"),
            Err(StoreError::Corrupt { .. })
        ));
        fs::write(
            store.path_for("a@b.c"),
            br#"{"version":1,"account":"x@y.z"}"#,
        )
        .unwrap();
        assert!(matches!(
            store.load("a@b.c"),
            Err(StoreError::Corrupt { .. })
        ));
        fs::write(
            store.path_for("a@b.c"),
            br#"{"version":9,"account":"a@b.c"}"#,
        )
        .unwrap();
        assert!(matches!(
            store.load("a@b.c"),
            Err(StoreError::TooNew { .. })
        ));
    }

    #[test]
    fn debug_does_not_show_tokens() {
        let s = format!("{:?}", tokens("rt-secret"));
        assert!(!s.contains("rt-secret"));
    }
}
