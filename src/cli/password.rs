//! Passwords typed or piped in: one to check (`token`), one to hash for
//! `password_hash` (`hash-password`), and the line reader `authorize`
//! chooses its local password with.

use anyhow::Context as _;
#[cfg(any(unix, windows))]
use secrecy::SecretString;
use zeroize::Zeroizing;

/// One line of standard input without its line end (a password piped in).
pub(super) fn stdin_line() -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let trimmed = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(trimmed);
    Ok(line)
}

/// A password to check (not to choose): one line of standard input, or
/// typed once without echo at a prompt on the terminal (`/dev/tty`, so it
/// works inside mutt or msmtp too, whose standard input is not one; the
/// console on Windows).
#[cfg(any(unix, windows))]
pub(super) fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<SecretString> {
    if from_stdin {
        return Ok(SecretString::from(stdin_line()?.as_str()));
    }
    rpassword::prompt_password(prompt)
        .map(SecretString::from)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot ask for the local password on a terminal ({e}): pass it as one line \
                 of standard input with --password-stdin"
            )
        })
}

/// Prints a PHC string for `password_hash`. From a terminal the password is
/// read twice without echo; otherwise one line of standard input is read.
pub(crate) fn hash_password() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = Zeroizing::new(
            rpassword::prompt_password("Password: ").context("cannot read the password")?,
        );
        let second = Zeroizing::new(
            rpassword::prompt_password("Again: ").context("cannot read the password")?,
        );
        if *first != *second {
            anyhow::bail!("the two passwords differ");
        }
        first
    } else {
        stdin_line()?
    };
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    let phc = xoauth2_proxy::auth::password::hash_password(password.as_bytes())?;
    println!("{phc}");
    Ok(())
}
