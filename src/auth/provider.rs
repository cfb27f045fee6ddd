//! Where an account gets its tokens: endpoints and scopes per provider.

use crate::config::{AccountConfig, ProviderKind};

/// The Microsoft identity platform (v2.0) host for the global cloud.
const MICROSOFT_LOGIN_HOST: &str = "https://login.microsoftonline.com";
/// Used when an office365 account names no tenant: work, school and personal accounts.
const DEFAULT_TENANT: &str = "common";

/// Delegated scopes for all three protocols; `offline_access` yields a refresh token.
pub const OFFICE365_DELEGATED_SCOPES: [&str; 4] = [
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "offline_access",
];

/// Resolved endpoints of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub authorize_url: Option<String>,
    pub token_url: String,
    pub device_code_url: Option<String>,
    pub scopes: Vec<String>,
}

/// Fills in the provider's defaults; explicit settings in the account win.
pub fn endpoints(account: &AccountConfig) -> Endpoints {
    let (authorize, token, device, scopes) = match account.provider {
        ProviderKind::Office365 => {
            let tenant = account.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
            let base = format!("{MICROSOFT_LOGIN_HOST}/{tenant}/oauth2/v2.0");
            (
                Some(format!("{base}/authorize")),
                Some(format!("{base}/token")),
                Some(format!("{base}/devicecode")),
                OFFICE365_DELEGATED_SCOPES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            )
        }
        ProviderKind::Custom => (None, None, None, Vec::new()),
    };
    Endpoints {
        authorize_url: account.authorize_url.clone().or(authorize),
        // Validation guarantees a custom provider has a token_url.
        token_url: account.token_url.clone().or(token).unwrap_or_default(),
        device_code_url: account.device_code_url.clone().or(device),
        scopes: account.scopes.clone().unwrap_or(scopes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Flow;

    fn account(provider: ProviderKind, tenant: Option<&str>) -> AccountConfig {
        AccountConfig {
            username: "alice@contoso.com".into(),
            provider,
            tenant: tenant.map(str::to_owned),
            client_id: "id".into(),
            client_secret: None,
            flow: Flow::DeviceCode,
            authorize_url: None,
            token_url: None,
            device_code_url: None,
            scopes: None,
            password_hash: None,
            mailbox: None,
        }
    }

    #[test]
    fn office365_fills_tenant_endpoints_and_scopes() {
        let e = endpoints(&account(
            ProviderKind::Office365,
            Some("contoso.onmicrosoft.com"),
        ));
        assert_eq!(
            e.token_url,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            e.device_code_url.as_deref(),
            Some(
                "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode"
            )
        );
        assert_eq!(e.scopes.len(), 4);
        assert!(e.scopes.contains(&"offline_access".to_string()));
        let e = endpoints(&account(ProviderKind::Office365, None));
        assert!(e.token_url.contains("/common/"));
    }

    #[test]
    fn overrides_win() {
        let mut a = account(ProviderKind::Office365, None);
        a.token_url = Some("http://127.0.0.1:1/token".into());
        a.scopes = Some(vec!["x".into()]);
        let e = endpoints(&a);
        assert_eq!(e.token_url, "http://127.0.0.1:1/token");
        assert_eq!(e.scopes, vec!["x".to_string()]);
        assert!(e.device_code_url.unwrap().contains("devicecode"));
    }
}
