//! Requests to the running proxy: `token` (an access token for a mail
//! program) and `reload`, over the control socket (Unix) or pipe (Windows).

#[cfg(any(unix, windows))]
use anyhow::Context as _;
use xoauth2_proxy::config::Config;

#[cfg(any(unix, windows))]
use super::password::read_password;

#[cfg(unix)]
pub(crate) async fn reload(config: &Config) -> anyhow::Result<()> {
    xoauth2_proxy::control::request_reload(&config.state_dir()).await
}

/// Windows: the control pipe of the proxy (a per-user run, or the service
/// for an administrator), which answers with the outcome; without one, the
/// service's reload control (which does not wait for the outcome).
#[cfg(windows)]
pub(crate) async fn reload(config: &Config) -> anyhow::Result<()> {
    match xoauth2_proxy::control::request_reload(&config.state_dir()).await {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().starts_with("no proxy answers") => {
            xoauth2_proxy::service::windows::request_reload()
        }
        Err(e) => Err(e),
    }
}

#[cfg(not(any(unix, windows)))]
pub(crate) async fn reload(_config: &Config) -> anyhow::Result<()> {
    anyhow::bail!("reload is not supported on this system; restart the proxy")
}

/// `token`: asks the running proxy for a token and prints it alone on
/// standard output (everything else goes to standard error).
#[cfg(any(unix, windows))]
pub(crate) async fn token(
    config: &Config,
    account: &str,
    password_stdin: bool,
    xoauth2: bool,
) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    use std::io::Write;
    use xoauth2_proxy::control::token::{Refusal, TokenFailure, request_token};
    let password = read_password(password_stdin, &format!("Local password for {account}: "))?;
    let token = match request_token(&config.state_dir(), account, &password).await {
        Ok(token) => token,
        Err(TokenFailure::Refused(refusal, message)) => {
            let hint = match refusal {
                Refusal::Refused => "no token: ",
                Refusal::Throttled => "no token (too many failed logins): ",
                Refusal::SignInNeeded => "no token: ",
                Refusal::Unavailable => "no token for now: ",
                Refusal::BadRequest => "the proxy did not understand the request: ",
                Refusal::Stopping => "no token: ",
            };
            anyhow::bail!("{hint}{message}")
        }
        Err(e) => return Err(e.into()),
    };
    let line = if xoauth2 {
        xoauth2_proxy::sasl::xoauth2_response(&token.user, &token.token)
    } else {
        zeroize::Zeroizing::new(token.token.expose_secret().to_owned())
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", line.as_str())
        .and_then(|()| out.flush())
        .context("cannot write the token to standard output")
}

#[cfg(not(any(unix, windows)))]
pub(crate) async fn token(
    _config: &Config,
    _account: &str,
    _password_stdin: bool,
    _xoauth2: bool,
) -> anyhow::Result<()> {
    anyhow::bail!(
        "`xoauth2-proxy token` is not available on this system (it needs the control \
         socket of Unix or the named pipe of Windows)"
    )
}
