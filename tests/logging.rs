//! Log lines written to a pipe (a service manager, `2> file`, `| tee`)
//! carry no ANSI colour codes: the binary is run with stderr piped.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the proxy may take to start and say it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn piped_stderr_gets_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nstate_dir = {:?}\nadmin_listen = \"off\"\n\n\
             [[listener]]\nprotocol = \"imap\"\nlisten = \"127.0.0.1:0\"\n\
             upstream = \"127.0.0.1:9\"\nupstream_tls = \"implicit\"\n",
            dir.path().join("state").display().to_string()
        ),
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .args(["--config", config.to_str().expect("utf-8 path"), "run"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let mut seen = Vec::new();
    let listening = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = String::from_utf8_lossy(&line).contains("listening");
                seen.push(line);
                if found {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let text: Vec<String> = seen
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    assert!(listening, "no `listening` line: {text:#?}");
    assert!(
        seen.iter().all(|l| !l.contains(&0x1b)),
        "colour codes in piped stderr: {text:#?}"
    );
}
