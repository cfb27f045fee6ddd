//! macOS: a LaunchAgent (`~/Library/LaunchAgents/<label>.plist`), started
//! at login and restarted after a crash (not after a clean stop), logging to
//! `~/Library/Logs/xoauth2-proxy/`. Loaded with `launchctl bootstrap
//! gui/<uid>`, removed with `launchctl bootout`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[cfg(target_os = "macos")]
use super::Action;
use super::{Definition, LABEL};
use crate::escape::escape;

/// The agent's files under the user's home directory.
pub(crate) struct Paths {
    pub plist: PathBuf,
    pub logs: PathBuf,
}

impl Paths {
    pub(crate) fn under(home: &Path) -> Paths {
        Paths {
            plist: home
                .join("Library/LaunchAgents")
                .join(format!("{LABEL}.plist")),
            logs: home.join("Library/Logs/xoauth2-proxy"),
        }
    }
}

/// The program and its arguments, as the agent runs them.
pub(crate) fn program_arguments(d: &Definition, logs: &Path) -> Vec<String> {
    let mut args = vec![
        d.exe.to_string_lossy().into_owned(),
        "run".to_owned(),
        "--config".to_owned(),
        d.config.to_string_lossy().into_owned(),
        "--log-dir".to_owned(),
        logs.to_string_lossy().into_owned(),
    ];
    if let Some(dir) = &d.state_dir_override {
        args.push("--state-dir".to_owned());
        args.push(dir.to_string_lossy().into_owned());
    }
    args
}

/// The agent's property list (XML).
pub(crate) fn plist_text(d: &Definition, paths: &Paths) -> String {
    let mut p = String::new();
    p.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    p.push_str("<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n");
    p.push_str("<plist version=\"1.0\">\n<dict>\n");
    let string = |p: &mut String, key: &str, value: &str| {
        let _ = writeln!(
            p,
            "\t<key>{key}</key>\n\t<string>{}</string>",
            escape(value)
        );
    };
    string(&mut p, "Label", LABEL);
    p.push_str("\t<key>ProgramArguments</key>\n\t<array>\n");
    for arg in program_arguments(d, &paths.logs) {
        let _ = writeln!(p, "\t\t<string>{}</string>", escape(&arg));
    }
    p.push_str("\t</array>\n");
    p.push_str("\t<key>RunAtLoad</key>\n\t<true/>\n");
    // Restarted when it crashes or fails, not after a clean stop.
    p.push_str("\t<key>KeepAlive</key>\n\t<dict>\n\t\t<key>SuccessfulExit</key>\n\t\t<false/>\n\t</dict>\n");
    p.push_str("\t<key>ThrottleInterval</key>\n\t<integer>10</integer>\n");
    // SIGTERM starts the drain; launchd waits this long before SIGKILL.
    let _ = writeln!(
        p,
        "\t<key>ExitTimeOut</key>\n\t<integer>{}</integer>",
        d.stop_timeout_secs
    );
    string(&mut p, "ProcessType", "Background");
    string(
        &mut p,
        "StandardOutPath",
        &paths.logs.join("stdout.log").to_string_lossy(),
    );
    string(
        &mut p,
        "StandardErrorPath",
        &paths.logs.join("stderr.log").to_string_lossy(),
    );
    p.push_str("</dict>\n</plist>\n");
    p
}

#[cfg(target_os = "macos")]
fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(target_os = "macos")]
pub fn perform(action: Action, d: &Definition) -> anyhow::Result<()> {
    let home = dirs::home_dir().ok_or_else(|| anyhow::anyhow!("cannot find the home directory"))?;
    let paths = Paths::under(&home);
    let domain = format!("gui/{}", uid());
    let target = format!("{domain}/{LABEL}");
    let plist = paths.plist.to_string_lossy().into_owned();
    let loaded = || {
        super::command("launchctl", &["print", &target])
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    match action {
        Action::Install => {
            if let Some(dir) = paths.plist.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            }
            // The logs name accounts and client addresses: owner-only.
            crate::fs_secure::private_dir(&paths.logs)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", paths.logs.display()))?;
            if loaded() {
                super::checked("launchctl", &["bootout", &target])?;
            }
            std::fs::write(&paths.plist, plist_text(d, &paths))
                .map_err(|e| anyhow::anyhow!("cannot write {plist}: {e}"))?;
            super::checked("launchctl", &["bootstrap", &domain, &plist])?;
            println!(
                "Installed and started {LABEL} ({plist}); it starts at every login. Logs: {}",
                paths.logs.display()
            );
            Ok(())
        }
        Action::Uninstall => {
            if loaded() {
                super::checked("launchctl", &["bootout", &target])?;
            }
            if paths.plist.exists() {
                std::fs::remove_file(&paths.plist)
                    .map_err(|e| anyhow::anyhow!("cannot remove {plist}: {e}"))?;
                println!("Stopped and removed {LABEL} ({plist})");
            } else {
                println!("{LABEL} is not installed ({plist} does not exist)");
            }
            Ok(())
        }
        Action::Start => {
            if !paths.plist.exists() {
                anyhow::bail!("{LABEL} is not installed: run `xoauth2-proxy service install`");
            }
            if loaded() {
                super::checked("launchctl", &["kickstart", &target])
            } else {
                super::checked("launchctl", &["bootstrap", &domain, &plist])
            }
        }
        // Unloaded until `start` or the next login (the plist stays).
        Action::Stop => super::checked("launchctl", &["bootout", &target]),
        Action::Status => {
            if !paths.plist.exists() {
                println!("{LABEL} is not installed ({plist} does not exist)");
                return Ok(());
            }
            let out = super::command("launchctl", &["print", &target])?;
            if out.status.success() {
                print!("{}", String::from_utf8_lossy(&out.stdout));
            } else {
                println!(
                    "{LABEL} is installed ({plist}) but not loaded: `xoauth2-proxy service start`"
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plist_parses_back_with_every_key() {
        let d = Definition {
            exe: PathBuf::from("/Applications/Mail Tools/xoauth2-proxy"),
            config: PathBuf::from(
                "/Users/ann/Library/Application Support/xoauth2-proxy/a&b <c>.toml",
            ),
            system: false,
            state_dir: PathBuf::from("/Users/ann/Library/Application Support/xoauth2-proxy"),
            state_dir_override: None,
            stop_timeout_secs: 20,
        };
        let paths = Paths::under(Path::new("/Users/ann"));
        assert_eq!(
            paths.plist,
            Path::new("/Users/ann/Library/LaunchAgents/io.github.xoauth2-proxy.plist")
        );
        let text = plist_text(&d, &paths);
        let value = plist::Value::from_reader_xml(text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}:\n{text}"));
        let dict = value.as_dictionary().expect("a dictionary");
        assert_eq!(dict["Label"].as_string(), Some(LABEL));
        let args: Vec<&str> = dict["ProgramArguments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "/Applications/Mail Tools/xoauth2-proxy",
                "run",
                "--config",
                "/Users/ann/Library/Application Support/xoauth2-proxy/a&b <c>.toml",
                "--log-dir",
                "/Users/ann/Library/Logs/xoauth2-proxy",
            ]
        );
        assert_eq!(dict["RunAtLoad"].as_boolean(), Some(true));
        let keep_alive = dict["KeepAlive"].as_dictionary().unwrap();
        assert_eq!(keep_alive["SuccessfulExit"].as_boolean(), Some(false));
        assert_eq!(dict["ExitTimeOut"].as_unsigned_integer(), Some(20));
        for key in ["StandardOutPath", "StandardErrorPath"] {
            assert!(
                dict[key]
                    .as_string()
                    .unwrap()
                    .starts_with("/Users/ann/Library/Logs/xoauth2-proxy/"),
                "{key}"
            );
        }
    }
}
