use super::*;
use secrecy::ExposeSecret;

use super::refresh::jitter;
use crate::auth::password::{SealKey, TEST_PARAMS};
use crate::auth::vault::{Entry, StoredTokens};
use crate::config::ProviderKind;

const USER: &str = "alice@contoso.com";

fn account(password_hash: Option<&str>) -> AccountConfig {
    AccountConfig {
        provider: ProviderKind::Custom,
        // Nothing listens here: a test that reaches the network fails loudly.
        token_url: Some("http://127.0.0.1:9/token".into()),
        scopes: Some(vec!["x".into()]),
        password_hash: password_hash.map(|s| SecretString::from(s.to_owned())),
        ..AccountConfig::for_tests(USER)
    }
}

fn manager(store: &Arc<TokenStore>, kdf: KdfParams) -> TokenManager {
    let tls = crate::tls::client_config(None).unwrap();
    let http = HttpClient::new(tls, Duration::from_secs(1)).unwrap();
    TokenManager::with_kdf(
        &[account(None)],
        http,
        store.clone(),
        Duration::from_secs(60),
        kdf,
    )
}

/// What a `password_hash` account's sign-in leaves: unsealed tokens with
/// an access token valid for an hour, so logins need no token endpoint.
fn signed_in() -> (tempfile::TempDir, Arc<TokenStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(TokenStore::new(dir.path()));
    store
        .save(
            USER,
            &StoredTokens {
                refresh_token: Some(SecretString::from("rt-1".to_owned())),
                access_token: Some(SecretString::from("at-1".to_owned())),
                expires_at: Some(unix_secs(SystemTime::now() + Duration::from_secs(3600))),
            },
        )
        .unwrap();
    (dir, store)
}

/// Writes `tokens` sealed under `password`, as a sign-in does (the page or
/// `authorize`: the password is chosen there).
fn seal(store: &TokenStore, password: &str, tokens: &StoredTokens) {
    let key = SealKey::derive(
        password.as_bytes(),
        TEST_PARAMS,
        crate::auth::password::random_salt(),
    )
    .unwrap();
    store.save_sealed(USER, tokens, &key).unwrap();
}

fn valid_hour(rt: &str, at: &str) -> StoredTokens {
    StoredTokens {
        refresh_token: Some(SecretString::from(rt.to_owned())),
        access_token: Some(SecretString::from(at.to_owned())),
        expires_at: Some(unix_secs(SystemTime::now() + Duration::from_secs(3600))),
    }
}

/// A sign-in that chose `password`: sealed tokens, an access token valid for an hour.
fn signed_in_with(password: &str) -> (tempfile::TempDir, Arc<TokenStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(TokenStore::new(dir.path()));
    seal(&store, password, &valid_hour("rt-1", "at-1"));
    (dir, store)
}

fn pw(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

fn sealed_params(store: &TokenStore) -> Option<KdfParams> {
    match store.load_entry(USER).unwrap()? {
        Entry::Sealed(s) => Some(s.params()),
        Entry::Unsealed(_) => None,
    }
}

#[tokio::test]
async fn first_login_opens_the_seal_and_later_ones_cost_no_kdf() {
    let (_dir, store) = signed_in_with("correct horse");
    let tokens = manager(&store, TEST_PARAMS);
    assert_eq!(
        sealed_params(&store),
        Some(TEST_PARAMS),
        "sealed at sign-in"
    );
    let at = tokens.login(USER, &pw("correct horse")).await.unwrap();
    assert_eq!(at.expose_secret(), "at-1");
    let text = std::fs::read_to_string(store.path_for(USER)).unwrap();
    assert!(!text.contains("rt-1") && !text.contains("at-1"), "{text}");
    for _ in 0..200 {
        tokens.login(USER, &pw("correct horse")).await.unwrap();
    }
    assert_eq!(tokens.kdf_runs(), 1, "one KDF per account per process");
    assert_eq!(tokens.refresh_count(), 0);
    // A new process opens the seal with the same password: one KDF again.
    let again = manager(&store, TEST_PARAMS);
    let at = again.login(USER, &pw("correct horse")).await.unwrap();
    assert_eq!(at.expose_secret(), "at-1");
    assert_eq!(again.kdf_runs(), 1);
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_the_tokens_are_kept() {
    let (_dir, store) = signed_in_with("right");
    manager(&store, TEST_PARAMS)
        .login(USER, &pw("right"))
        .await
        .unwrap();
    let before = std::fs::read(store.path_for(USER)).unwrap();
    // Locked (a new process): the wrong password fails to open the seal.
    let tokens = manager(&store, TEST_PARAMS);
    let err = tokens.login(USER, &pw("wrong")).await.unwrap_err();
    assert_eq!(err, TokenError::WrongPassword(USER.into()));
    assert!(!err.to_string().contains("wrong\""));
    assert_eq!(tokens.kdf_runs(), 1);
    // Unlocked: the wrong password is refused by the digest, with no KDF.
    tokens.login(USER, &pw("right")).await.unwrap();
    assert_eq!(tokens.kdf_runs(), 2);
    for _ in 0..10 {
        assert!(matches!(
            tokens.login(USER, &pw("Right")).await,
            Err(TokenError::WrongPassword(_))
        ));
    }
    assert_eq!(tokens.kdf_runs(), 2);
    assert_eq!(tokens.refresh_count(), 0);
    assert_eq!(std::fs::read(store.path_for(USER)).unwrap(), before);
}

#[tokio::test]
async fn concurrent_first_logins_share_one_kdf_run() {
    let (_dir, store) = signed_in_with("pw");
    let tokens = Arc::new(manager(&store, TEST_PARAMS));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let tokens = tokens.clone();
        tasks.spawn(async move { tokens.login(USER, &pw("pw")).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(tokens.kdf_runs(), 1);
}

#[tokio::test]
async fn entries_sealed_with_other_parameters_are_resealed_at_login() {
    let (_dir, store) = signed_in_with("pw");
    manager(&store, TEST_PARAMS)
        .login(USER, &pw("pw"))
        .await
        .unwrap();
    let raised = KdfParams {
        memory_kib: 128,
        iterations: 2,
        lanes: 1,
    };
    let tokens = manager(&store, raised);
    let at = tokens.login(USER, &pw("pw")).await.unwrap();
    assert_eq!(at.expose_secret(), "at-1");
    assert_eq!(sealed_params(&store), Some(raised));
    assert_eq!(tokens.kdf_runs(), 2, "open with the old, seal with the new");
    tokens.login(USER, &pw("pw")).await.unwrap();
    assert_eq!(tokens.kdf_runs(), 2);
    // The re-sealed entry opens with the password under the new parameters only.
    let fresh = manager(&store, raised);
    fresh.login(USER, &pw("pw")).await.unwrap();
    assert_eq!(fresh.kdf_runs(), 1);
    assert!(matches!(
        manager(&store, raised).login(USER, &pw("nope")).await,
        Err(TokenError::WrongPassword(_))
    ));
}

#[tokio::test]
async fn no_tokens_damaged_tokens_and_forget() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(TokenStore::new(dir.path()));
    let tokens = manager(&store, TEST_PARAMS);
    let err = tokens.login(USER, &pw("pw")).await.unwrap_err();
    assert!(
        matches!(&err, TokenError::NeedsSignIn(m) if m.contains("authorize")),
        "{err}"
    );
    assert_eq!(tokens.kdf_runs(), 0, "nothing to open");

    let (_dir, store) = signed_in_with("pw");
    manager(&store, TEST_PARAMS)
        .login(USER, &pw("pw"))
        .await
        .unwrap();
    let path = store.path_for(USER);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let ct = v["sealed"]["ciphertext"].as_str().unwrap().to_owned();
    let flipped = if ct.starts_with('A') { "B" } else { "A" };
    v["sealed"]["ciphertext"] = format!("{flipped}{}", &ct[1..]).into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let tokens = manager(&store, TEST_PARAMS);
    let err = tokens.login(USER, &pw("pw")).await.unwrap_err();
    assert!(
        matches!(&err, TokenError::NeedsSignIn(m) if m.contains("damaged") && m.contains("authorize")),
        "{err}"
    );
    // With the wrong password it is still just a wrong password.
    assert!(matches!(
        tokens.login(USER, &pw("other")).await,
        Err(TokenError::WrongPassword(_))
    ));

    // `forget`, then a new sign-in with a new password.
    assert!(store.remove(USER).unwrap());
    assert!(matches!(
        tokens.login(USER, &pw("pw")).await,
        Err(TokenError::NeedsSignIn(_))
    ));
    seal(&store, "new password", &valid_hour("rt-2", "at-2"));
    let at = tokens.login(USER, &pw("new password")).await.unwrap();
    assert_eq!(at.expose_secret(), "at-2");
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

fn hash_manager(store: &Arc<TokenStore>, phc: &str) -> TokenManager {
    let tls = crate::tls::client_config(None).unwrap();
    let http = HttpClient::new(tls, Duration::from_secs(1)).unwrap();
    TokenManager::with_kdf(
        &[account(Some(phc))],
        http,
        store.clone(),
        Duration::from_secs(60),
        TEST_PARAMS,
    )
}

#[tokio::test]
async fn password_hash_accounts_are_not_sealed() {
    let (_dir, store) = signed_in();
    let tokens = hash_manager(&store, &cheap_phc("printer-pw"));
    tokens.login(USER, &pw("printer-pw")).await.unwrap();
    assert_eq!(sealed_params(&store), None);
    assert_eq!(
        tokens.access_token(USER).await.unwrap().expose_secret(),
        "at-1"
    );
}

#[tokio::test]
async fn password_hash_is_checked_once_then_by_digest() {
    let (_dir, store) = signed_in();
    let tokens = hash_manager(&store, &cheap_phc("printer-pw"));
    let wrong = pw("printer-PW");
    assert!(matches!(
        tokens.login(USER, &wrong).await,
        Err(TokenError::WrongPassword(_))
    ));
    assert_eq!(tokens.kdf_runs(), 1, "a locked account pays a KDF per try");
    for _ in 0..50 {
        tokens.login(USER, &pw("printer-pw")).await.unwrap();
    }
    assert_eq!(tokens.kdf_runs(), 2);
    assert!(matches!(
        tokens.login(USER, &wrong).await,
        Err(TokenError::WrongPassword(_))
    ));
    assert_eq!(tokens.kdf_runs(), 2, "then wrong ones cost no KDF either");
}

#[test]
fn backoff_doubles_up_to_a_cap_and_honours_retry_after() {
    let b = BACKOFF_BASE;
    assert_eq!(backoff_delay(1, None, 0.0), b);
    assert_eq!(backoff_delay(2, None, 0.0), b * 2);
    assert_eq!(backoff_delay(3, None, 0.0), b * 4);
    assert_eq!(
        backoff_delay(0, None, 0.0),
        b,
        "0 is read as the first failure"
    );
    assert_eq!(backoff_delay(30, None, 0.0), BACKOFF_MAX);
    assert_eq!(backoff_delay(u32::MAX, None, 0.0), BACKOFF_MAX);
    // Jitter lengthens by up to BACKOFF_JITTER, never shortens.
    let most = backoff_delay(1, None, 1.0);
    assert_eq!(most, b.mul_f64(1.0 + BACKOFF_JITTER));
    assert_eq!(backoff_delay(1, None, 7.0), most, "jitter is clamped");
    assert_eq!(backoff_delay(1, None, -1.0), b);
    for _ in 0..100 {
        let d = backoff_delay(4, None, jitter());
        assert!(d >= b * 8 && d <= (b * 8).mul_f64(1.0 + BACKOFF_JITTER));
    }
    // Retry-After: at least what the endpoint asked for, capped.
    let asked = Duration::from_secs(90);
    assert_eq!(backoff_delay(1, Some(asked), 0.0), asked);
    assert!(backoff_delay(1, Some(asked), 1.0) >= asked);
    assert_eq!(
        backoff_delay(30, Some(Duration::from_secs(1)), 0.0),
        BACKOFF_MAX,
        "a short Retry-After does not cut the backoff"
    );
    assert_eq!(
        backoff_delay(1, Some(Duration::from_secs(86_400 * 7)), 0.0),
        RETRY_AFTER_MAX
    );
}

/// Tokens whose access token has expired: every login needs the endpoint.
fn expired() -> (tempfile::TempDir, Arc<TokenStore>) {
    let (dir, store) = signed_in_with("pw");
    seal(
        &store,
        "pw",
        &StoredTokens {
            refresh_token: Some(SecretString::from("rt-1".to_owned())),
            access_token: Some(SecretString::from("at-old".to_owned())),
            expires_at: Some(unix_secs(SystemTime::now() - Duration::from_secs(60))),
        },
    );
    (dir, store)
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_and_keep_the_tokens() {
    let (_dir, store) = expired();
    // Nothing listens on the token_url: every try is a transient failure.
    let tokens = manager(&store, TEST_PARAMS);
    let err = tokens.login(USER, &pw("pw")).await.unwrap_err();
    assert!(matches!(err, TokenError::Transient(_)), "{err}");
    assert_eq!(tokens.refresh_count(), 1);
    let mut expected = BACKOFF_BASE;
    for round in 1..=4u32 {
        let wait = tokens.retry_in(USER).await.expect("backing off");
        assert!(
            wait <= expected.mul_f64(1.0 + BACKOFF_JITTER)
                && wait + Duration::from_secs(1) >= expected,
            "round {round}: {wait:?} for {expected:?}"
        );
        // Logins during the wait are answered locally.
        for _ in 0..5 {
            let err = tokens.login(USER, &pw("pw")).await.unwrap_err();
            assert!(
                matches!(&err, TokenError::Transient(m) if m.contains("tries again in")),
                "{err}"
            );
        }
        assert_eq!(tokens.refresh_count(), u64::from(round));
        tokio::time::advance(wait).await;
        assert!(tokens.login(USER, &pw("pw")).await.is_err());
        assert_eq!(tokens.refresh_count(), u64::from(round) + 1);
        expected *= 2;
    }
    // The refresh token was never dropped: the entry still opens to it.
    let key = match store.load_entry(USER).unwrap().unwrap() {
        Entry::Sealed(s) => {
            let k = SealKey::derive(b"pw", s.params(), s.salt()).unwrap();
            s.open(&k).unwrap()
        }
        Entry::Unsealed(_) => panic!("sealed at sign-in"),
    };
    assert_eq!(key.refresh_token.unwrap().expose_secret(), "rt-1");
}

#[tokio::test]
async fn a_still_valid_token_is_used_while_the_endpoint_is_down() {
    let (_dir, store) = signed_in_with("pw");
    seal(
        &store,
        "pw",
        &StoredTokens {
            refresh_token: Some(SecretString::from("rt-1".to_owned())),
            access_token: Some(SecretString::from("at-inside-margin".to_owned())),
            // Inside the 60 s margin, but not expired.
            expires_at: Some(unix_secs(SystemTime::now() + Duration::from_secs(45))),
        },
    );
    let tokens = manager(&store, TEST_PARAMS);
    let at = tokens.login(USER, &pw("pw")).await.unwrap();
    assert_eq!(at.expose_secret(), "at-inside-margin");
    assert_eq!(tokens.refresh_count(), 1, "a refresh was tried");
    assert!(tokens.retry_in(USER).await.is_some());
}

#[tokio::test]
async fn a_sealed_account_gives_no_token_without_its_password() {
    let (_dir, store) = signed_in_with("pw");
    let tokens = manager(&store, TEST_PARAMS);
    assert!(matches!(
        tokens.access_token(USER).await,
        Err(TokenError::NeedsSignIn(_))
    ));
    tokens.login(USER, &pw("pw")).await.unwrap();
    assert_eq!(
        tokens.access_token(USER).await.unwrap().expose_secret(),
        "at-1"
    );
}

fn catch_all_manager(store: &Arc<TokenStore>, phc: Option<&str>) -> TokenManager {
    let tls = crate::tls::client_config(None).unwrap();
    let http = HttpClient::new(tls, Duration::from_secs(1)).unwrap();
    let catch_all = AccountConfig {
        username: "@contoso.com".into(),
        ..account(phc)
    };
    TokenManager::with_kdf(
        &[catch_all],
        http,
        store.clone(),
        Duration::from_secs(60),
        TEST_PARAMS,
    )
}

#[tokio::test]
async fn a_catch_all_address_earns_its_entry_only_with_tokens_or_a_sign_in() {
    let (_dir, store) = signed_in_with("alice-pw");
    let tokens = catch_all_manager(&store, None);
    // Probing: no tokens, no entry, however many addresses.
    for i in 0..1000 {
        let probe = format!("probe{i}@contoso.com");
        assert_eq!(
            tokens.standing(&probe).await,
            Standing::NotAnAccount(not_signed_in(&probe))
        );
        assert!(tokens.login(&probe, &pw("x")).await.is_err());
    }
    assert_eq!(
        tokens.standing("a@fabrikam.com").await,
        Standing::NotAnAccount(TokenError::UnknownAccount("a@fabrikam.com".into()))
    );
    assert_eq!(tokens.catch_all_addresses(), 0);
    // Tokens on disk (`authorize`, perhaps by another process): an account.
    assert_eq!(
        tokens.standing("Alice@Contoso.com").await,
        Standing::Account(USER.into())
    );
    assert_eq!(tokens.catch_all_addresses(), 1);
    tokens.login(USER, &pw("alice-pw")).await.unwrap();
    // A sign-in finished on the page.
    tokens.signed_in("bob@contoso.com").await;
    assert_eq!(
        tokens.standing("bob@contoso.com").await,
        Standing::Account("bob@contoso.com".into())
    );
    assert_eq!(tokens.catch_all_addresses(), 2);
    // Not for a name outside every catch-all.
    tokens.signed_in("eve@fabrikam.com").await;
    assert_eq!(tokens.catch_all_addresses(), 2);
}

#[tokio::test]
async fn under_a_password_hash_catch_all_only_the_right_password_makes_an_entry() {
    let (_dir, store) = signed_in();
    let tokens = catch_all_manager(&store, Some(&cheap_phc("shared-pw")));
    assert_eq!(
        tokens.standing("x@contoso.com").await,
        Standing::Account("@contoso.com".into()),
        "guesses try the catch-all's one password"
    );
    assert!(matches!(
        tokens.login("x@contoso.com", &pw("wrong")).await,
        Err(TokenError::WrongPassword(_))
    ));
    assert_eq!(tokens.catch_all_addresses(), 0);
    // The right password: its entry (the token request itself fails here:
    // nothing listens at the token endpoint).
    let _ = tokens.login(USER, &pw("shared-pw")).await;
    assert_eq!(tokens.catch_all_addresses(), 1);
}

/// The old pending state: tokens in clear for an account sealed with its
/// password. Whoever logged in first would have chosen the password; now
/// no login opens them, nothing is written, and the error says to sign in.
#[tokio::test]
async fn unsealed_tokens_of_a_sealed_account_are_refused_not_bound() {
    let (_dir, store) = signed_in();
    let before = std::fs::read(store.path_for(USER)).unwrap();
    let tokens = manager(&store, TEST_PARAMS);
    let err = tokens.login(USER, &pw("first come")).await.unwrap_err();
    assert!(
        matches!(&err, TokenError::NeedsSignIn(m) if m.contains("sign in again")),
        "{err}"
    );
    assert_eq!(tokens.kdf_runs(), 0);
    assert_eq!(std::fs::read(store.path_for(USER)).unwrap(), before);
    assert!(matches!(
        tokens.access_token(USER).await,
        Err(TokenError::NeedsSignIn(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn concurrent_logins_share_one_failed_refresh_and_its_outcome() {
    // Expired tokens, an endpoint that cannot be reached: the first login
    // starts the one flight, the others wait for it and hear its failure.
    let (_dir, store) = expired();
    let tokens = Arc::new(manager(&store, TEST_PARAMS));
    tokens.login(USER, &pw("pw")).await.unwrap_err();
    tokio::time::advance(tokens.retry_in(USER).await.expect("backing off")).await;
    let before = tokens.refresh_count();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let tokens = tokens.clone();
        tasks.spawn(async move { tokens.login(USER, &pw("pw")).await });
    }
    while let Some(r) = tasks.join_next().await {
        let err = r.unwrap().unwrap_err();
        assert!(matches!(err, TokenError::Transient(_)), "{err}");
    }
    assert_eq!(
        tokens.refresh_count(),
        before + 1,
        "one request for 20 logins"
    );
    assert!(tokens.retry_in(USER).await.is_some(), "backing off again");
    let rows = tokens.status().await;
    let row = rows.iter().find(|r| r.username == USER).unwrap();
    assert!(
        row.retry_in.is_some() && row.last_error.is_some(),
        "{row:?}"
    );
}
