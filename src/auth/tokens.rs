//! Access tokens per account: cached in memory, refreshed with the
//! refresh-token grant when less than a margin is left, one refresh in flight
//! per account (the others wait for it and share its outcome), and a rotated
//! refresh token on disk before the access token that came with it is used.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, ClientId, ClientSecret, RefreshToken, RequestTokenError, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};

use super::http::{HttpClient, HttpError};
use super::provider::{Endpoints, endpoints};
use super::vault::{StoredTokens, TokenStore};
use crate::config::AccountConfig;

/// Assumed lifetime of an access token whose response had no `expires_in`.
/// Short, so a wrong guess costs an early refresh rather than a failed login.
pub const LIFETIME_WITHOUT_EXPIRY: Duration = Duration::from_secs(10 * 60);
/// After a transient failure, logins within this window get the same answer
/// instead of each hammering an endpoint that is down.
pub const TRANSIENT_HOLD: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no account {0} is configured in the proxy")]
    UnknownAccount(String),
    /// No tokens, or the refresh token expired or was revoked.
    #[error("{0}")]
    NeedsSignIn(String),
    /// Network, timeouts, 429, 5xx: keep the tokens, try again later.
    #[error("{0}")]
    Transient(String),
    /// The endpoint refused the app itself (client id, secret, scopes).
    #[error("{0}")]
    Configuration(String),
}

struct Access {
    token: SecretString,
    expires_at: SystemTime,
}

#[derive(Default)]
struct RefreshState {
    /// Loaded from disk on first use; `None` after loading means no sign-in yet.
    refresh_token: Option<SecretString>,
    loaded: bool,
    last_failure: Option<(Instant, TokenError)>,
    not_before: Option<Instant>,
}

struct AccountTokens {
    config: AccountConfig,
    endpoints: Endpoints,
    cached: RwLock<Option<Access>>,
    refresh: tokio::sync::Mutex<RefreshState>,
}

impl AccountTokens {
    fn fresh(&self, margin: Duration) -> Option<SecretString> {
        let cached = self.cached.read().unwrap_or_else(|p| p.into_inner());
        let access = cached.as_ref()?;
        let left = access.expires_at.duration_since(SystemTime::now()).ok()?;
        (left > margin).then(|| access.token.clone())
    }

    fn set_cached(&self, token: SecretString, expires_at: SystemTime) {
        *self.cached.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Access { token, expires_at });
    }
}

pub struct TokenManager {
    accounts: HashMap<String, Arc<AccountTokens>>,
    http: HttpClient,
    store: Arc<TokenStore>,
    margin: Duration,
    refreshes: std::sync::atomic::AtomicU64,
}

impl TokenManager {
    pub fn new(
        accounts: &[AccountConfig],
        http: HttpClient,
        store: Arc<TokenStore>,
        margin: Duration,
    ) -> TokenManager {
        let accounts = accounts
            .iter()
            .map(|a| {
                let entry = AccountTokens {
                    config: a.clone(),
                    endpoints: endpoints(a),
                    cached: RwLock::new(None),
                    refresh: tokio::sync::Mutex::new(RefreshState::default()),
                };
                (a.username.to_lowercase(), Arc::new(entry))
            })
            .collect();
        TokenManager {
            accounts,
            http,
            store,
            margin,
            refreshes: Default::default(),
        }
    }

    /// How many refresh requests this process has sent (for status and tests).
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A valid access token for `username`, refreshing it when needed.
    pub async fn access_token(&self, username: &str) -> Result<SecretString, TokenError> {
        let account = self
            .accounts
            .get(&username.to_lowercase())
            .ok_or_else(|| TokenError::UnknownAccount(username.to_owned()))?;
        if let Some(token) = account.fresh(self.margin) {
            return Ok(token);
        }
        let asked_at = Instant::now();
        let mut state = account.refresh.lock().await;
        // Whoever held the lock before us may have refreshed or failed already.
        if let Some(token) = account.fresh(self.margin) {
            return Ok(token);
        }
        if let Some((at, err)) = &state.last_failure
            && (*at >= asked_at
                || (matches!(err, TokenError::Transient(_)) && at.elapsed() < TRANSIENT_HOLD))
        {
            return Err(err.clone());
        }
        if let Some(not_before) = state.not_before
            && Instant::now() < not_before
        {
            let secs = not_before
                .saturating_duration_since(Instant::now())
                .as_secs()
                + 1;
            return Err(TokenError::Transient(format!(
                "the token endpoint asked to wait; try again in {secs} s"
            )));
        }
        let result = self.refresh_locked(account, &mut state).await;
        match &result {
            Ok(_) => state.last_failure = None,
            Err(e) => state.last_failure = Some((Instant::now(), e.clone())),
        }
        result
    }

    async fn refresh_locked(
        &self,
        account: &AccountTokens,
        state: &mut RefreshState,
    ) -> Result<SecretString, TokenError> {
        let username = account.config.username.clone();
        // Until a sign-in exists, look at the disk each time: `authorize` may
        // have run in another process since.
        if !state.loaded || state.refresh_token.is_none() {
            let stored = self.load(&username).await?;
            state.loaded = true;
            if let Some(stored) = stored {
                state.refresh_token = stored.refresh_token;
                if let (Some(token), Some(exp)) = (stored.access_token, stored.expires_at) {
                    account.set_cached(token, UNIX_EPOCH + Duration::from_secs(exp));
                    if let Some(token) = account.fresh(self.margin) {
                        return Ok(token);
                    }
                }
            }
        }
        let Some(refresh_token) = state.refresh_token.clone() else {
            return Err(TokenError::NeedsSignIn(format!(
                "{username} has not been signed in yet: run `xoauth2-proxy authorize {username}`"
            )));
        };
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(account = %username, "refreshing access token");
        let response = match self.exchange_refresh(account, &refresh_token).await {
            Ok(r) => r,
            Err(Failure { error, retry_after }) => {
                if let Some(wait) = retry_after {
                    state.not_before = Some(Instant::now() + wait);
                }
                if let TokenError::NeedsSignIn(_) = error {
                    // The refresh token is dead; forget it so a new sign-in on disk is picked up.
                    state.refresh_token = None;
                }
                tracing::warn!(account = %username, error = %error, "token refresh failed");
                return Err(error);
            }
        };
        let access = SecretString::from(response.access_token().secret().to_owned());
        let lifetime = response.expires_in().unwrap_or(LIFETIME_WITHOUT_EXPIRY);
        let expires_at = SystemTime::now() + lifetime;
        let new_refresh = response
            .refresh_token()
            .map(|r| SecretString::from(r.secret().to_owned()))
            .unwrap_or(refresh_token);
        let stored = StoredTokens {
            refresh_token: Some(new_refresh.clone()),
            access_token: Some(access.clone()),
            expires_at: Some(unix_secs(expires_at)),
        };
        // The new refresh token must be on disk before anyone uses the access
        // token; if the disk refuses, keep it in memory so it is not lost
        // while this process runs, and say so loudly.
        if let Err(e) = self.save(&username, stored).await {
            tracing::error!(account = %username, error = %e, "cannot save the rotated refresh token; it is kept in memory until the next successful write");
        }
        state.refresh_token = Some(new_refresh);
        state.not_before = None;
        account.set_cached(access.clone(), expires_at);
        tracing::info!(account = %username, expires_in_secs = lifetime.as_secs(), "access token refreshed");
        Ok(access)
    }

    async fn load(&self, username: &str) -> Result<Option<StoredTokens>, TokenError> {
        let store = self.store.clone();
        let name = username.to_owned();
        tokio::task::spawn_blocking(move || store.load(&name))
            .await
            .map_err(|e| TokenError::Transient(format!("token store task failed: {e}")))?
            .map_err(|e| TokenError::Configuration(format!("cannot read the token store: {e}")))
    }

    async fn save(&self, username: &str, tokens: StoredTokens) -> Result<(), String> {
        let store = self.store.clone();
        let name = username.to_owned();
        tokio::task::spawn_blocking(move || store.save(&name, &tokens))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn exchange_refresh(
        &self,
        account: &AccountTokens,
        refresh_token: &SecretString,
    ) -> Result<oauth2::basic::BasicTokenResponse, Failure> {
        let token_url =
            TokenUrl::new(account.endpoints.token_url.clone()).map_err(|e| Failure {
                error: TokenError::Configuration(format!("token_url is not a URL: {e}")),
                retry_after: None,
            })?;
        let mut client = BasicClient::new(ClientId::new(account.config.client_id.clone()))
            .set_token_uri(token_url)
            .set_auth_type(AuthType::RequestBody);
        if let Some(secret) = &account.config.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        let refresh = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let client_http = self.http.clone();
        let http = move |req| {
            let client_http = client_http.clone();
            async move { client_http.send(req).await }
        };
        let mut request = client.exchange_refresh_token(&refresh);
        for scope in &account.endpoints.scopes {
            request = request.add_scope(oauth2::Scope::new(scope.clone()));
        }
        request
            .request_async(&http)
            .await
            .map_err(|e| classify(&account.config.username, e))
    }
}

struct Failure {
    error: TokenError,
    retry_after: Option<Duration>,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sorts a failed token request into what the caller must do about it.
/// Branches on the OAuth `error` code, never on AADSTS numbers (they change).
fn classify(
    username: &str,
    e: RequestTokenError<HttpError, oauth2::basic::BasicErrorResponse>,
) -> Failure {
    let sign_in = |why: &str| {
        TokenError::NeedsSignIn(format!(
            "the sign-in of {username} {why}: run `xoauth2-proxy authorize {username}`"
        ))
    };
    match e {
        RequestTokenError::ServerResponse(resp) => {
            let code = resp.error().as_ref().to_owned();
            let error = match resp.error() {
                BasicErrorResponseType::InvalidGrant => {
                    sign_in("has expired or was revoked (invalid_grant)")
                }
                BasicErrorResponseType::InvalidClient
                | BasicErrorResponseType::UnauthorizedClient => TokenError::Configuration(format!(
                    "the token endpoint refused the app ({code}): check client_id and client_secret of {username}"
                )),
                BasicErrorResponseType::InvalidScope => TokenError::Configuration(format!(
                    "the token endpoint refused the scopes ({code}): check scopes of {username}"
                )),
                BasicErrorResponseType::Extension(ext)
                    if ext == "interaction_required" || ext == "consent_required" =>
                {
                    sign_in(&format!("needs the user again ({ext})"))
                }
                BasicErrorResponseType::Extension(ext) if ext == "temporarily_unavailable" => {
                    TokenError::Transient("the token endpoint is temporarily unavailable".into())
                }
                _ => TokenError::Configuration(format!(
                    "the token endpoint refused the refresh ({code})"
                )),
            };
            Failure {
                error,
                retry_after: None,
            }
        }
        RequestTokenError::Request(HttpError::Status {
            status,
            retry_after,
        }) => Failure {
            error: TokenError::Transient(format!(
                "the token endpoint is not available (HTTP {status}); try again shortly"
            )),
            retry_after,
        },
        RequestTokenError::Request(HttpError::Transport(text)) => Failure {
            error: TokenError::Transient(text),
            retry_after: None,
        },
        RequestTokenError::Parse(_, _) => Failure {
            error: TokenError::Transient(
                "the token endpoint sent an answer that is not a token response".into(),
            ),
            retry_after: None,
        },
        RequestTokenError::Other(text) => Failure {
            error: TokenError::Transient(format!("token request failed: {text}")),
            retry_after: None,
        },
    }
}
