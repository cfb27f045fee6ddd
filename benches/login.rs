//! What a login costs: the first one of an account in a process (Argon2id
//! with the production parameters, then opening the seal) against a later
//! one (a keyed digest of the password). Prints a table; not a timed test.
//!
//! cargo bench --bench login

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use secrecy::ExposeSecret as _;
use secrecy::SecretString;
use xoauth2_proxy::auth::http::HttpClient;
use xoauth2_proxy::auth::password::{KdfParams, SealKey, random_salt};
use xoauth2_proxy::auth::tokens::TokenManager;
use xoauth2_proxy::auth::vault::{StoredTokens, TokenStore};
use xoauth2_proxy::config::AccountConfig;

const USER: &str = "bench@example.test";
/// First logins measured (each in a fresh manager, as in a fresh process).
const FIRST_RUNS: usize = 21;
/// Later logins measured.
const LATER_RUNS: usize = 20_001;

fn account() -> AccountConfig {
    // Never contacted: the stored access token is valid for hours.
    toml::from_str(&format!(
        "username = \"{USER}\"\nprovider = \"custom\"\nclient_id = \"bench\"\n\
         token_url = \"http://127.0.0.1:9/token\"\nscopes = [\"x\"]\n"
    ))
    .expect("the bench account")
}

fn manager(store: &Arc<TokenStore>, http: &HttpClient) -> TokenManager {
    TokenManager::with_kdf(
        &[account()],
        http.clone(),
        store.clone(),
        Duration::from_secs(300),
        KdfParams::CURRENT,
    )
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(TokenStore::new(dir.path()));
    let expires = SystemTime::now() + Duration::from_secs(6 * 3600);
    let tls = xoauth2_proxy::tls::client_config(None).expect("tls");
    let http = HttpClient::new(tls, Duration::from_secs(1)).expect("http");
    let password = SecretString::from("correct horse battery staple".to_owned());
    // The sign-in seals the tokens under the password chosen with it.
    let started = Instant::now();
    let key = SealKey::derive(
        password.expose_secret().as_bytes(),
        KdfParams::CURRENT,
        random_salt(),
    )
    .expect("derive");
    store
        .save_sealed(
            USER,
            &StoredTokens {
                refresh_token: Some(SecretString::from("rt-bench".to_owned())),
                access_token: Some(SecretString::from("at-bench".to_owned())),
                expires_at: Some(expires.duration_since(UNIX_EPOCH).unwrap().as_secs()),
            },
            &key,
        )
        .expect("seed");
    let sign_in = started.elapsed();

    runtime.block_on(async {
        let mut first = Vec::with_capacity(FIRST_RUNS);
        for _ in 0..FIRST_RUNS {
            let fresh = manager(&store, &http);
            let started = Instant::now();
            fresh.login(USER, &password).await.expect("first login");
            first.push(started.elapsed());
            assert_eq!(fresh.kdf_runs(), 1);
        }

        let unlocked = manager(&store, &http);
        unlocked.login(USER, &password).await.expect("unlock");
        let mut later = Vec::with_capacity(LATER_RUNS);
        for _ in 0..LATER_RUNS {
            let started = Instant::now();
            unlocked.login(USER, &password).await.expect("later login");
            later.push(started.elapsed());
        }
        assert_eq!(unlocked.kdf_runs(), 1, "later logins run no KDF");

        let p = KdfParams::CURRENT;
        let (first, later) = (median(first), median(later));
        println!(
            "login cost, Argon2id m={} KiB t={} p={}",
            p.memory_kib, p.iterations, p.lanes
        );
        println!("| login | median | runs |");
        println!("|---|---:|---:|");
        println!("| sign-in (KDF, seal, write) | {sign_in:.2?} | 1 |");
        println!("| first in a process (KDF, open seal) | {first:.2?} | {FIRST_RUNS} |");
        println!("| later (in-memory digest) | {later:.2?} | {LATER_RUNS} |");
        println!(
            "ratio first/later: {:.0}x",
            first.as_secs_f64() / later.as_secs_f64()
        );
    });
}
