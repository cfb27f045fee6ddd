//! Several proxies on one Redis token store (`token_store = "redis://…"`),
//! against a real `redis-server` each test starts (one speaks TLS only,
//! `rediss://`; skipped without one, unless `XOAUTH2_PROXY_REQUIRE_REDIS=1`)
//! and a fake token endpoint that kills a refresh token the moment it
//! rotates it.

mod harness;
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{GateLogin, PASSWORD, SEED_REFRESH, config_text, imap, start};
use secrecy::{ExposeSecret, SecretString};
use support::redis_server::RedisServer;
use support::token_server::GRANT_REFRESH;
use support::*;
use xoauth2_proxy::Running;
use xoauth2_proxy::auth::password::{KdfParams, SealKey, random_salt};
use xoauth2_proxy::auth::vault::{Entry, StoredTokens, TokenStore};
use xoauth2_proxy::config::Config;
use xoauth2_proxy::protocol::Failure;
use xoauth2_proxy::sasl::Credentials;

/// Concurrent logins spread over the two proxies.
const LOGINS: usize = 200;
/// How long another proxy's sign-in or `forget` may take to be seen:
/// `SHARED_CHECK_EVERY` and room for a loaded machine.
const SEEN_WITHIN: Duration = Duration::from_secs(8);

struct Fakes {
    pki: TestPki,
    tokens: FakeTokenServer,
    imap: FakeImapServer,
}

async fn fakes() -> Fakes {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    tokens.state.set_single_use_refresh_tokens(true);
    let imap = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    Fakes { pki, tokens, imap }
}

impl Fakes {
    /// One proxy's configuration: its own state_dir, the shared store.
    fn config(&self, state_dir: &Path, store: &str) -> String {
        config_text(
            &self.pki,
            state_dir,
            &self.tokens.url(),
            &[imap(self.imap.addr)],
            &format!("token_store = \"{store}\"\n"),
        )
    }
}

fn store_of(text: &str) -> TokenStore {
    let config = Config::parse(text, Path::new("test.toml")).expect("test config is valid");
    TokenStore::open(&config).expect("open the token store")
}

fn creds(password: &str) -> Credentials {
    Credentials {
        username: USER.into(),
        password: SecretString::from(password.to_owned()),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What a sign-in under `password` leaves: sealed tokens, here with an
/// access token that has already expired (the next login refreshes).
fn sign_in(store: &TokenStore, password: &str, refresh: &str) {
    let key = SealKey::derive(password.as_bytes(), KdfParams::CURRENT, random_salt())
        .expect("derive the sealing key");
    let tokens = StoredTokens {
        refresh_token: Some(SecretString::from(refresh.to_owned())),
        access_token: Some(SecretString::from("expired-at".to_owned())),
        expires_at: Some(now_secs() - 60),
    };
    store
        .save_sealed(USER, &tokens, &key)
        .expect("seed the store");
}

/// The refresh token in `store`, opened with `password`.
fn stored_refresh(store: &TokenStore, password: &str) -> Option<String> {
    let Some(Entry::Sealed(sealed)) = store.load_entry(USER).expect("read the store") else {
        return None;
    };
    let key = SealKey::derive(password.as_bytes(), sealed.params(), sealed.salt()).unwrap();
    let tokens = sealed.open(&key).expect("the password opens the entry");
    tokens.refresh_token.map(|t| t.expose_secret().to_owned())
}

/// Re-seals the stored entry (same password, same tokens) with its access
/// token expiring at `expires_at`: what another proxy sees as due.
fn set_stored_expiry(store: &TokenStore, password: &str, expires_at: u64) {
    let Some(Entry::Sealed(sealed)) = store.load_entry(USER).unwrap() else {
        panic!("a sealed entry");
    };
    let key = SealKey::derive(password.as_bytes(), sealed.params(), sealed.salt()).unwrap();
    let mut tokens = sealed.open(&key).unwrap();
    tokens.expires_at = Some(expires_at);
    store.save_sealed(USER, &tokens, &key).unwrap();
}

/// Two proxies with their own state_dir on one store.
struct Pair {
    a: Running,
    b: Running,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    text: String,
}

/// Two proxies on the store at `url`, with the account signed in there
/// (sealed under [`PASSWORD`], the refresh token the fake knows).
async fn signed_in_pair(fakes: &Fakes, url: &str) -> (Pair, TokenStore) {
    let pair = pair(fakes, url).await;
    let store = store_of(&pair.text);
    fakes.tokens.state.seed_refresh_token(SEED_REFRESH);
    sign_in(&store, PASSWORD, SEED_REFRESH);
    (pair, store)
}

async fn pair(fakes: &Fakes, url: &str) -> Pair {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let text = fakes.config(da.path(), url);
    let a = start(&text).await;
    let b = start(&fakes.config(db.path(), url)).await;
    Pair {
        a,
        b,
        _dirs: (da, db),
        text,
    }
}

impl Pair {
    fn of(&self, i: usize) -> Arc<xoauth2_proxy::session::Context> {
        if i.is_multiple_of(2) {
            self.a.context.clone()
        } else {
            self.b.context.clone()
        }
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

/// `LOGINS` logins at once, half through each proxy; every result.
async fn crowd(pair: &Pair, password: &str) -> Vec<Result<String, Failure>> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..LOGINS {
        let ctx = pair.of(i);
        let creds = creds(password);
        tasks.spawn(async move {
            ctx.token_for(&creds)
                .await
                .map(|(_, t)| t.expose_secret().to_owned())
        });
    }
    tasks.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_proxies_refresh_a_rotating_token_exactly_once() {
    let Some(redis) = RedisServer::start("two_proxies_refresh_a_rotating_token_exactly_once")
    else {
        return;
    };
    let fakes = fakes().await;
    let (pair, store) = signed_in_pair(&fakes, &redis.url()).await;

    // After expiry, a crowd over both proxies: one redemption in all.
    let results = crowd(&pair, PASSWORD).await;
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "logins failed: {:?}",
        &failures[..failures.len().min(3)]
    );
    assert_eq!(
        fakes.tokens.state.requests(GRANT_REFRESH),
        1,
        "not exactly one refresh"
    );
    let token = results[0].as_ref().unwrap();
    assert!(
        results.iter().all(|r| r.as_ref().unwrap() == token),
        "one access token for all"
    );
    assert!(fakes.tokens.state.is_valid_access_token(token));
    let latest = fakes.tokens.state.latest_refresh_token().unwrap();
    assert!(fakes.tokens.state.is_valid_refresh_token(&latest));
    assert_eq!(
        stored_refresh(&store, PASSWORD).as_deref(),
        Some(latest.as_str())
    );

    // Again, with both proxies holding the (now expired) token in memory.
    for running in [&pair.a, &pair.b] {
        running
            .context
            .gate
            .tokens()
            .age_access_token(USER, Duration::from_secs(7200));
    }
    // The store's copy has expired too (another proxy's view of it).
    set_stored_expiry(&store, PASSWORD, now_secs() - 1);
    let results = crowd(&pair, PASSWORD).await;
    assert!(
        results.iter().all(Result::is_ok),
        "a login of the second crowd failed"
    );
    assert_eq!(
        fakes.tokens.state.requests(GRANT_REFRESH),
        2,
        "not exactly one more refresh"
    );
    let latest = fakes.tokens.state.latest_refresh_token().unwrap();
    assert_eq!(
        stored_refresh(&store, PASSWORD).as_deref(),
        Some(latest.as_str())
    );

    // Graph tokens (a redemption of the same refresh token for other
    // scopes, rotating it) on both proxies at once: one after the other.
    let mut graph = tokio::task::JoinSet::new();
    for i in 0..20 {
        let ctx = pair.of(i);
        graph.spawn(async move {
            ctx.gate
                .tokens()
                .graph_token(USER, Duration::ZERO)
                .await
                .map(drop)
        });
    }
    let outcomes = tokio::time::timeout(Duration::from_secs(30), graph.join_all())
        .await
        .expect("the Graph tokens came within 30 s");
    assert!(
        outcomes.iter().all(Result::is_ok),
        "a Graph token failed: {outcomes:?}"
    );
    assert_eq!(
        fakes.tokens.state.requests(GRANT_REFRESH),
        4,
        "one Graph redemption per proxy"
    );
    let latest = fakes.tokens.state.latest_refresh_token().unwrap();
    assert!(fakes.tokens.state.is_valid_refresh_token(&latest));
    assert_eq!(
        stored_refresh(&store, PASSWORD).as_deref(),
        Some(latest.as_str())
    );
    pair.shutdown().await;
}

/// Polls `check` until it holds or `SEEN_WITHIN` passes.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < SEEN_WITHIN, "not seen in time: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sign_in_and_a_forget_through_one_proxy_reach_the_other() {
    let Some(redis) =
        RedisServer::start("a_sign_in_and_a_forget_through_one_proxy_reach_the_other")
    else {
        return;
    };
    let fakes = fakes().await;
    let pair = pair(&fakes, &redis.url()).await;
    let store = store_of(&pair.text);
    // Not signed in: the other proxy says so.
    match pair.b.context.token_for(&creds(PASSWORD)).await {
        Err(Failure::SignInNeeded(_)) => {}
        other => panic!("no tokens yet: {other:?}"),
    }
    // A sign-in (`authorize` with this configuration) is used by proxy B.
    fakes.tokens.state.seed_refresh_token("rt-first");
    sign_in(&store, PASSWORD, "rt-first");
    pair.b
        .context
        .token_for(&creds(PASSWORD))
        .await
        .expect("B uses the sign-in");
    pair.a
        .context
        .token_for(&creds(PASSWORD))
        .await
        .expect("A too");

    // A new sign-in with a new password: both proxies take the new one
    // and refuse the old one within seconds.
    const NEW: &str = "a new local password";
    fakes.tokens.state.seed_refresh_token("rt-second");
    sign_in(&store, NEW, "rt-second");
    for ctx in [pair.a.context.clone(), pair.b.context.clone()] {
        eventually("the old password refused", || {
            let ctx = ctx.clone();
            async move { ctx.token_for(&creds(PASSWORD)).await.is_err() }
        })
        .await;
        ctx.token_for(&creds(NEW))
            .await
            .expect("the new password works");
    }

    // `forget` through one: the other stops handing out tokens.
    assert!(store.remove(USER).unwrap());
    let ctx = pair.b.context.clone();
    eventually("the forget", || {
        let ctx = ctx.clone();
        async move {
            matches!(
                ctx.token_for(&creds(NEW)).await,
                Err(Failure::SignInNeeded(_))
            )
        }
    })
    .await;
    pair.shutdown().await;
}

#[test]
fn store_migrate_copies_files_to_redis_and_back() {
    let Some(mut redis) = RedisServer::start("store_migrate_copies_files_to_redis_and_back") else {
        return;
    };
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let files_text = config_text(&pki, dir.path(), "https://127.0.0.1:9", &[], "");
    let redis_text = files_text.replacen(
        "[proxy]\n",
        &format!("[proxy]\ntoken_store = \"{}\"\n", redis.url()),
        1,
    );
    let files = store_of(&files_text);
    sign_in(&files, PASSWORD, "rt-migrated");
    let cli = |text: &str, args: &[&str]| {
        let file = dir.path().join("proxy.toml");
        std::fs::write(&file, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
            .arg("--config")
            .arg(&file)
            .args(args)
            .output()
            .unwrap()
    };
    let migrate = |text: &str, to: &str| {
        let out = cli(text, &["store", "migrate", "--to", to]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "migrate failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let out = migrate(&files_text, &redis.url());
    assert!(out.contains("Copied 1 account"), "{out}");
    let shared = store_of(&redis_text);
    assert_eq!(
        stored_refresh(&shared, PASSWORD).as_deref(),
        Some("rt-migrated")
    );
    assert_eq!(
        *shared.raw(USER).unwrap().unwrap(),
        *files.raw(USER).unwrap().unwrap()
    );

    // Back: the file removed, then copied from Redis.
    assert!(files.remove(USER).unwrap());
    let out = migrate(&redis_text, "files");
    assert!(out.contains("Copied 1 account"), "{out}");
    assert_eq!(
        stored_refresh(&files, PASSWORD).as_deref(),
        Some("rt-migrated")
    );
    // An entry the destination holds is kept unless --replace.
    let out = migrate(&redis_text, "files");
    assert!(
        out.contains("Copied 0 account") && out.contains("kept"),
        "{out}"
    );

    // `doctor` says whether the store answers.
    let doctor = |text: &str| String::from_utf8_lossy(&cli(text, &["doctor"]).stdout).into_owned();
    let out = doctor(&redis_text);
    assert!(out.contains("ok:      the token store, Redis at"), "{out}");
    redis.stop();
    let out = doctor(&redis_text);
    assert!(
        out.contains("PROBLEM: the token store redis://127.0.0.1")
            && out.contains("is unreachable"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_and_back_under_load_loses_nothing() {
    let Some(mut redis) = RedisServer::start("redis_down_and_back_under_load_loses_nothing") else {
        return;
    };
    let fakes = fakes().await;
    let (pair, store) = signed_in_pair(&fakes, &redis.url()).await;
    let results = crowd(&pair, PASSWORD).await;
    assert!(results.iter().all(Result::is_ok));
    let refreshes = fakes.tokens.state.requests(GRANT_REFRESH);

    // Redis goes away: logins keep working with the tokens held, and a
    // refresh due meanwhile is not sent (its result would have no place).
    // Due: inside the refresh margin, still usable, in the store too.
    set_stored_expiry(&store, PASSWORD, now_secs() + 120);
    redis.stop();
    for running in [&pair.a, &pair.b] {
        // Inside the refresh margin, still usable.
        running
            .context
            .gate
            .tokens()
            .age_access_token(USER, Duration::from_secs(3600 - 120));
    }
    let results = crowd(&pair, PASSWORD).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(
        failed,
        0,
        "logins failed while Redis was down: {:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(
        fakes.tokens.state.requests(GRANT_REFRESH),
        refreshes,
        "a refresh without a store"
    );
    // The page's notice (and the log) say the store is unreachable.
    let tokens = pair.b.context.clone();
    eventually("the store reported unreachable", || {
        let tokens = tokens.clone();
        async move {
            tokens
                .gate
                .tokens()
                .store_problem()
                .is_some_and(|p| p.contains("is unreachable"))
        }
    })
    .await;

    // Back (same data): the refresh goes through, once, and is stored.
    redis.restart();
    eventually("a refresh after Redis returned", || {
        let ctx = pair.a.context.clone();
        let tokens = fakes.tokens.state.clone();
        async move {
            let _ = ctx.token_for(&creds(PASSWORD)).await;
            tokens.requests(GRANT_REFRESH) > refreshes
        }
    })
    .await;
    let results = crowd(&pair, PASSWORD).await;
    assert!(
        results.iter().all(Result::is_ok),
        "logins after Redis returned"
    );
    eventually("the store reported back", || {
        let tokens = tokens.clone();
        async move { tokens.gate.tokens().store_problem().is_none() }
    })
    .await;
    let latest = fakes.tokens.state.latest_refresh_token().unwrap();
    assert!(fakes.tokens.state.is_valid_refresh_token(&latest));
    assert_eq!(
        stored_refresh(&store, PASSWORD).as_deref(),
        Some(latest.as_str()),
        "the rotated token is in the store"
    );
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_left_by_a_dead_proxy_runs_out_and_the_other_refreshes() {
    let Some(redis) =
        RedisServer::start("a_lease_left_by_a_dead_proxy_runs_out_and_the_other_refreshes")
    else {
        return;
    };
    let fakes = fakes().await;
    let (pair, _store) = signed_in_pair(&fakes, &redis.url()).await;
    // A proxy took the lease and died (its lease is what it leaves behind).
    let dead = xoauth2_proxy::store::Redis::open(
        &xoauth2_proxy::config::RedisUrl::parse(&redis.url()).unwrap(),
        "default",
        None,
    )
    .unwrap();
    let ttl = xoauth2_proxy::auth::tokens::REFRESH_LEASE_TTL;
    assert!(
        dead.try_lock(&dead.key(&format!("refresh:{USER}")), "dead-proxy", ttl)
            .unwrap()
    );
    let started = Instant::now();
    let token = pair
        .b
        .context
        .token_for(&creds(PASSWORD))
        .await
        .expect("refreshed after the ttl");
    let waited = started.elapsed();
    assert!(
        waited >= ttl - Duration::from_secs(2),
        "refreshed while the lease was held ({waited:?})"
    );
    assert!(
        waited < ttl + Duration::from_secs(10),
        "waited too long ({waited:?})"
    );
    assert_eq!(fakes.tokens.state.requests(GRANT_REFRESH), 1);
    assert!(
        fakes
            .tokens
            .state
            .is_valid_access_token(token.1.expose_secret())
    );
    pair.shutdown().await;
}

/// Set to a configuration file's path in the child process of
/// [`a_proxy_killed_mid_refresh_loses_its_lease_after_the_ttl`].
const CHILD_ENV: &str = "XOAUTH2_PROXY_SHARED_STORE_CHILD";

/// The child's part (a no-op in a normal run): a proxy on the shared store
/// that logs in, so it takes the lease and sends a refresh, and is killed
/// while the endpoint holds that request.
#[test]
fn shared_store_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let text = std::fs::read_to_string(path).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let running = start(&text).await;
        let _ = running.context.token_for(&creds(PASSWORD)).await;
    });
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_killed_mid_refresh_loses_its_lease_after_the_ttl() {
    let Some(redis) =
        RedisServer::start("a_proxy_killed_mid_refresh_loses_its_lease_after_the_ttl")
    else {
        return;
    };
    let fakes = fakes().await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let text = fakes.config(dirs.0.path(), &redis.url());
    let store = store_of(&text);
    fakes.tokens.state.seed_refresh_token(SEED_REFRESH);
    sign_in(&store, PASSWORD, SEED_REFRESH);
    // The endpoint holds the child's refresh longer than this test runs.
    fakes.tokens.state.set_delay(Duration::from_secs(120));
    let child_config = dirs.1.path().join("proxy.toml");
    std::fs::write(&child_config, fakes.config(dirs.1.path(), &redis.url())).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "shared_store_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &child_config)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while fakes.tokens.state.requests(GRANT_REFRESH) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the child sent no refresh"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The child holds the lease, its request is at the endpoint: kill -9.
    let leased = Instant::now();
    fakes.tokens.state.set_delay(Duration::ZERO);
    child.kill().unwrap();
    child.wait().unwrap();

    let running = start(&text).await;
    let token = running
        .context
        .token_for(&creds(PASSWORD))
        .await
        .expect("refreshed once the dead proxy's lease ran out");
    let waited = leased.elapsed();
    let ttl = xoauth2_proxy::auth::tokens::REFRESH_LEASE_TTL;
    assert!(
        waited >= ttl - Duration::from_secs(1),
        "refreshed under the dead proxy's lease ({waited:?})"
    );
    assert!(
        fakes
            .tokens
            .state
            .is_valid_access_token(token.1.expose_secret())
    );
    assert_eq!(
        fakes.tokens.state.requests(GRANT_REFRESH),
        2,
        "the child's and this one's"
    );
    let latest = fakes.tokens.state.latest_refresh_token().unwrap();
    assert!(fakes.tokens.state.is_valid_refresh_token(&latest));
    assert_eq!(
        stored_refresh(&store, PASSWORD).as_deref(),
        Some(latest.as_str()),
        "nothing lost"
    );
    running.shutdown().await;
}

/// The password the TLS server requires (in the `rediss://` URL).
const REDIS_PASSWORD: &str = "redis-secret-4711";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_store_is_used_with_the_ca_file_and_refused_without_it() {
    let fakes = fakes().await;
    let Some(redis) = RedisServer::start_tls(
        "a_tls_store_is_used_with_the_ca_file_and_refused_without_it",
        &fakes.pki,
        REDIS_PASSWORD,
    ) else {
        return;
    };
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    // Trusting the test CA (`ca_file`): a sign-in goes into the store over
    // TLS, a crowd over two proxies refreshes once, the rotation is stored.
    let pair = pair(&fakes, &url).await;
    let store = store_of(&pair.text);
    store.ping().expect("the TLS store answers");
    fakes.tokens.state.seed_refresh_token(SEED_REFRESH);
    sign_in(&store, PASSWORD, SEED_REFRESH);
    let results = crowd(&pair, PASSWORD).await;
    assert!(
        results.iter().all(Result::is_ok),
        "logins over the TLS store failed: {:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(fakes.tokens.state.requests(GRANT_REFRESH), 1);
    let access = results[0].as_ref().unwrap().clone();
    let latest = fakes.tokens.state.latest_refresh_token().unwrap();
    assert_eq!(
        stored_refresh(&store, PASSWORD).as_deref(),
        Some(latest.as_str())
    );

    // A proxy whose ca_file does not hold the CA that signed the server's
    // certificate: no tokens, and the store is reported unreachable for an
    // untrusted certificate, without a password or token in the words.
    let other = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &other,
        dir.path(),
        &fakes.tokens.url(),
        &[imap(fakes.imap.addr)],
        &format!("token_store = \"{url}\"\n"),
    );
    let untrusting = start(&text).await;
    let failure = untrusting
        .context
        .token_for(&creds(PASSWORD))
        .await
        .expect_err("no tokens through an untrusted store");
    let secrets = [
        REDIS_PASSWORD,
        PASSWORD,
        SEED_REFRESH,
        latest.as_str(),
        access.as_str(),
    ];
    let shown = format!("{failure:?}");
    for secret in secrets {
        assert!(!shown.contains(secret), "a secret in {shown}");
    }
    let tokens = untrusting.context.clone();
    eventually("the untrusted store reported", || {
        let tokens = tokens.clone();
        async move { tokens.gate.tokens().store_problem().is_some() }
    })
    .await;
    let problem = tokens.gate.tokens().store_problem().unwrap();
    assert!(
        problem.contains("the token store rediss://:***@127.0.0.1")
            && problem.contains("is unreachable")
            && problem.contains("TLS certificate is not trusted")
            && problem.contains("ca_file"),
        "{problem}"
    );
    for secret in secrets {
        assert!(!problem.contains(secret), "a secret in {problem}");
    }
    assert_eq!(
        fakes.tokens.state.requests(GRANT_REFRESH),
        1,
        "no refresh without the store"
    );
    untrusting.shutdown().await;
    pair.shutdown().await;
}
