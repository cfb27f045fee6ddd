//! Refreshes when several proxies share the token store (Redis): one
//! proxy at a time redeems an account's refresh token, and every proxy
//! notices what the others changed.
//!
//! Before redeeming, a flight takes the account's refresh lease in the
//! store ([`take_turn`]); the others wait for it to be given back and then
//! find the new tokens in the store instead of redeeming the old refresh
//! token (which the endpoint may already have killed by rotating it). The
//! holder reads the entry under the lease, redeems the refresh token found
//! there, and writes only if the entry is still the one it read (the
//! fingerprint: a fencing check that keeps a holder whose lease lapsed
//! from overwriting a newer rotated token).
//!
//! [`TokenManager::follow_shared_store`] reads the store's change counter
//! every [`SHARED_CHECK_EVERY`] and locks again every account whose entry
//! was removed (`forget`) or re-sealed under another password (a new
//! sign-in) by another proxy.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;
use tokio::time::Instant;

use super::machine::{Access, Event};
use super::state::AccountTokens;
use super::{TokenError, TokenManager, blocking, replaced, store_error};
use crate::auth::password::SealKey;
use crate::auth::vault::{Entry, OpenError, StoredTokens, TokenStore};

/// How long an account's refresh lease outlives a holder that died (killed,
/// cut off): the account's refreshes wait at most this long for it. A
/// living holder renews it every third of this while its token request
/// runs, so a slow endpoint does not lose it.
pub const REFRESH_LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a proxy waiting for another's refresh asks for the lease.
pub const LEASE_POLL: Duration = Duration::from_millis(50);
/// The longest a flight waits for the lease: a dead holder's
/// [`REFRESH_LEASE_TTL`] several times over; past it the flight fails as
/// transient and backs off.
pub const LEASE_WAIT: Duration = Duration::from_secs(45);
/// How often each proxy reads the shared store's change counter: the
/// bound on how long a `forget` or a new sign-in (new password) made
/// through another proxy goes unnoticed here. One small `GET`.
pub const SHARED_CHECK_EVERY: Duration = Duration::from_secs(2);

/// An account's refresh lease, renewed in the background until released.
pub(super) struct Lease {
    store: Arc<TokenStore>,
    account: String,
    token: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    fn start(store: Arc<TokenStore>, account: String, token: String) -> Lease {
        let renewer = tokio::spawn({
            let (store, account, token) = (store.clone(), account.clone(), token.clone());
            async move {
                loop {
                    tokio::time::sleep(REFRESH_LEASE_TTL / 3).await;
                    let (store, account, token) = (store.clone(), account.clone(), token.clone());
                    let renewed = tokio::task::spawn_blocking(move || {
                        store.renew_refresh_lease(&account, &token, REFRESH_LEASE_TTL)
                    })
                    .await;
                    if !matches!(renewed, Ok(Ok(true))) {
                        return;
                    }
                }
            }
        });
        Lease {
            store,
            account,
            token,
            renewer,
        }
    }

    /// Gives the lease back (if it failed, it lapses after its ttl).
    pub(super) async fn release(self) {
        self.renewer.abort();
        let (store, account, token) =
            (self.store.clone(), self.account.clone(), self.token.clone());
        let _ = tokio::task::spawn_blocking(move || store.release_refresh_lease(&account, &token))
            .await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// What a flight does once it may act on the shared store.
pub(super) enum Turn {
    /// This proxy holds the lease: redeem `refresh_token` (the store's, the
    /// newest), and write only if the entry is still `fingerprint`.
    Mine {
        lease: Lease,
        refresh_token: SecretString,
        fingerprint: Option<[u8; 32]>,
    },
    /// Another proxy refreshed meanwhile: its tokens, fresh, to use.
    Theirs(StoredTokens),
}

/// Waits for `account`'s refresh lease, then decides from the entry in the
/// store: tokens fresh beyond `margin` (another proxy just refreshed) are
/// taken as they are; otherwise (or with no `margin`: a redemption for
/// another resource, Graph) this flight redeems the stored refresh token.
pub(super) async fn take_turn(
    store: &Arc<TokenStore>,
    account: &AccountTokens,
    key: Option<Arc<SealKey>>,
    margin: Option<Duration>,
) -> Result<Turn, TokenError> {
    let username = account.config.username.clone();
    let token = crate::store::lock_token();
    let deadline = Instant::now() + LEASE_WAIT;
    loop {
        let got = {
            let (store, name, token) = (store.clone(), username.clone(), token.clone());
            blocking(move || store.try_refresh_lease(&name, &token, REFRESH_LEASE_TTL))
                .await?
                .map_err(|e| store_error(&username, e))?
        };
        if got {
            break;
        }
        if Instant::now() >= deadline {
            return Err(TokenError::Transient(format!(
                "another proxy's refresh of {username} did not finish within {} s",
                LEASE_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(LEASE_POLL).await;
    }
    let lease = Lease::start(store.clone(), username.clone(), token);
    let read = read_entry(store, &username, key).await;
    let (fingerprint, stored) = match read {
        Ok(read) => read,
        Err(e) => {
            lease.release().await;
            return Err(e);
        }
    };
    let Some(stored) = stored else {
        lease.release().await;
        return Err(emptied(&username));
    };
    if let Some(margin) = margin
        && fresh(&stored, margin)
    {
        lease.release().await;
        return Ok(Turn::Theirs(stored));
    }
    match stored.refresh_token.clone() {
        Some(refresh_token) => Ok(Turn::Mine {
            lease,
            refresh_token,
            fingerprint,
        }),
        None => {
            lease.release().await;
            Err(emptied(&username))
        }
    }
}

/// No entry in the shared store: signed out through another proxy, or
/// the store lost its data (a Redis restart without persistence).
fn emptied(username: &str) -> TokenError {
    TokenError::NeedsSignIn(format!(
        "the shared token store holds no tokens for {username} (signed out through another \
         proxy, or the store lost its data, e.g. a Redis restart without persistence): run \
         `xoauth2-proxy authorize {username}`"
    ))
}

/// The entry's fingerprint, then its tokens (opened with `key` if sealed).
/// Read in this order, so an entry replaced between the two reads fails the
/// write's fingerprint check rather than passing it.
async fn read_entry(
    store: &Arc<TokenStore>,
    username: &str,
    key: Option<Arc<SealKey>>,
) -> Result<(Option<[u8; 32]>, Option<StoredTokens>), TokenError> {
    let (store, name) = (store.clone(), username.to_owned());
    let (fingerprint, entry) = blocking(move || {
        let fingerprint = store.fingerprint(&name)?;
        Ok((fingerprint, store.load_entry(&name)?))
    })
    .await?
    .map_err(|e| store_error(username, e))?;
    let tokens = match (entry, key) {
        (None, _) => None,
        (Some(Entry::Unsealed(tokens)), None) => Some(tokens),
        (Some(Entry::Sealed(sealed)), Some(key)) => match sealed.open(&key) {
            Ok(tokens) => Some(tokens),
            Err(OpenError::WrongPassword) => return Err(replaced(username)),
            Err(OpenError::Damaged(e)) => return Err(store_error(username, e)),
        },
        (Some(_), _) => return Err(replaced(username)),
    };
    Ok((fingerprint, tokens))
}

fn fresh(stored: &StoredTokens, margin: Duration) -> bool {
    let (Some(_), Some(exp)) = (&stored.access_token, stored.expires_at) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    exp > now + margin.as_secs()
}

/// The event for tokens another proxy refreshed.
pub(super) fn adopted(stored: StoredTokens) -> Event {
    let expires_at = UNIX_EPOCH + Duration::from_secs(stored.expires_at.unwrap_or(0));
    let lifetime = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Event::Refreshed {
        access: Access {
            token: stored
                .access_token
                .clone()
                .unwrap_or_else(|| SecretString::from(String::new())),
            expires_at,
            lifetime: Some(lifetime),
            cached_at: Instant::now(),
        },
        refresh_token: stored.refresh_token.clone(),
    }
}

impl TokenManager {
    /// What is wrong with the shared token store, as last seen by
    /// [`TokenManager::follow_shared_store`] (`None`: it answers, or files).
    pub fn store_problem(&self) -> Option<String> {
        self.store_problem.lock().clone()
    }

    /// With a shared store, until `shutdown` turns true: every
    /// [`SHARED_CHECK_EVERY`], if the store changed, each account whose
    /// entry was removed or re-sealed under another password by another
    /// proxy is locked again here (its next login reads the store). A
    /// rotation by another proxy (same password) changes nothing here: the
    /// next refresh reads the store under the lease anyway.
    pub async fn follow_shared_store(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        if !self.store.is_shared() {
            return;
        }
        let mut seen = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SHARED_CHECK_EVERY) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let store = self.store.clone();
            let now = match blocking(move || store.changes()).await {
                Ok(Ok(now)) => {
                    *self.store_problem.lock() = None;
                    now
                }
                Ok(Err(e)) => {
                    let text = format!(
                        "{e}: logins use the access tokens held; refreshes wait until it is back"
                    );
                    let mut problem = self.store_problem.lock();
                    if problem.is_none() {
                        tracing::warn!(error = %e, "the shared token store is unreachable; logins use the access tokens held, refreshes wait");
                    }
                    *problem = Some(text);
                    continue;
                }
                Err(_) => continue,
            };
            if seen.replace(now) == Some(now) {
                continue;
            }
            for account in self.all() {
                self.recheck(&account).await;
            }
        }
    }

    /// Locks `account` again if another proxy removed its entry or sealed
    /// it under another password.
    async fn recheck(&self, account: &Arc<AccountTokens>) {
        let store = self.store.clone();
        let name = account.config.username.clone();
        let Ok(Ok(entry)) = blocking(move || store.load_entry(&name)).await else {
            return;
        };
        let stale = match (account.sealed, account.current_key(), entry) {
            (true, Some(key), Some(Entry::Sealed(sealed))) => !sealed.key_matches(&key),
            (true, Some(_), _) => true,
            (true, None, _) => false,
            (false, _, None) => account.lock().access().is_some(),
            (false, _, Some(_)) => false,
        };
        if stale {
            tracing::info!(account = %account.config.username,
                "the account's tokens were removed or replaced through another proxy; its next login reads them again");
            account
                .when_idle(|state| {
                    account.forget_unlock();
                    account.step(state, Event::Relock);
                })
                .await;
        }
    }
}
