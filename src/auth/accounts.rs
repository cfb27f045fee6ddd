//! Which account a client means, and whether it may use it.

use std::collections::HashMap;

use secrecy::ExposeSecret;

use crate::config::AccountConfig;
use crate::protocol::Credentials;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("{0} is not an account of this proxy; add it to the configuration")]
    UnknownAccount(String),
    #[error("the password is empty: enter a password in the mail client")]
    EmptyPassword,
}

pub struct Accounts {
    by_name: HashMap<String, AccountConfig>,
}

impl Accounts {
    pub fn new(accounts: &[AccountConfig]) -> Accounts {
        Accounts {
            by_name: accounts
                .iter()
                .map(|a| (a.username.to_lowercase(), a.clone()))
                .collect(),
        }
    }

    /// The account the credentials name, if the local checks pass. Local
    /// refusals never reach the token endpoint or the mail server.
    pub fn verify(&self, credentials: &Credentials) -> Result<&AccountConfig, LoginError> {
        let account = self
            .by_name
            .get(&credentials.username.to_lowercase())
            .ok_or_else(|| LoginError::UnknownAccount(credentials.username.clone()))?;
        if credentials.password.expose_secret().is_empty() {
            return Err(LoginError::EmptyPassword);
        }
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Flow, ProviderKind};
    use secrecy::SecretString;

    fn creds(user: &str, pass: &str) -> Credentials {
        Credentials {
            username: user.into(),
            password: SecretString::from(pass.to_owned()),
        }
    }

    #[test]
    fn lookup_is_case_insensitive_and_refuses_empty_passwords() {
        let accounts = Accounts::new(&[AccountConfig {
            username: "Alice@Contoso.com".into(),
            provider: ProviderKind::Office365,
            tenant: None,
            client_id: "id".into(),
            client_secret: None,
            flow: Flow::DeviceCode,
            authorize_url: None,
            token_url: None,
            device_code_url: None,
            scopes: None,
        }]);
        let table: &[(&str, &str, Result<(), LoginError>)] = &[
            ("alice@contoso.com", "pw", Ok(())),
            ("ALICE@CONTOSO.COM", "pw", Ok(())),
            ("alice@contoso.com", "", Err(LoginError::EmptyPassword)),
            (
                "bob@contoso.com",
                "pw",
                Err(LoginError::UnknownAccount("bob@contoso.com".into())),
            ),
            ("", "pw", Err(LoginError::UnknownAccount(String::new()))),
        ];
        for (user, pass, want) in table {
            let got = accounts.verify(&creds(user, pass)).map(|_| ());
            assert_eq!(&got, want, "{user}");
        }
    }
}
