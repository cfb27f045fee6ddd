//! Linux: a systemd unit, per user (`~/.config/systemd/user/`, the default;
//! it runs while the user is logged in, or always with `loginctl
//! enable-linger`) or for the system (`--system`, `/etc/systemd/system/`,
//! a dynamic user with its own state directory). Sandboxed: the service
//! can write its token directory and its log directory, nothing else.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{Action, DESCRIPTION, Definition, NAME};

/// `xoauth2-proxy.service`.
pub(crate) fn unit_name() -> String {
    format!("{NAME}.service")
}

/// Where the unit file goes.
pub(crate) fn unit_path(system: bool) -> anyhow::Result<PathBuf> {
    if system {
        return Ok(PathBuf::from("/etc/systemd/system").join(unit_name()));
    }
    let config = dirs::config_dir()
        .ok_or_else(|| anyhow::anyhow!("cannot find the user's configuration directory"))?;
    Ok(config.join("systemd").join("user").join(unit_name()))
}

/// One word of a command line or a path list in a unit file: quoted, with
/// systemd's specifier (`%`) and variable (`$`) characters escaped.
pub(crate) fn quote(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn path_word(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// The unit file for `d`.
pub(crate) fn unit_text(d: &Definition) -> String {
    let mut exec = format!(
        "{} run --config {}",
        path_word(&d.exe),
        path_word(&d.config)
    );
    // %L: /var/log for the system, ~/.local/state/log for a user; %S likewise /var/lib.
    exec.push_str(" --log-dir %L/xoauth2-proxy");
    if d.system {
        exec.push_str(" --state-dir %S/xoauth2-proxy");
    } else if let Some(dir) = &d.state_dir_override {
        let _ = write!(exec, " --state-dir {}", path_word(dir));
    }
    let mut unit = String::new();
    let _ = writeln!(unit, "# Written by `xoauth2-proxy service install`.");
    let _ = writeln!(unit, "[Unit]");
    let _ = writeln!(unit, "Description={DESCRIPTION}");
    let _ = writeln!(unit, "Wants=network-online.target");
    let _ = writeln!(unit, "After=network-online.target");
    let _ = writeln!(unit);
    let _ = writeln!(unit, "[Service]");
    let _ = writeln!(unit, "Type=exec");
    let _ = writeln!(unit, "ExecStart={exec}");
    // `systemctl reload`: the proxy re-reads its configuration at SIGHUP.
    let _ = writeln!(unit, "ExecReload=/bin/kill -HUP $MAINPID");
    let _ = writeln!(unit, "Restart=on-failure");
    let _ = writeln!(unit, "RestartSec=5");
    // SIGTERM starts the drain; the timeout covers it.
    let _ = writeln!(unit, "KillSignal=SIGTERM");
    let _ = writeln!(unit, "TimeoutStopSec={}", d.stop_timeout_secs);
    let _ = writeln!(unit, "LogsDirectory=xoauth2-proxy");
    if d.system {
        let _ = writeln!(unit, "DynamicUser=yes");
        let _ = writeln!(unit, "StateDirectory=xoauth2-proxy");
        let _ = writeln!(unit, "StateDirectoryMode=0700");
    } else {
        let _ = writeln!(unit, "ReadWritePaths={}", path_word(&d.state_dir));
        let _ = writeln!(unit, "ProtectHome=read-only");
    }
    for line in [
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallArchitectures=native",
    ] {
        let _ = writeln!(unit, "{line}");
    }
    let _ = writeln!(unit);
    let _ = writeln!(unit, "[Install]");
    let target = if d.system {
        "multi-user.target"
    } else {
        "default.target"
    };
    let _ = writeln!(unit, "WantedBy={target}");
    unit
}

/// The system unit for `exe` reading `config` (both absolute), as `service
/// install --system` writes it; `xoauth2-proxy service unit` prints it for the
/// Debian package.
pub fn system_unit_text(exe: &Path, config: &Path, stop_timeout_secs: u64) -> String {
    unit_text(&Definition {
        exe: exe.to_path_buf(),
        config: config.to_path_buf(),
        system: true,
        state_dir: PathBuf::from("/var/lib/xoauth2-proxy"),
        state_dir_override: None,
        stop_timeout_secs,
    })
}

fn systemctl(d: &Definition, args: &[&str]) -> anyhow::Result<()> {
    let mut all: Vec<&str> = Vec::new();
    if !d.system {
        all.push("--user");
    }
    all.extend_from_slice(args);
    super::checked("systemctl", &all)
}

pub fn perform(action: Action, d: &Definition) -> anyhow::Result<()> {
    let path = unit_path(d.system)?;
    let name = unit_name();
    let scope = if d.system { "" } else { "--user " };
    match action {
        Action::Install => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            }
            if !d.system {
                // ReadWritePaths needs the directory to exist.
                crate::fs_secure::private_dir(&d.state_dir)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", d.state_dir.display()))?;
            }
            std::fs::write(&path, unit_text(d))
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            systemctl(d, &["daemon-reload"])?;
            systemctl(d, &["enable", &name])?;
            systemctl(d, &["restart", &name])?;
            println!("Installed and started {} ({})", name, path.display());
            if d.system {
                println!(
                    "Tokens: /var/lib/xoauth2-proxy; sign in with \
                     `sudo xoauth2-proxy authorize ADDRESS --config {} --state-dir /var/lib/xoauth2-proxy`.",
                    d.config.display()
                );
            } else {
                println!(
                    "Tokens: {}. To keep it running while you are logged out: `loginctl enable-linger`.",
                    d.state_dir.display()
                );
            }
            println!("Logs: `journalctl {scope}-u {name}` and the daily files in %L/xoauth2-proxy");
            Ok(())
        }
        Action::Uninstall => {
            if path.exists() {
                let _ = systemctl(d, &["disable", "--now", &name]);
                std::fs::remove_file(&path)
                    .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", path.display()))?;
                systemctl(d, &["daemon-reload"])?;
                println!("Stopped and removed {name} ({})", path.display());
            } else {
                println!(
                    "{name} is not installed ({} does not exist)",
                    path.display()
                );
            }
            Ok(())
        }
        Action::Start => systemctl(d, &["start", &name]),
        Action::Stop => systemctl(d, &["stop", &name]),
        Action::Status => {
            let mut args = vec!["status", "--no-pager", name.as_str()];
            if !d.system {
                args.insert(0, "--user");
            }
            let out = super::command("systemctl", &args)?;
            print!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(system: bool) -> Definition {
        Definition {
            exe: PathBuf::from("/opt/xoauth2 proxy/bin/xoauth2-proxy"),
            config: PathBuf::from("/home/ann/.config/xoauth2-proxy/proxy 100%.toml"),
            system,
            state_dir: PathBuf::from("/home/ann/.local/share/xoauth2-proxy"),
            state_dir_override: None,
            stop_timeout_secs: 20,
        }
    }

    fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .collect()
    }

    #[test]
    fn the_packaged_unit_is_the_installed_system_unit() {
        let mut d = definition(true);
        d.exe = PathBuf::from("/usr/bin/xoauth2-proxy");
        d.config = PathBuf::from("/etc/xoauth2-proxy/proxy.toml");
        let packaged = system_unit_text(&d.exe, &d.config, d.stop_timeout_secs);
        assert_eq!(packaged, unit_text(&d));
        assert_eq!(
            values(&packaged, "ExecStart"),
            [
                "\"/usr/bin/xoauth2-proxy\" run --config \"/etc/xoauth2-proxy/proxy.toml\" \
              --log-dir %L/xoauth2-proxy --state-dir %S/xoauth2-proxy"
            ]
        );
    }

    #[test]
    fn a_user_unit_runs_the_config_sandboxed() {
        let unit = unit_text(&definition(false));
        assert_eq!(
            values(&unit, "ExecStart"),
            ["\"/opt/xoauth2 proxy/bin/xoauth2-proxy\" run --config \
              \"/home/ann/.config/xoauth2-proxy/proxy 100%%.toml\" --log-dir %L/xoauth2-proxy"]
        );
        for (key, value) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "read-only"),
            ("PrivateTmp", "yes"),
            ("ReadWritePaths", "\"/home/ann/.local/share/xoauth2-proxy\""),
            ("LogsDirectory", "xoauth2-proxy"),
            ("Restart", "on-failure"),
            ("KillSignal", "SIGTERM"),
            ("ExecReload", "/bin/kill -HUP $MAINPID"),
            ("TimeoutStopSec", "20"),
            ("WantedBy", "default.target"),
        ] {
            assert_eq!(values(&unit, key), [value], "{key} in\n{unit}");
        }
        assert!(values(&unit, "DynamicUser").is_empty());
        let sections: Vec<&str> = unit.lines().filter(|l| l.starts_with('[')).collect();
        assert_eq!(sections, ["[Unit]", "[Service]", "[Install]"]);
    }

    #[test]
    fn a_system_unit_has_its_own_user_and_state_directory() {
        let unit = unit_text(&definition(true));
        assert!(
            values(&unit, "ExecStart")[0].ends_with(" --state-dir %S/xoauth2-proxy"),
            "{unit}"
        );
        for (key, value) in [
            ("DynamicUser", "yes"),
            ("StateDirectory", "xoauth2-proxy"),
            ("WantedBy", "multi-user.target"),
        ] {
            assert_eq!(values(&unit, key), [value], "{key} in\n{unit}");
        }
        assert!(values(&unit, "ReadWritePaths").is_empty());
        assert!(values(&unit, "ProtectHome").is_empty());
    }

    #[test]
    fn quoting_escapes_what_systemd_would_expand() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(quote("50%$HOME"), "\"50%%$$HOME\"");
    }

    /// `systemd-analyze verify` on the generated unit, when this machine has it.
    #[test]
    fn systemd_analyze_accepts_the_units() {
        let available = std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !available {
            eprintln!("SKIPPED: systemd-analyze is not installed; the unit text was not verified");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // verify wants ExecStart to exist and be executable.
        let exe = std::env::current_exe().unwrap();
        for system in [false, true] {
            let mut d = definition(system);
            d.exe = exe.clone();
            d.config = dir.path().join("proxy.toml");
            d.state_dir = dir.path().to_owned();
            let path = dir.path().join(unit_name());
            std::fs::write(&path, unit_text(&d)).unwrap();
            // The system manager checks user units' keys the same way, and
            // runs where a user manager cannot (no session, in containers).
            let out = std::process::Command::new("systemd-analyze")
                .arg("verify")
                .arg(&path)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("Failed to initialize manager") {
                eprintln!("SKIPPED: systemd-analyze cannot start here:\n{stderr}");
                return;
            }
            // Problems with the unit are reported as lines naming its file.
            let problems: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains(&unit_name()))
                .collect();
            assert!(
                problems.is_empty(),
                "systemd-analyze verify:\n{stderr}\n{}",
                unit_text(&d)
            );
        }
    }
}
