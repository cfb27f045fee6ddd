//! `xoauth2-proxy service …`: run the proxy under the operating system's
//! service manager. One definition ([`Definition`]: this program, the
//! configuration, where state and logs go) is turned into a systemd unit
//! (`systemd.rs`), a launchd agent (`launchd.rs`) or a Windows service
//! (`windows.rs`). The text of units and plists is made by pure functions,
//! tested on every platform; only the calls to `systemctl`, `launchctl` and
//! the Service Control Manager are compiled for their own system.

#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub mod launchd;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub mod systemd;
#[cfg(windows)]
pub mod windows;

use std::path::{Path, PathBuf};

use crate::config::Config;

/// The service's name: the systemd unit `xoauth2-proxy.service`, the
/// Windows service `xoauth2-proxy`.
pub(crate) const NAME: &str = "xoauth2-proxy";
/// The launchd label (and the plist's file name without `.plist`).
pub(crate) const LABEL: &str = "io.github.xoauth2-proxy";
/// What service managers show next to the name.
pub(crate) const DESCRIPTION: &str =
    "xoauth2-proxy: password logins for Office 365 IMAP, POP3 and SMTP through OAuth 2.0";
/// A stop gets this long beyond the configured drain before the service
/// manager kills the process.
pub const STOP_MARGIN_SECS: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Install,
    Uninstall,
    Start,
    Stop,
    Status,
}

/// What a service runs: this program with one configuration.
#[derive(Debug, Clone)]
pub struct Definition {
    /// This program, absolute.
    pub exe: PathBuf,
    /// The configuration file, absolute.
    pub config: PathBuf,
    /// A system unit (Linux) instead of a user unit.
    pub system: bool,
    /// Where the tokens are (the configuration's `state_dir`, or `--state-dir`).
    pub state_dir: PathBuf,
    /// Set when `--state-dir` was given: passed on to the service.
    pub state_dir_override: Option<PathBuf>,
    /// How long a stop may take: the drain plus [`STOP_MARGIN_SECS`].
    pub stop_timeout_secs: u64,
}

impl Definition {
    /// Checks the configuration (a service with a broken one would only
    /// fail in a log) and makes every path absolute.
    pub fn for_config(
        config: &Path,
        system: bool,
        state_dir: Option<&Path>,
    ) -> anyhow::Result<Definition> {
        if system && !cfg!(target_os = "linux") {
            anyhow::bail!("--system is for systemd (Linux); leave it out here");
        }
        let loaded = Config::load(config)?;
        let absolute = |p: &Path| {
            std::path::absolute(p)
                .map_err(|e| anyhow::anyhow!("cannot make {} absolute: {e}", p.display()))
        };
        let state_dir_override = state_dir.map(absolute).transpose()?;
        let state_dir = match &state_dir_override {
            Some(dir) => dir.clone(),
            None => absolute(&loaded.state_dir())?,
        };
        Ok(Definition {
            exe: std::env::current_exe()
                .map_err(|e| anyhow::anyhow!("cannot find this program's path: {e}"))?,
            config: absolute(config)?,
            system,
            state_dir,
            state_dir_override,
            stop_timeout_secs: loaded.proxy.shutdown_grace_secs + STOP_MARGIN_SECS,
        })
    }
}

/// Carries out `action` with this system's service manager.
pub fn perform(action: Action, definition: &Definition) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    return systemd::perform(action, definition);
    #[cfg(target_os = "macos")]
    return launchd::perform(action, definition);
    #[cfg(windows)]
    return windows::perform(action, definition);
    #[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
    {
        let _ = (action, definition);
        anyhow::bail!(
            "no service support on this system; run `xoauth2-proxy run` from its service manager"
        )
    }
}

/// `service-run`: the entry point the Windows Service Control Manager starts.
pub fn run_as_service(
    config: &Path,
    log_dir: Option<&Path>,
    state_dir: Option<&Path>,
) -> anyhow::Result<()> {
    #[cfg(windows)]
    return windows::run_as_service(config, log_dir, state_dir);
    #[cfg(not(windows))]
    {
        let _ = (config, log_dir, state_dir);
        anyhow::bail!(
            "service-run is started by the Windows Service Control Manager; use `xoauth2-proxy run`"
        )
    }
}

/// Runs a service manager's command and returns its output.
fn command(program: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))
}

/// [`command`], failing (with its error output) unless it succeeds.
fn checked(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = command(program, args)?;
    if !out.status.success() {
        anyhow::bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
