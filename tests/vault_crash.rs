//! The token store survives SIGKILL at any moment: a child process (this
//! test binary, re-executed with [`CHILD_ENV`] set) reads the sealed tokens,
//! "refreshes" them and writes the next generation in a loop, and is killed
//! at random moments. After every kill the store must open with the key and
//! hold the last generation the child reported written, or the one it was
//! writing: never nothing, never garbage.

#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use xoauth2_proxy::auth::password::{KdfParams, SealKey};
use xoauth2_proxy::auth::vault::{Entry, StoredTokens, TokenStore};

/// Set to the state directory in the child process.
const CHILD_ENV: &str = "XOAUTH2_PROXY_CRASH_CHILD";
const ACCOUNT: &str = "alice@contoso.com";
const PASSWORD: &[u8] = b"crash test password";
/// Cheap Argon2 parameters: the test is about the file, not the KDF cost.
const PARAMS: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    lanes: 1,
};
const KILLS: usize = 50;
/// How long the parent waits for the child's next line: generous, because a
/// loaded CI machine can take seconds to start a process.
const CHILD_PATIENCE_SECS: u64 = 30;
/// A kill lands this long (at most) after the child is ready to write.
const MAX_KILL_DELAY_MICROS: u64 = 80_000;
/// A large access token, so a write takes more than one syscall and a
/// non-atomic store would be caught half-written.
const ACCESS_TOKEN_LEN: usize = 32 * 1024;

fn tokens(generation: u64) -> StoredTokens {
    let filler = char::from(b'a' + (generation % 26) as u8);
    StoredTokens {
        refresh_token: Some(SecretString::from(format!("rt-{generation}"))),
        access_token: Some(SecretString::from(format!(
            "at-{generation}-{}",
            filler.to_string().repeat(ACCESS_TOKEN_LEN)
        ))),
        expires_at: Some(1_900_000_000 + generation),
    }
}

/// The generation in a record, after checking every field belongs to it.
fn generation_of(t: &StoredTokens) -> u64 {
    let rt = t.refresh_token.as_ref().expect("a refresh token");
    let generation: u64 = rt
        .expose_secret()
        .strip_prefix("rt-")
        .and_then(|n| n.parse().ok())
        .expect("rt-N");
    let at = t.access_token.as_ref().expect("an access token");
    let want = tokens(generation);
    assert!(
        at.expose_secret() == want.access_token.unwrap().expose_secret(),
        "the access token of generation {generation} is not the one written with it"
    );
    assert_eq!(t.expires_at, want.expires_at);
    generation
}

fn key_for(store: &TokenStore) -> (SealKey, u64) {
    match store.load_entry(ACCOUNT) {
        Ok(Some(Entry::Sealed(sealed))) => {
            let key = SealKey::derive(PASSWORD, sealed.params(), sealed.salt()).expect("derive");
            let opened = sealed.open(&key).expect("the store opens with its key");
            let generation = generation_of(&opened);
            (key, generation)
        }
        other => panic!("the store must hold sealed tokens, found {other:?}"),
    }
}

/// The child's side: runs only when re-executed by the parent test.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = TokenStore::new(Path::new(&dir));
    let (key, _) = key_for(&store);
    let mut out = std::io::stdout().lock();
    // On a line of its own: libtest has written "test crash_child ... " before.
    writeln!(out, "\nready").unwrap();
    out.flush().unwrap();
    loop {
        // A refresh: read what is on disk, write its successor.
        let (_, current) = key_for(&store);
        let next = current + 1;
        store
            .save_sealed(ACCOUNT, &tokens(next), &key)
            .expect("write");
        writeln!(out, "wrote {next}").unwrap();
        out.flush().unwrap();
    }
}

fn random_below(bound: u64) -> u64 {
    let mut buf = [0u8; 8];
    getrandom::fill(&mut buf).expect("random");
    u64::from_le_bytes(buf) % bound
}

#[test]
fn sigkill_during_writes_leaves_the_old_or_the_new_tokens() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    let mut salt = [0u8; xoauth2_proxy::auth::password::SALT_LEN];
    getrandom::fill(&mut salt).unwrap();
    let key = SealKey::derive(PASSWORD, PARAMS, salt).unwrap();
    store.save_sealed(ACCOUNT, &tokens(0), &key).unwrap();

    let mut on_disk = 0u64;
    let mut landed_mid_run = 0;
    for kill in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("re-execute the test binary");
        let stdout = child.stdout.take().unwrap();
        let (lines, from_child) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the child has opened the store (every other time, until
        // it has also finished a write, so some kills land mid-run however
        // slow a loaded machine is), then kill it at a random moment.
        let mut seen_written = None;
        loop {
            let line = from_child
                .recv_timeout(Duration::from_secs(CHILD_PATIENCE_SECS))
                .expect("the child starts and writes");
            if let Some(n) = line.strip_prefix("wrote ") {
                seen_written = n.parse::<u64>().ok();
                break;
            }
            if line == "ready" && kill % 2 == 0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(random_below(MAX_KILL_DELAY_MICROS)));
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        let status = child.wait().unwrap();
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "kill {kill}: {status}"
            );
        }
        reader.join().unwrap();
        let acknowledged = from_child
            .try_iter()
            .filter_map(|l| l.strip_prefix("wrote ").and_then(|n| n.parse::<u64>().ok()))
            .chain(seen_written)
            .max()
            .unwrap_or(on_disk);
        if acknowledged > on_disk {
            landed_mid_run += 1;
        }

        let (_, found) = key_for(&store);
        assert!(
            found == acknowledged || found == acknowledged + 1,
            "kill {kill}: the store holds generation {found}; the child had written {acknowledged}"
        );
        on_disk = found;
        // Nothing but the token file and, at most, temp files of killed writers.
        for entry in std::fs::read_dir(store.dir()).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                name == "alice@contoso.com.json" || name.contains(".tmp."),
                "unexpected file {name}"
            );
        }
    }
    assert!(
        landed_mid_run >= KILLS / 2,
        "too few kills landed after a completed write ({landed_mid_run} of {KILLS})"
    );
    assert!(on_disk > 0, "the children made progress");
    eprintln!(
        "{KILLS} kills, {landed_mid_run} after completed writes, generation {on_disk}, {:?}",
        started.elapsed()
    );
}
