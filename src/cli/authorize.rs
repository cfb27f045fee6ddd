//! `authorize`: signs an account in (browser, pasted address or device code)
//! with the local password chosen at the terminal, or checks an app-only
//! account's credential.

use anyhow::Context as _;
use secrecy::SecretString;
use xoauth2_proxy::auth::flows;
use xoauth2_proxy::auth::signin::LocalPassword;
use xoauth2_proxy::auth::vault::TokenStore;
use xoauth2_proxy::config::Config;

/// How `authorize` signs a delegated account in.
#[derive(Clone, Copy)]
pub(crate) enum SignIn {
    Browser { open: bool },
    Paste,
    Device,
}

impl SignIn {
    /// The sign-in `--browser`, `--paste` or `--device` asks for (the first
    /// given, in that order); `None` when none is: the account decides.
    pub(crate) fn from_flags(
        browser: bool,
        paste: bool,
        device: bool,
        open: bool,
    ) -> Option<SignIn> {
        match (browser, paste, device) {
            (true, _, _) => Some(SignIn::Browser { open }),
            (_, true, _) => Some(SignIn::Paste),
            (_, _, true) => Some(SignIn::Device),
            _ => None,
        }
    }
}

/// The local password for a delegated sign-in: one line of standard input
/// (`--password-stdin`), or typed twice at a prompt without echo.
fn choose_password(from_stdin: bool) -> anyhow::Result<LocalPassword> {
    use std::io::IsTerminal;
    if from_stdin {
        let line = super::password::stdin_line()?;
        return Ok(LocalPassword::new(
            &SecretString::from(line.as_str()),
            None,
        )?);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "no terminal to ask for the local password on: pass it as one line of standard \
             input with --password-stdin (with --paste, the address the browser ended on is \
             the next line)"
        );
    }
    println!(
        "Choose the local password your mail clients will log in with (at least {} \
         characters); it seals the tokens on this machine.",
        xoauth2_proxy::auth::signin::MIN_PASSWORD_LEN
    );
    let read = |prompt: &str| -> anyhow::Result<SecretString> {
        Ok(SecretString::from(
            rpassword::prompt_password(prompt).context("cannot read the password")?,
        ))
    };
    let first = read("Local password: ")?;
    LocalPassword::new(&first, None)?;
    let again = read("Again: ")?;
    Ok(LocalPassword::new(&first, Some(&again))?)
}

pub(crate) async fn authorize(
    config: &Config,
    name: &str,
    how: Option<SignIn>,
    open: bool,
    password_stdin: bool,
) -> anyhow::Result<()> {
    use xoauth2_proxy::config::Flow;
    let resolved = config.account(name).with_context(|| {
        format!(
            "{name} is not an account in {}; add an [[account]] for it",
            config.source.display()
        )
    })?;
    let account: &xoauth2_proxy::config::AccountConfig = &resolved;
    let http = xoauth2_proxy::http_client(config)?;
    let how = match (account.flow, how) {
        (Flow::ClientCredentials, Some(_)) => anyhow::bail!(
            "{} uses flow = \"client_credentials\" (app-only): nobody signs in; run \
             `xoauth2-proxy authorize {}` without --browser/--paste/--device to check its \
             credentials",
            account.username,
            account.username
        ),
        (Flow::ClientCredentials, None) => return check_app_only(account, &http).await,
        (_, explicit) => {
            use xoauth2_proxy::auth::choice::{self, Interactive};
            let explicit = explicit.map(|h| match h {
                SignIn::Browser { .. } => Interactive::Browser,
                SignIn::Paste => Interactive::Paste,
                SignIn::Device => Interactive::Device,
            });
            let chosen = choice::choose(account, explicit, choice::Machine::current());
            let (how, name) = match chosen.how {
                Interactive::Browser => (SignIn::Browser { open }, "the browser"),
                Interactive::Paste => {
                    (SignIn::Paste, "a browser anywhere, its address pasted back")
                }
                Interactive::Device => (SignIn::Device, "the device code"),
            };
            println!("Signing in with {name}: {}.", chosen.why);
            how
        }
    };
    if matches!(how, SignIn::Paste) && password_stdin && account.password_hash.is_some() {
        // No password is read for it, so the first line would be taken for
        // the address: refused rather than misread.
        anyhow::bail!(
            "{} has password_hash: no local password is chosen at its sign-in, so \
             --password-stdin has nothing to read; leave it out and give only the address the \
             browser ended on",
            account.username
        );
    }
    // Asked before the sign-in, so nothing waits on a person at the end:
    // the tokens are sealed with it from their first write. (With --paste
    // and --password-stdin: the password is the first line, the address
    // the second, the one a script learns last.)
    let password = if account.password_hash.is_none() {
        Some(choose_password(password_stdin)?)
    } else {
        None
    };
    let tokens = match how {
        SignIn::Device => {
            flows::device_code(account, &http, |prompt| {
                println!("{}", prompt.message);
                println!(
                    "(the code is valid for {} minutes; waiting for the sign-in…)",
                    prompt.expires_in.as_secs() / 60
                );
            })
            .await?
        }
        SignIn::Paste => {
            use std::io::IsTerminal as _;
            let mut prompt = PasteAtTerminal {
                username: &account.username,
                interactive: std::io::stdin().is_terminal(),
            };
            xoauth2_proxy::auth::paste::paste_sign_in(account, &http, &mut prompt).await?
        }
        SignIn::Browser { open } => {
            use std::io::Write as _;
            use xoauth2_proxy::auth::loopback;
            loopback::browser_sign_in(account, &http, loopback::CALLBACK_TIMEOUT, |url| {
                println!(
                    "To sign in {}, open this address in a browser on this machine:",
                    account.username
                );
                println!("{url}");
                if open && let Err(e) = loopback::open_browser(url) {
                    println!("(could not open a browser: {e}; open the address yourself)");
                }
                println!(
                    "(waiting up to {} minutes for the sign-in…)",
                    loopback::CALLBACK_TIMEOUT.as_secs() / 60
                );
                let _ = std::io::stdout().flush();
            })
            .await?
        }
    };
    if tokens.refresh_token.is_none() {
        anyhow::bail!(
            "the sign-in gave no refresh token: add the offline_access scope to the account"
        );
    }
    let store = TokenStore::open(config)?;
    xoauth2_proxy::auth::signin::save_signed_in(
        &store,
        account,
        &tokens,
        password.as_ref(),
        xoauth2_proxy::auth::password::KdfParams::CURRENT,
    )?;
    println!(
        "Signed in {}. Tokens saved{} to {}.",
        account.username,
        if password.is_some() {
            ", sealed with the local password,"
        } else {
            ""
        },
        store.location(&account.username).display()
    );
    Ok(())
}

/// The paste sign-in's side in the terminal: the link and what to paste
/// on standard output, each pasted line read from standard input.
struct PasteAtTerminal<'a> {
    username: &'a str,
    /// Standard input is a terminal: a person who may paste again.
    interactive: bool,
}

impl xoauth2_proxy::auth::paste::PastePrompt for PasteAtTerminal<'_> {
    fn show(&mut self, url: &str, redirect_uri: &str) {
        use std::io::Write as _;
        println!(
            "To sign in {}, open this address in a browser on any machine:",
            self.username
        );
        println!("{url}");
        // As the address bar will show it (`http://localhost/`).
        let shown = reqwest::Url::parse(redirect_uri)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| redirect_uri.to_owned());
        println!(
            "After the sign-in the browser is sent to {shown}?code=…&state=… and may show an \
             error page there (nothing answers at that address; that is expected). Copy that \
             whole address from the address bar and paste it here within {} minutes.",
            xoauth2_proxy::auth::authcode::SIGN_IN_LIFETIME.as_secs() / 60
        );
        print!("Address the browser ended on: ");
        let _ = std::io::stdout().flush();
    }

    fn read(
        &mut self,
    ) -> impl std::future::Future<
        Output = Result<zeroize::Zeroizing<String>, xoauth2_proxy::auth::paste::PasteError>,
    > + Send {
        use xoauth2_proxy::auth::paste::{PasteError, read_line};
        // A thread of its own: a blocking read that the sign-in's deadline
        // can walk away from (it ends with the process).
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_line(&mut std::io::stdin().lock()));
        });
        async move {
            rx.await
                .unwrap_or_else(|_| Err(PasteError::Read("the reading thread ended".into())))
        }
    }

    fn refused(&mut self, why: &xoauth2_proxy::auth::paste::PasteError, left: usize) -> bool {
        use std::io::Write as _;
        // A script's run ends with the reason as its error; a person hears it now.
        if !self.interactive {
            return false;
        }
        eprintln!("{why}");
        print!(
            "Paste the address again ({left} {} left): ",
            if left == 1 { "try" } else { "tries" }
        );
        let _ = std::io::stdout().flush();
        true
    }
}

/// An app-only account: one client credentials request shows whether the
/// app's credential and permissions work. Nothing is stored; the proxy
/// asks for app-only tokens itself.
async fn check_app_only(
    account: &xoauth2_proxy::config::AccountConfig,
    http: &xoauth2_proxy::auth::http::HttpClient,
) -> anyhow::Result<()> {
    use oauth2::TokenResponse as _;
    match flows::client_credentials(account, http).await {
        Ok(response) => {
            println!(
                "The token endpoint issued an app-only access token for {}{}: the app's \
                 credential works. Nothing is stored; the proxy asks for app-only tokens itself. \
                 (Whether the mailbox lets the app in is up to Exchange: see the README, \
                 \"App-only access\".)",
                account.username,
                response
                    .expires_in()
                    .map(|d| format!(" (valid {} minutes)", d.as_secs() / 60))
                    .unwrap_or_default()
            );
            Ok(())
        }
        Err(e) => anyhow::bail!(
            "the app-only token request for {} failed: {}",
            account.username,
            flows::describe(e)
        ),
    }
}
