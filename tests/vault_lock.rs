//! Two processes writing one token store: the store's advisory lock makes
//! each read-modify-write one step, and a refresh in the proxy does not
//! write back tokens that another process (`forget`, `authorize`) removed
//! or replaced meanwhile. The second process is this test binary,
//! re-executed with [`CHILD_ENV`] set.

#![cfg(unix)]

mod harness;
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{GateLogin, PASSWORD, config_text, imap, seed_tokens, start};
use secrecy::{ExposeSecret, SecretString};
use support::token_server::GRANT_REFRESH;
use support::*;
use xoauth2_proxy::auth::vault::{StoredTokens, TokenStore};
use xoauth2_proxy::protocol::Failure;
use xoauth2_proxy::sasl::Credentials;

/// Set to `<job> <state dir>` in the child process.
const CHILD_ENV: &str = "XOAUTH2_PROXY_LOCK_CHILD";
const COUNTER: &str = "counter@contoso.com";
/// Increments per process: enough for unlocked writers to lose some.
const INCREMENTS: u64 = 200;

fn count_in(store: &TokenStore) -> u64 {
    store
        .load(COUNTER)
        .unwrap()
        .and_then(|t| t.refresh_token)
        .map_or(0, |rt| rt.expose_secret().parse().unwrap())
}

fn counted(n: u64) -> StoredTokens {
    StoredTokens {
        refresh_token: Some(SecretString::from(n.to_string())),
        access_token: None,
        expires_at: None,
    }
}

/// Read, add one, write, under the lock.
fn increment(store: &TokenStore) {
    let lock = store.lock().unwrap();
    let n = lock
        .load_entry(COUNTER)
        .unwrap()
        .map_or(0, |_| count_in(store));
    std::thread::yield_now();
    lock.save(COUNTER, &counted(n + 1)).unwrap();
}

/// The child's part; a no-op in a normal test run.
#[test]
fn lock_child() {
    let Ok(job) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (what, dir) = job.split_once(' ').unwrap();
    let store = TokenStore::new(Path::new(dir));
    match what {
        "count" => {
            println!("lock child ready");
            for _ in 0..INCREMENTS {
                increment(&store);
            }
        }
        "forget" => {
            assert!(store.remove(USER).unwrap());
        }
        other => panic!("unknown job {other}"),
    }
}

fn child(job: &str, dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["lock_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{job} {}", dir.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn two_processes_incrementing_one_entry_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    store.save(COUNTER, &counted(0)).unwrap();
    let mut other = child("count", dir.path());
    // Start together: the child says when it is about to write.
    let mut lines = BufReader::new(other.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap().contains("lock child ready")),
        "the child did not start"
    );
    for _ in 0..INCREMENTS {
        increment(&store);
    }
    assert!(other.wait().unwrap().success());
    assert_eq!(count_in(&store), 2 * INCREMENTS, "no increment was lost");
}

#[tokio::test]
async fn a_refresh_does_not_write_back_tokens_forgotten_meanwhile() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let state_dir = tempfile::tempdir().unwrap();
    seed_tokens(state_dir.path(), &tokens);
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        "",
    );
    let running = start(&text).await;
    let creds = Credentials {
        username: USER.into(),
        password: SecretString::from(PASSWORD.to_owned()),
    };
    running.context.token_for(&creds).await.unwrap();
    let store = TokenStore::new(state_dir.path());
    assert!(store.path_for(USER).exists());

    // A refresh goes out and is held at the endpoint...
    tokens.state.set_delay(Duration::from_secs(3));
    running.context.gate.tokens().discard_access_token(USER);
    let before = tokens.state.requests(GRANT_REFRESH);
    let ctx = running.context.clone();
    let login = tokio::spawn(async move {
        let creds = Credentials {
            username: USER.into(),
            password: SecretString::from(PASSWORD.to_owned()),
        };
        ctx.token_for(&creds).await
    });
    let started = Instant::now();
    while tokens.state.requests(GRANT_REFRESH) == before {
        assert!(started.elapsed() < Duration::from_secs(10), "no refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while `forget` runs in another process.
    let status = tokio::task::spawn_blocking({
        let dir = state_dir.path().to_owned();
        move || child("forget", &dir).wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success());
    match login.await.unwrap() {
        Err(Failure::SignInNeeded(m)) => assert!(m.contains("must sign in"), "{m}"),
        other => panic!("the forgotten account needs a sign-in: {other:?}"),
    }
    assert!(
        !store.path_for(USER).exists(),
        "the refresh did not write the forgotten tokens back"
    );
    running.shutdown().await;
}
