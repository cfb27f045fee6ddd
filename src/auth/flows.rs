//! OAuth grants that obtain an account's first tokens.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, ClientId, ClientSecret, DeviceAuthorizationUrl, RequestTokenError, Scope,
    TokenResponse, TokenUrl,
};
use oauth2::{DeviceAuthorizationResponse, ExtraDeviceAuthorizationFields};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::http::{HttpClient, HttpError};
use super::provider::endpoints;
use super::tokens::LIFETIME_WITHOUT_EXPIRY;
use super::vault::StoredTokens;
use crate::config::AccountConfig;

/// Microsoft adds a ready-made sentence for the user to the device response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceFields {
    #[serde(default)]
    pub message: Option<String>,
}
impl ExtraDeviceAuthorizationFields for DeviceFields {}

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("{0}")]
    Config(String),
    #[error("the device code request failed: {0}")]
    DeviceRequest(String),
    #[error("sign-in did not complete: {0}")]
    Token(String),
}

/// What to show the user while the device flow waits.
pub struct DevicePrompt {
    pub message: String,
    pub verification_uri: String,
    pub user_code: String,
    pub expires_in: Duration,
}

/// Runs the device authorization grant (RFC 8628): asks for a code, hands
/// the prompt to `show`, then polls at the server's interval, slowing down
/// when told to, until the user has signed in, declined, or the code expired.
pub async fn device_code(
    account: &AccountConfig,
    http: &HttpClient,
    show: impl FnOnce(&DevicePrompt),
) -> Result<StoredTokens, FlowError> {
    let ep = endpoints(account);
    let device_url = ep.device_code_url.clone().ok_or_else(|| {
        FlowError::Config(format!(
            "account {} has no device_code_url",
            account.username
        ))
    })?;
    let mut client = BasicClient::new(ClientId::new(account.client_id.clone()))
        .set_token_uri(
            TokenUrl::new(ep.token_url.clone()).map_err(|e| FlowError::Config(e.to_string()))?,
        )
        .set_device_authorization_url(
            DeviceAuthorizationUrl::new(device_url)
                .map_err(|e| FlowError::Config(e.to_string()))?,
        )
        .set_auth_type(AuthType::RequestBody);
    if let Some(secret) = &account.client_secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
    }
    let send = move |req| {
        let http = http.clone();
        async move { http.send(req).await }
    };
    let details: DeviceAuthorizationResponse<DeviceFields> = client
        .exchange_device_code()
        .add_scopes(ep.scopes.iter().cloned().map(Scope::new))
        .request_async(&send)
        .await
        .map_err(|e| FlowError::DeviceRequest(describe(e)))?;
    let prompt = DevicePrompt {
        message: details.extra_fields().message.clone().unwrap_or_else(|| {
            format!(
                "To sign in, open {} and enter the code {}",
                details.verification_uri().as_str(),
                details.user_code().secret()
            )
        }),
        verification_uri: details.verification_uri().to_string(),
        user_code: details.user_code().secret().to_owned(),
        expires_in: details.expires_in(),
    };
    show(&prompt);
    let response = client
        .exchange_device_access_token(&details)
        .request_async(&send, tokio::time::sleep, Some(details.expires_in()))
        .await
        .map_err(|e| FlowError::Token(describe(e)))?;
    let lifetime = response.expires_in().unwrap_or(LIFETIME_WITHOUT_EXPIRY);
    let expires_at = SystemTime::now() + lifetime;
    Ok(StoredTokens {
        refresh_token: response
            .refresh_token()
            .map(|r| SecretString::from(r.secret().to_owned())),
        access_token: Some(SecretString::from(
            response.access_token().secret().to_owned(),
        )),
        expires_at: Some(
            expires_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        ),
    })
}

fn describe<T: oauth2::ErrorResponse + std::fmt::Display>(
    e: RequestTokenError<HttpError, T>,
) -> String {
    match e {
        RequestTokenError::ServerResponse(r) => r.to_string(),
        RequestTokenError::Request(h) => h.to_string(),
        RequestTokenError::Parse(p, _) => format!("unexpected answer: {p}"),
        RequestTokenError::Other(o) => o,
    }
}
