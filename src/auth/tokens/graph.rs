//! Microsoft Graph access tokens, for listeners with `backend = "graph"`.
//!
//! The account's one sign-in serves Graph too: its refresh token is
//! redeemed for a token with Graph's scopes (one resource per request),
//! beside the Exchange token the login path keeps. Per account: a cached
//! Graph token, one redemption in flight (the others wait and take its
//! token). The redemption is a flight of the account's state machine,
//! since the endpoint rotates the refresh token: the new one is saved
//! through the same conditional write as a refresh and set in the state
//! (`Event::Rotated`) before the Graph token is used. App-only
//! accounts ask for Graph's `.default` with the app's own credential.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use oauth2::TokenResponse;
use parking_lot::Mutex;
use secrecy::SecretString;

use super::exchange::{Expect, Failure, Saved, classify, exchange_refresh, save_fenced};
use super::flight::{Landing, failed};
use super::machine::{Event, Kind};
use super::shared::{Turn, take_turn};
use super::state::AccountTokens;
use super::{
    InFlight, LIFETIME_WITHOUT_EXPIRY, TokenError, TokenManager, not_signed_in, replaced, unix_secs,
};
use crate::auth::vault::StoredTokens;
use crate::config::{AccountConfig, Flow};

/// The delegated Graph scopes of `account`: `Mail.Send` for its own
/// mailbox, `Mail.Send.Shared` when it sends as a shared `mailbox`; for an
/// app-only account, every application permission (`.default`).
pub fn graph_scopes(account: &AccountConfig) -> Vec<String> {
    let resource = account.cloud().graph_url();
    if account.flow == Flow::ClientCredentials {
        return vec![format!("{resource}/.default")];
    }
    let permission = match account.mailbox {
        Some(_) => "Mail.Send.Shared",
        None => "Mail.Send",
    };
    vec![
        format!("{resource}/{permission}"),
        "offline_access".to_owned(),
    ]
}

/// One account's Graph token and its single flight.
#[derive(Default)]
struct Slot {
    cached: Mutex<Option<(SecretString, SystemTime)>>,
    flight: tokio::sync::Mutex<()>,
}

impl Slot {
    fn fresh(&self, margin: Duration) -> Option<SecretString> {
        let cached = self.cached.lock();
        let (token, expires_at) = cached.as_ref()?;
        let left = expires_at.duration_since(SystemTime::now()).ok()?;
        (left > margin).then(|| token.clone())
    }
}

/// The Graph tokens of every account, by lowercase address.
#[derive(Default)]
pub struct GraphTokens {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl GraphTokens {
    /// After a reload: keeps `old`'s token (and flight) of every account
    /// `kept` names (one whose settings did not change).
    pub(super) fn carry_over(&self, old: &GraphTokens, kept: impl Fn(&str) -> bool) {
        let old_slots = old.slots.lock();
        let mut slots = self.slots.lock();
        for (name, slot) in old_slots.iter().filter(|(name, _)| kept(name)) {
            slots.insert(name.clone(), slot.clone());
        }
    }

    fn slot(&self, username: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock();
        slots.entry(username.to_lowercase()).or_default().clone()
    }
}

impl TokenManager {
    /// A Graph access token for `username` that lives at least `lasting`
    /// (and the refresh margin, at most 5 minutes): a message sent through
    /// a draft uses it for minutes. A delegated account must have been
    /// unlocked by a login in this process (its tokens are sealed).
    pub async fn graph_token(
        &self,
        username: &str,
        lasting: Duration,
    ) -> Result<SecretString, TokenError> {
        let account = self.account(username)?;
        let slot = self.graph.slot(&account.config.username);
        let margin = self.margin.min(Duration::from_secs(5 * 60)).max(lasting);
        if let Some(token) = slot.fresh(margin) {
            return Ok(token);
        }
        let _flight = slot.flight.lock().await;
        if let Some(token) = slot.fresh(margin) {
            return Ok(token);
        }
        let (token, lifetime) = match account.config.flow {
            Flow::ClientCredentials => self.graph_app_only(&account).await?,
            _ => self.graph_redeem(&account).await?,
        };
        *slot.cached.lock() = Some((token.clone(), SystemTime::now() + lifetime));
        tracing::info!(account = %account.config.username, expires_in_secs = lifetime.as_secs(),
            "Graph access token issued");
        Ok(token)
    }

    /// Graph refused the token of `username` (401): the next message asks
    /// for a new one.
    pub fn graph_token_refused(&self, username: &str) {
        *self.graph.slot(username).cached.lock() = None;
    }

    async fn graph_app_only(
        &self,
        account: &AccountTokens,
    ) -> Result<(SecretString, Duration), TokenError> {
        let mut config = account.config.clone();
        config.scopes = Some(graph_scopes(&account.config));
        let response = crate::auth::flows::client_credentials(&config, &self.http)
            .await
            .map_err(|e| classify(&account.config.username, e).error)?;
        let lifetime = response.expires_in().unwrap_or(LIFETIME_WITHOUT_EXPIRY);
        let token = SecretString::from(response.access_token().secret().to_owned());
        Ok((token, lifetime))
    }

    /// The refresh token redeemed for Graph's scopes as one flight of the
    /// account's state machine (`Start` → `Rotated`, or the failure's
    /// event), so no refresh of the mail token runs on the same refresh
    /// token meanwhile; the rotated refresh token is on disk before the
    /// Graph token is handed out.
    async fn graph_redeem(
        &self,
        account: &Arc<AccountTokens>,
    ) -> Result<(SecretString, Duration), TokenError> {
        let username = account.config.username.clone();
        let key = match (account.sealed, account.current_key()) {
            (false, _) => None,
            (true, Some(key)) => Some(key),
            (true, None) => {
                return Err(TokenError::NeedsSignIn(format!(
                    "the tokens of {username} are sealed; they open at the next login with its password"
                )));
            }
        };
        // The mail path loads the disk, waits out a flight in progress and
        // answers a backoff or a refusal; then the state holds the refresh
        // token, unless another flight starts before this one.
        let (refresh_token, access) = loop {
            self.token(account, key.clone()).await?;
            let mut ended = {
                let mut state = account.lock();
                match state.kind() {
                    Kind::Ready => {
                        let Some(refresh_token) = state.refresh_token().cloned() else {
                            return Err(not_signed_in(&username));
                        };
                        let access = state
                            .access()
                            .map(|a| (a.token.clone(), unix_secs(a.expires_at)));
                        account.step(&mut state, Event::Start { login: true });
                        break (refresh_token, access);
                    }
                    Kind::Refreshing => account.flights.subscribe(),
                    // The mail path answered from a backoff or a refusal
                    // (its token in hand still lives): no flight ends by
                    // itself, and waiting for one would hold the client
                    // until a later login or the background refresh.
                    Kind::BackingOff | Kind::SignInNeeded | Kind::SignedOut | Kind::Locked => {
                        return Err(state
                            .error()
                            .cloned()
                            .unwrap_or_else(|| not_signed_in(&username)));
                    }
                }
            };
            let _ = ended.changed().await;
        };
        let scopes = graph_scopes(&account.config);
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // In its own task, as a refresh: a session dropped meanwhile cannot
        // lose a rotated token; the landing ends the flight either way.
        let landing = Landing::new(account.clone());
        let (job_account, http, store) = (account.clone(), self.http.clone(), self.store.clone());
        let in_flight = InFlight::new(&self.in_flight);
        let job = tokio::spawn(async move {
            let _in_flight = in_flight;
            let account = job_account;
            // A shared store: the account's lease, and the store's refresh
            // token (another proxy may have rotated the one in hand).
            let (refresh_token, mut lease, fence) = if store.is_shared() {
                // Without a margin the turn is always this proxy's.
                let turn = match take_turn(&store, &account, key.clone(), None).await {
                    Ok(Turn::Mine {
                        lease,
                        refresh_token,
                        fingerprint,
                    }) => Ok((refresh_token, Some(lease), Some(fingerprint))),
                    Ok(Turn::Theirs(_)) => Err(TokenError::Transient(
                        "the shared token store gave no turn for the Graph token".into(),
                    )),
                    Err(error) => Err(error),
                };
                match turn {
                    Ok(turn) => turn,
                    Err(error) => {
                        let event = match &error {
                            TokenError::Transient(_) => {
                                failed(&account, Failure::transient(error.clone()))
                            }
                            _ => Event::Failed(error.clone()),
                        };
                        landing.land(Some(event));
                        return Err(error);
                    }
                }
            } else {
                (refresh_token, None, None)
            };
            let response = match exchange_refresh(&account, &http, &refresh_token, &scopes).await {
                Ok(response) => response,
                Err(failure) => {
                    if let Some(lease) = lease.take() {
                        lease.release().await;
                    }
                    let error = failure.error.clone();
                    landing.land(Some(failed(&account, failure)));
                    return Err(error);
                }
            };
            let new_refresh = response
                .refresh_token()
                .map(|r| SecretString::from(r.secret().to_owned()));
            if let Some(new_refresh) = &new_refresh {
                // The mail access token in hand stays on disk beside it.
                let (access_token, expires_at) = match access {
                    Some((token, expires)) => (Some(token), Some(expires)),
                    None => (None, None),
                };
                let stored = StoredTokens {
                    refresh_token: Some(new_refresh.clone()),
                    access_token,
                    expires_at,
                };
                let expect = match &key {
                    Some(key) => Expect::SealedWith(key.clone()),
                    None => Expect::Unsealed(Some(refresh_token.clone())),
                };
                let saved =
                    save_fenced(store, &account.config.username, stored, key, expect, fence).await;
                if let Some(lease) = lease.take() {
                    lease.release().await;
                }
                match saved {
                    Ok(Saved::Written) => {}
                    Ok(Saved::Replaced) => {
                        let error = replaced(&account.config.username);
                        if account.sealed {
                            account.forget_unlock();
                        }
                        landing.land(Some(Event::Failed(error.clone())));
                        return Err(error);
                    }
                    Err(e) => tracing::error!(account = %account.config.username, error = %e,
                        "cannot save the rotated refresh token; it is kept in memory until the next successful write"),
                }
            }
            if let Some(lease) = lease.take() {
                lease.release().await;
            }
            landing.land(Some(Event::Rotated {
                refresh_token: new_refresh,
            }));
            let lifetime = response.expires_in().unwrap_or(LIFETIME_WITHOUT_EXPIRY);
            let token = SecretString::from(response.access_token().secret().to_owned());
            Ok::<_, TokenError>((token, lifetime))
        });
        match job.await {
            Ok(Ok(issued)) => Ok(issued),
            Ok(Err(e)) => {
                tracing::warn!(account = %username, error = %e, "Graph token request failed");
                Err(e)
            }
            Err(e) => Err(TokenError::Transient(format!(
                "Graph token request task failed: {e}"
            ))),
        }
    }
}
