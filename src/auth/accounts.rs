//! Which account a client means: the lookup (exact address, or an address
//! under an `@domain` catch-all), the checks that need no secret, and the
//! throttle of failed logins. The password itself is checked in one place,
//! `tokens::unlock`, for every kind of account; whether a catch-all address
//! is an account yet (it has tokens) is the token side's to say.

use std::sync::Arc;

use secrecy::ExposeSecret;

use super::by_address::{ByAddress, Lookup};
use super::throttle::Throttle;
use crate::config::AccountConfig;
use crate::sasl::Credentials;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("{0} is not an account of this proxy; add it to the configuration")]
    UnknownAccount(String),
    #[error("the password is empty: enter a password in the mail client")]
    EmptyPassword,
}

pub struct Accounts {
    by_name: ByAddress<AccountConfig>,
    /// Failed logins per source and account; shared with the configuration
    /// this one replaced, so a reload does not reset it.
    pub throttle: Arc<Throttle>,
}

impl Accounts {
    pub fn new(accounts: &[AccountConfig]) -> Accounts {
        Accounts {
            by_name: ByAddress::new(accounts, Arc::new),
            throttle: Arc::new(Throttle::new()),
        }
    }

    /// After a reload: keeps the throttle's counters, so a reload does not
    /// reset a guesser's record.
    pub fn carry_over(mut self, old: &Accounts) -> Accounts {
        self.by_name.carry_over(&old.by_name, |a| a);
        self.throttle = old.throttle.clone();
        self
    }

    /// The account the credentials name, if the checks that need no secret
    /// pass. Local refusals never reach the token endpoint or the mail server.
    pub fn lookup(&self, credentials: &Credentials) -> Result<Arc<AccountConfig>, LoginError> {
        // A catch-all address gets the catch-all's settings for this call
        // only: nothing is kept per address here.
        let account = match self.by_name.lookup(&credentials.username) {
            Lookup::Found(account) => account,
            Lookup::Candidate(catch_all) => {
                Arc::new(catch_all.for_address(&credentials.username.to_lowercase()))
            }
            Lookup::Unknown => {
                return Err(LoginError::UnknownAccount(credentials.username.clone()));
            }
        };
        if credentials.password.expose_secret().is_empty() {
            return Err(LoginError::EmptyPassword);
        }
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn creds(user: &str, pass: &str) -> Credentials {
        Credentials {
            username: user.into(),
            password: SecretString::from(pass.to_owned()),
        }
    }

    #[test]
    fn lookup_is_case_insensitive_and_refuses_empty_passwords() {
        let accounts = Accounts::new(&[AccountConfig::for_tests("Alice@Contoso.com")]);
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
            let got = accounts.lookup(&creds(user, pass)).map(|_| ());
            assert_eq!(&got, want, "{user}");
        }
    }

    fn account(username: &str) -> AccountConfig {
        AccountConfig::for_tests(username)
    }

    #[test]
    fn catch_all_addresses_are_accounts_of_their_own_and_cost_nothing_here() {
        let accounts = Accounts::new(&[account("@contoso.com")]);
        let a = accounts.lookup(&creds("A@Contoso.com", "pw")).unwrap();
        assert_eq!(a.username, "a@contoso.com");
        assert!(accounts.lookup(&creds("b@contoso.com", "pw")).is_ok());
        for stranger in ["a@fabrikam.com", "@contoso.com", "a@xcontoso.com"] {
            assert_eq!(
                accounts.lookup(&creds(stranger, "pw")).map(|_| ()),
                Err(LoginError::UnknownAccount(stranger.into()))
            );
        }
        for i in 0..10_000 {
            let _ = accounts.lookup(&creds(&format!("probe{i}@contoso.com"), "pw"));
        }
        assert_eq!(
            accounts.by_name.known_addresses(),
            0,
            "no entry per address"
        );
        assert!(accounts.lookup(&creds("late@contoso.com", "pw")).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_the_throttle() {
        use crate::auth::throttle::{LOCKOUT_FAILURES, Source, Subject};
        let peer = Source::Address(std::net::IpAddr::from([127, 0, 0, 9]));
        let alice = Subject::Account("alice@contoso.com".into());
        let old = Accounts::new(&[account("alice@contoso.com")]);
        for _ in 0..LOCKOUT_FAILURES {
            let attempt = old.throttle.admit(peer.clone(), alice.clone()).await;
            attempt.unwrap().failed();
        }
        assert!(
            old.throttle
                .admit(peer.clone(), alice.clone())
                .await
                .is_err()
        );
        let new = Accounts::new(&[account("alice@contoso.com")]).carry_over(&old);
        assert!(
            new.throttle.admit(peer, alice).await.is_err(),
            "a reload must not give a guesser a fresh start"
        );
    }
}
