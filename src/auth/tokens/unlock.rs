//! The local password of an account, the one check of it: for a delegated
//! account it opens the sealed tokens (sealed at sign-in under the password
//! chosen there), for an unattended one it must match `password_hash`.
//! Either way the KDF runs once per account per process; later logins are
//! checked against a keyed digest.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use super::exchange::{Expect, Saved};
use super::state::{AccountTokens, Opened};
use super::{TokenError, TokenManager, blocking, not_signed_in, replaced, store_error};
use crate::auth::password::{KdfParams, SealKey, random_salt, verify_phc};
use crate::auth::vault::{Entry, OpenError, StoredTokens};

impl TokenManager {
    /// Checks `password` for the account and returns what it opens (the
    /// sealing key of a delegated account's tokens).
    pub(super) async fn unlock(
        &self,
        account: &AccountTokens,
        password: &SecretString,
    ) -> Result<Opened, TokenError> {
        if let Some(key) = account.check_unlocked(&self.digest, password)? {
            return Ok(key);
        }
        let _one_at_a_time = account.unlocking.lock().await;
        if let Some(key) = account.check_unlocked(&self.digest, password)? {
            return Ok(key);
        }
        let username = account.config.username.clone();
        if let Some(phc) = &account.config.password_hash {
            self.check_hash(&username, phc, password).await?;
            account.set_unlocked(self.digest.tag(password.expose_secret().as_bytes()), None);
            return Ok(None);
        }
        let store = self.store.clone();
        let name = username.clone();
        let entry = blocking(move || store.load_entry(&name))
            .await?
            .map_err(|e| store_error(&username, e))?;
        let key = match entry {
            None => return Err(not_signed_in(&username)),
            Some(Entry::Unsealed(_)) => {
                // Written before sign-ins chose the password (an older
                // `authorize`): whoever logged in first would choose it.
                return Err(TokenError::NeedsSignIn(format!(
                    "the tokens of {username} were stored without a local password (by an \
                     older version): sign in again (`xoauth2-proxy authorize {username}` or the \
                     local page) and choose the password there"
                )));
            }
            Some(Entry::Sealed(sealed)) => {
                let key = self
                    .derive(password, sealed.params(), sealed.salt())
                    .await?;
                let tokens = match sealed.open(&key) {
                    Ok(tokens) => tokens,
                    Err(OpenError::WrongPassword) => {
                        return Err(TokenError::WrongPassword(username));
                    }
                    Err(OpenError::Damaged(e)) => return Err(store_error(&username, e)),
                };
                if sealed.params() == self.kdf {
                    key
                } else {
                    self.reseal(&username, password, tokens, key).await?
                }
            }
        };
        account.set_unlocked(
            self.digest.tag(password.expose_secret().as_bytes()),
            Some(key.clone()),
        );
        Ok(Some(key))
    }

    /// An unattended account's password against its `password_hash` (the
    /// KDF the PHC string names).
    async fn check_hash(
        &self,
        username: &str,
        phc: &SecretString,
        password: &SecretString,
    ) -> Result<(), TokenError> {
        self.kdf_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let candidate = zeroize::Zeroizing::new(password.expose_secret().as_bytes().to_vec());
        let phc = phc.clone();
        let verdict = blocking(move || verify_phc(&candidate, phc.expose_secret()))
            .await?
            .map_err(|e| TokenError::Configuration(format!("cannot check the password: {e}")))?;
        if verdict {
            Ok(())
        } else {
            Err(TokenError::WrongPassword(username.to_owned()))
        }
    }

    /// Seals `tokens` again under the current KDF parameters and a new salt.
    /// If the disk refuses, the entry stays as it was and `old` keeps working.
    async fn reseal(
        &self,
        username: &str,
        password: &SecretString,
        tokens: StoredTokens,
        old: Arc<SealKey>,
    ) -> Result<Arc<SealKey>, TokenError> {
        let key = self.derive(password, self.kdf, random_salt()).await?;
        let expect = Expect::SealedWith(old.clone());
        match self
            .save_sealed(username, tokens, key.clone(), expect)
            .await
        {
            Ok(Saved::Replaced) => Err(replaced(username)),
            Ok(Saved::Written) => {
                tracing::info!(account = %username, from = ?old.params(), to = ?self.kdf,
                    "tokens re-sealed with the current key derivation parameters");
                Ok(key)
            }
            Err(e) => {
                tracing::warn!(account = %username, error = %e,
                    "cannot re-seal the tokens with the current parameters; keeping the old seal");
                Ok(old)
            }
        }
    }

    async fn derive(
        &self,
        password: &SecretString,
        params: KdfParams,
        salt: [u8; crate::auth::password::SALT_LEN],
    ) -> Result<Arc<SealKey>, TokenError> {
        self.kdf_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let password = zeroize::Zeroizing::new(password.expose_secret().as_bytes().to_vec());
        blocking(move || SealKey::derive(&password, params, salt))
            .await?
            .map(Arc::new)
            .map_err(|e| TokenError::Configuration(e.to_string()))
    }
}
