//! Where an account gets its tokens: endpoints and scopes per provider
//! (Office 365 in each Microsoft cloud, Gmail, or a custom one).

use super::identity::IDENTITY_SCOPES;
use crate::config::{AccountConfig, Cloud, Flow, ProviderKind};

/// Used when an office365 account names no tenant: work, school and personal accounts.
const DEFAULT_TENANT: &str = "common";

/// Delegated scopes for all three protocols in the global cloud;
/// `offline_access` yields a refresh token. [`delegated_scopes`] gives them
/// for every cloud.
pub const OFFICE365_DELEGATED_SCOPES: [&str; 4] = [
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "offline_access",
];

/// Google's endpoints and the one scope that covers IMAP, POP3 and SMTP.
pub const GMAIL_AUTHORIZE_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
pub const GMAIL_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
pub const GMAIL_DEVICE_CODE_URL: &str = "https://oauth2.googleapis.com/device/code";
pub const GMAIL_SCOPE: &str = "https://mail.google.com/";

/// The Microsoft identity platform host of a cloud.
pub fn login_host(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Global => "https://login.microsoftonline.com",
        Cloud::Usgov => "https://login.microsoftonline.us",
        Cloud::China => "https://login.chinacloudapi.cn",
    }
}

/// The resource (audience) of the delegated Exchange Online scopes.
fn delegated_resource(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Global => "https://outlook.office.com",
        Cloud::Usgov => "https://outlook.office365.us",
        Cloud::China => "https://partner.outlook.cn",
    }
}

/// Delegated IMAP, POP and SMTP scopes of a cloud, with `offline_access`.
pub fn delegated_scopes(cloud: Cloud) -> Vec<String> {
    let resource = delegated_resource(cloud);
    vec![
        format!("{resource}/IMAP.AccessAsUser.All"),
        format!("{resource}/POP.AccessAsUser.All"),
        format!("{resource}/SMTP.Send"),
        "offline_access".to_owned(),
    ]
}

/// The app-only (client credentials) scope of a cloud: every application
/// permission granted to the app (IMAP.AccessAsApp, POP.AccessAsApp, SMTP.SendAsApp).
pub fn app_only_scope(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Global => "https://outlook.office365.com/.default",
        Cloud::Usgov => "https://outlook.office365.us/.default",
        Cloud::China => "https://partner.outlook.cn/.default",
    }
}

/// Exchange Online's mail hosts in a cloud: (IMAP and POP3 host, the same
/// again, SMTP submission host). IMAP is on 993 and POP3 on 995 (implicit
/// TLS), SMTP on 587 (STARTTLS). For documentation and `doctor`; listeners
/// name their upstream themselves.
pub fn mail_hosts(cloud: Cloud) -> (&'static str, &'static str, &'static str) {
    match cloud {
        Cloud::Global => (
            "outlook.office365.com",
            "outlook.office365.com",
            "smtp.office365.com",
        ),
        Cloud::Usgov => (
            "outlook.office365.us",
            "outlook.office365.us",
            "smtp.office365.us",
        ),
        Cloud::China => (
            "partner.outlook.cn",
            "partner.outlook.cn",
            "smtp.partner.outlook.cn",
        ),
    }
}

/// Resolved endpoints of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub authorize_url: Option<String>,
    pub token_url: String,
    pub device_code_url: Option<String>,
    /// Delegated scopes, or for a client-credentials account its app-only scope.
    pub scopes: Vec<String>,
}

/// Fills in the provider's defaults; explicit settings in the account win.
pub fn endpoints(account: &AccountConfig) -> Endpoints {
    let app_only = account.flow == Flow::ClientCredentials;
    let (authorize, token, device, scopes) = match account.provider {
        ProviderKind::Office365 => {
            let cloud = account.cloud();
            let tenant = account.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
            let base = format!("{}/{tenant}/oauth2/v2.0", login_host(cloud));
            let scopes = if app_only {
                vec![app_only_scope(cloud).to_owned()]
            } else {
                delegated_scopes(cloud)
            };
            (
                Some(format!("{base}/authorize")),
                Some(format!("{base}/token")),
                Some(format!("{base}/devicecode")),
                scopes,
            )
        }
        ProviderKind::Gmail => (
            Some(GMAIL_AUTHORIZE_URL.to_owned()),
            Some(GMAIL_TOKEN_URL.to_owned()),
            Some(GMAIL_DEVICE_CODE_URL.to_owned()),
            vec![GMAIL_SCOPE.to_owned()],
        ),
        ProviderKind::Custom => (None, None, None, Vec::new()),
    };
    let mut scopes = account.scopes.clone().unwrap_or(scopes);
    // A delegated sign-in must say who signed in (`auth::identity`): ask
    // for an id_token, unless the account opted out.
    if !app_only && account.verifies_identity() {
        for scope in IDENTITY_SCOPES {
            if !scopes.iter().any(|s| s == scope) {
                scopes.push(scope.to_owned());
            }
        }
    }
    Endpoints {
        authorize_url: account.authorize_url.clone().or(authorize),
        // Validation guarantees a custom provider has a token_url.
        token_url: account.token_url.clone().or(token).unwrap_or_default(),
        device_code_url: account.device_code_url.clone().or(device),
        scopes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(provider: ProviderKind, tenant: Option<&str>) -> AccountConfig {
        let text = format!(
            "username = \"alice@contoso.com\"\nprovider = \"{}\"\nclient_id = \"id\"\n{}",
            match provider {
                ProviderKind::Office365 => "office365",
                ProviderKind::Gmail => "gmail",
                ProviderKind::Custom => "custom",
            },
            tenant
                .map(|t| format!("tenant = \"{t}\"\n"))
                .unwrap_or_default()
        );
        toml::from_str(&text).expect("an account")
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
        let mut want = OFFICE365_DELEGATED_SCOPES.map(String::from).to_vec();
        want.extend(IDENTITY_SCOPES.map(String::from));
        assert_eq!(e.scopes, want, "mail scopes, then who signed in");
        let e = endpoints(&account(ProviderKind::Office365, None));
        assert!(e.token_url.contains("/common/"));
    }

    #[test]
    fn clouds_choose_login_host_and_scope_resource() {
        let cases = [
            (
                Cloud::Global,
                "https://login.microsoftonline.com/t/oauth2/v2.0",
                "https://outlook.office.com/IMAP.AccessAsUser.All",
                "https://outlook.office365.com/.default",
                ("outlook.office365.com", "smtp.office365.com"),
            ),
            (
                Cloud::Usgov,
                "https://login.microsoftonline.us/t/oauth2/v2.0",
                "https://outlook.office365.us/IMAP.AccessAsUser.All",
                "https://outlook.office365.us/.default",
                ("outlook.office365.us", "smtp.office365.us"),
            ),
            (
                Cloud::China,
                "https://login.chinacloudapi.cn/t/oauth2/v2.0",
                "https://partner.outlook.cn/IMAP.AccessAsUser.All",
                "https://partner.outlook.cn/.default",
                ("partner.outlook.cn", "smtp.partner.outlook.cn"),
            ),
        ];
        for (cloud, base, imap_scope, app_scope, (imap, smtp)) in cases {
            let mut a = account(ProviderKind::Office365, Some("t"));
            a.cloud = Some(cloud);
            let e = endpoints(&a);
            assert_eq!(
                e.authorize_url.as_deref(),
                Some(&*format!("{base}/authorize"))
            );
            assert_eq!(e.token_url, format!("{base}/token"));
            assert_eq!(
                e.device_code_url.as_deref(),
                Some(&*format!("{base}/devicecode"))
            );
            assert_eq!(e.scopes[0], imap_scope, "{cloud:?}");
            assert!(e.scopes.iter().all(|s| s == "offline_access"
                || IDENTITY_SCOPES.contains(&s.as_str())
                || s.starts_with(imap_scope.trim_end_matches("IMAP.AccessAsUser.All"))));
            assert!(e.scopes.contains(&"offline_access".to_owned()));
            a.flow = Flow::ClientCredentials;
            assert_eq!(endpoints(&a).scopes, vec![app_scope.to_owned()]);
            assert_eq!(app_only_scope(cloud), app_scope);
            assert_eq!(mail_hosts(cloud), (imap, imap, smtp));
        }
        // No cloud: the global one.
        let a = account(ProviderKind::Office365, Some("t"));
        assert_eq!(a.cloud(), Cloud::Global);
        assert!(
            endpoints(&a)
                .token_url
                .starts_with("https://login.microsoftonline.com/")
        );
    }

    #[test]
    fn gmail_preset() {
        let e = endpoints(&account(ProviderKind::Gmail, None));
        assert_eq!(
            e.authorize_url.as_deref(),
            Some("https://accounts.google.com/o/oauth2/v2/auth")
        );
        assert_eq!(e.token_url, "https://oauth2.googleapis.com/token");
        assert_eq!(
            e.device_code_url.as_deref(),
            Some("https://oauth2.googleapis.com/device/code")
        );
        assert_eq!(
            e.scopes,
            ["https://mail.google.com/", "openid", "profile", "email"].map(String::from)
        );
    }

    #[test]
    fn overrides_win() {
        let mut a = account(ProviderKind::Office365, None);
        a.token_url = Some("http://127.0.0.1:1/token".into());
        a.scopes = Some(vec!["x".into()]);
        let e = endpoints(&a);
        assert_eq!(e.token_url, "http://127.0.0.1:1/token");
        // Configured scopes, plus the identity ones (not repeated if listed).
        assert_eq!(
            e.scopes,
            ["x", "openid", "profile", "email"].map(String::from)
        );
        a.scopes = Some(vec!["x".into(), "openid".into()]);
        assert_eq!(
            endpoints(&a).scopes,
            ["x", "openid", "profile", "email"].map(String::from)
        );
        assert!(e.device_code_url.unwrap().contains("devicecode"));
        a.scopes = Some(vec!["x".into()]);
        a.flow = Flow::ClientCredentials;
        assert_eq!(
            endpoints(&a).scopes,
            vec!["x".to_string()],
            "app-only: no user"
        );
        let mut c = account(ProviderKind::Custom, None);
        c.token_url = Some("https://idp.example/token".into());
        c.scopes = Some(vec!["mail".into()]);
        let e = endpoints(&c);
        assert_eq!(e.authorize_url, None);
        assert_eq!(e.token_url, "https://idp.example/token");
        assert_eq!(
            e.scopes,
            ["mail", "openid", "profile", "email"].map(String::from)
        );
        // A custom provider without OpenID Connect opts out: its scopes as given.
        c.verify_identity = Some(false);
        assert_eq!(endpoints(&c).scopes, vec!["mail".to_string()]);
    }
}
