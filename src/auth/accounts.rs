//! Which account a client means, and whether it may use it: the lookup,
//! the checks that need no secret, the `password_hash` of unattended
//! accounts, and the per-source throttle of failed logins. (Delegated
//! accounts' passwords are checked by opening their sealed tokens, in
//! `tokens`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use secrecy::{ExposeSecret, SecretString};

use super::by_address::ByAddress;
pub use super::by_address::MAX_CATCH_ALL_ADDRESSES;
use super::password::{PasswordDigest, Tag, verify_phc};
use super::throttle::Throttle;
use crate::config::AccountConfig;
use crate::sasl::Credentials;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("{0} is not an account of this proxy; add it to the configuration")]
    UnknownAccount(String),
    #[error("the password is empty: enter a password in the mail client")]
    EmptyPassword,
    #[error("wrong password for {0}")]
    WrongPassword(String),
    /// The password could not be checked (a broken `password_hash`, a failed task).
    #[error("cannot check the password: {0}")]
    Unverifiable(String),
}

struct Account {
    config: Arc<AccountConfig>,
    /// The digest of the password that matched `password_hash` in this process.
    verified: RwLock<Option<Tag>>,
    /// One KDF run per account at a time.
    verifying: tokio::sync::Mutex<()>,
}

impl Account {
    fn new(config: AccountConfig) -> Arc<Account> {
        Arc::new(Account {
            config: Arc::new(config),
            verified: RwLock::new(None),
            verifying: tokio::sync::Mutex::new(()),
        })
    }
}

pub struct Accounts {
    by_name: ByAddress<Account>,
    digest: PasswordDigest,
    kdf_runs: AtomicU64,
    /// Failed logins per source address.
    pub throttle: Throttle,
}

impl Accounts {
    pub fn new(accounts: &[AccountConfig]) -> Accounts {
        Accounts {
            by_name: ByAddress::new(accounts, Account::new),
            digest: PasswordDigest::new(),
            kdf_runs: AtomicU64::new(0),
            throttle: Throttle::new(),
        }
    }

    /// After a reload: keeps the verified passwords of accounts whose
    /// settings did not change (see `TokenManager::carry_over`).
    pub fn carry_over(mut self, old: &Accounts) -> Accounts {
        self.digest = old.digest.clone();
        self.by_name.carry_over(&old.by_name, |a| &a.config);
        self
    }

    /// How many `password_hash` checks ran the KDF in this process.
    pub fn kdf_runs(&self) -> u64 {
        self.kdf_runs.load(Ordering::Relaxed)
    }

    /// The account the credentials name, if the checks that need no secret pass.
    pub fn lookup(&self, credentials: &Credentials) -> Result<Arc<AccountConfig>, LoginError> {
        self.find(credentials).map(|a| a.config.clone())
    }

    fn find(&self, credentials: &Credentials) -> Result<Arc<Account>, LoginError> {
        let account = self
            .by_name
            .get(&credentials.username, Account::new)
            .ok_or_else(|| LoginError::UnknownAccount(credentials.username.clone()))?;
        if credentials.password.expose_secret().is_empty() {
            return Err(LoginError::EmptyPassword);
        }
        Ok(account)
    }

    /// [`Accounts::lookup`], then, for an account with `password_hash`, the
    /// password against it: the KDF once per process, a keyed digest after.
    /// Local refusals never reach the token endpoint or the mail server.
    pub async fn verify(
        &self,
        credentials: &Credentials,
    ) -> Result<Arc<AccountConfig>, LoginError> {
        let account = self.find(credentials)?;
        let Some(phc) = &account.config.password_hash else {
            return Ok(account.config.clone());
        };
        let password = &credentials.password;
        if self.matches_verified(&account, password)? {
            return Ok(account.config.clone());
        }
        let _one_at_a_time = account.verifying.lock().await;
        if self.matches_verified(&account, password)? {
            return Ok(account.config.clone());
        }
        self.kdf_runs.fetch_add(1, Ordering::Relaxed);
        let candidate = zeroize::Zeroizing::new(password.expose_secret().as_bytes().to_vec());
        let phc = SecretString::from(phc.expose_secret().to_owned());
        let ok = tokio::task::spawn_blocking(move || verify_phc(&candidate, phc.expose_secret()))
            .await
            .map_err(|e| LoginError::Unverifiable(e.to_string()))?
            .map_err(|e| LoginError::Unverifiable(e.to_string()))?;
        if !ok {
            return Err(LoginError::WrongPassword(account.config.username.clone()));
        }
        *account.verified.write() = Some(self.digest.tag(password.expose_secret().as_bytes()));
        Ok(account.config.clone())
    }

    /// `Ok(true)` for the password verified before, `WrongPassword` for
    /// another, `Ok(false)` when none was verified yet.
    fn matches_verified(
        &self,
        account: &Account,
        password: &SecretString,
    ) -> Result<bool, LoginError> {
        let verified = account.verified.read();
        match verified.as_ref() {
            None => Ok(false),
            Some(tag)
                if self
                    .digest
                    .matches(password.expose_secret().as_bytes(), tag) =>
            {
                Ok(true)
            }
            Some(_) => Err(LoginError::WrongPassword(account.config.username.clone())),
        }
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
            password_hash: None,
            mailbox: None,
            cloud: None,
            client_certificate: None,
            client_key: None,
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
            let got = accounts.lookup(&creds(user, pass)).map(|_| ());
            assert_eq!(&got, want, "{user}");
        }
    }

    #[tokio::test]
    async fn catch_all_addresses_are_accounts_of_their_own_up_to_a_bound() {
        let accounts = Accounts::new(&[AccountConfig {
            password_hash: Some(SecretString::from(cheap_phc("domain-pw"))),
            username: "@contoso.com".into(),
            ..(*with_hash("x")
                .by_name
                .exact("scanner@contoso.com")
                .unwrap()
                .config)
                .clone()
        }]);
        let a = accounts
            .verify(&creds("A@Contoso.com", "domain-pw"))
            .await
            .unwrap();
        assert_eq!(a.username, "a@contoso.com");
        assert!(
            accounts
                .verify(&creds("b@contoso.com", "domain-pw"))
                .await
                .is_ok()
        );
        assert_eq!(accounts.kdf_runs(), 2, "each address verifies once");
        assert!(
            accounts
                .verify(&creds("a@contoso.com", "domain-pw"))
                .await
                .is_ok()
        );
        assert_eq!(accounts.kdf_runs(), 2);
        for stranger in ["a@fabrikam.com", "@contoso.com", "a@xcontoso.com"] {
            assert_eq!(
                accounts.lookup(&creds(stranger, "pw")).map(|_| ()),
                Err(LoginError::UnknownAccount(stranger.into()))
            );
        }
        for i in 0..MAX_CATCH_ALL_ADDRESSES {
            let _ = accounts.lookup(&creds(&format!("probe{i}@contoso.com"), "pw"));
        }
        assert!(accounts.lookup(&creds("late@contoso.com", "pw")).is_err());
        assert!(
            accounts.lookup(&creds("a@contoso.com", "pw")).is_ok(),
            "addresses seen before stay"
        );
    }

    /// A PHC string with cheap parameters (production ones are tested in `password`).
    fn cheap_phc(password: &str) -> String {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(
                password.as_bytes(),
                &SaltString::encode_b64(b"sixteen byte slt").unwrap(),
            )
            .unwrap()
            .to_string()
    }

    fn with_hash(phc: &str) -> Accounts {
        Accounts::new(&[AccountConfig {
            username: "scanner@contoso.com".into(),
            provider: ProviderKind::Office365,
            tenant: None,
            client_id: "id".into(),
            client_secret: None,
            flow: Flow::DeviceCode,
            authorize_url: None,
            token_url: None,
            device_code_url: None,
            scopes: None,
            password_hash: Some(SecretString::from(phc.to_owned())),
            mailbox: None,
            cloud: None,
            client_certificate: None,
            client_key: None,
        }])
    }

    #[tokio::test]
    async fn password_hash_is_checked_once_then_by_digest() {
        let accounts = with_hash(&cheap_phc("printer-pw"));
        let ok = creds("Scanner@contoso.com", "printer-pw");
        let wrong = creds("scanner@contoso.com", "printer-PW");
        assert_eq!(
            accounts.verify(&wrong).await.map(|_| ()),
            Err(LoginError::WrongPassword("scanner@contoso.com".into()))
        );
        assert_eq!(
            accounts.kdf_runs(),
            1,
            "a locked account pays a KDF per try"
        );
        for _ in 0..50 {
            accounts.verify(&ok).await.unwrap();
        }
        assert_eq!(accounts.kdf_runs(), 2);
        assert!(matches!(
            accounts.verify(&wrong).await,
            Err(LoginError::WrongPassword(_))
        ));
        assert_eq!(accounts.kdf_runs(), 2, "then wrong ones cost no KDF either");
        assert_eq!(
            accounts
                .verify(&creds("scanner@contoso.com", ""))
                .await
                .map(|_| ()),
            Err(LoginError::EmptyPassword)
        );
    }

    #[tokio::test]
    async fn accounts_without_password_hash_pass_to_the_vault() {
        let accounts = Accounts::new(&[AccountConfig {
            password_hash: None,
            ..(*with_hash("x")
                .by_name
                .exact("scanner@contoso.com")
                .unwrap()
                .config)
                .clone()
        }]);
        accounts
            .verify(&creds("scanner@contoso.com", "any"))
            .await
            .unwrap();
        assert_eq!(accounts.kdf_runs(), 0);
    }
}
