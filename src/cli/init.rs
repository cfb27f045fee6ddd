//! `init`: the questions at the terminal (or the flags that answer them);
//! the library's `init` finds the tenant and writes the file.

use anyhow::Context as _;

use super::args::{Cli, InitFlags};

/// Where the Entra app is registered, for `init`'s explanation.
const REGISTER_APP_URL: &str =
    "https://entra.microsoft.com/#view/Microsoft_AAD_RegisteredApps/ApplicationsListBlade";

pub(crate) async fn init(flags: &InitFlags, cli: &Cli) -> anyhow::Result<()> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    use xoauth2_proxy::init;
    if cli.config.exists() && !flags.force {
        return Err(init::InitError::Exists(cli.config.display().to_string()).into());
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut ask = |question: &str| -> anyhow::Result<String> {
        print!("{question}");
        std::io::stdout().flush()?;
        match lines.next() {
            Some(line) => Ok(line
                .context("cannot read standard input")?
                .trim()
                .to_owned()),
            None => anyhow::bail!("standard input ended before the answer to: {question}"),
        }
    };
    let address = match (&flags.address, flags.non_interactive) {
        (Some(a), _) => a.trim().to_owned(),
        (None, true) => anyhow::bail!("--non-interactive needs --address"),
        (None, false) => ask("Your mail address: ")?,
    };
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    let tenant = match &flags.tenant {
        Some(t) => t.trim().to_owned(),
        None => {
            let found = init::discover_tenant(&init::discovery_base(), domain).await;
            let (tenant, line) = found.tenant(domain);
            println!("{line}");
            tenant
        }
    };
    let client_id = match (&flags.client_id, flags.non_interactive) {
        (Some(c), _) => c.trim().to_owned(),
        (None, true) => anyhow::bail!("--non-interactive needs --client-id"),
        (None, false) => {
            println!(
                "The proxy signs in through an app registered in your organisation's Entra ID \
                 (once per organisation, usually by an administrator): a public client with \
                 the redirect URI http://localhost (Mobile and desktop applications), public \
                 client flows allowed, and the delegated permissions IMAP.AccessAsUser.All, \
                 POP.AccessAsUser.All, SMTP.Send and offline_access (the README, \
                 \"Registering the Entra app\", has the details). Register it at \
                 {REGISTER_APP_URL} and copy its Application (client) ID."
            );
            ask("Application (client) ID: ")?
        }
    };
    let answers = init::Answers {
        address,
        tenant,
        client_id,
        listeners: init::parse_listeners(&flags.listeners)?,
    };
    init::check_answers(&answers)?;
    let config = init::write(&cli.config, &init::render(&answers), flags.force)?;
    println!("Wrote {} (owner-only).", cli.config.display());
    print!("{}", init::describe_settings(&config));
    println!(
        "Next: sign in with `xoauth2-proxy authorize {} --config {}`.",
        answers.address,
        cli.config.display()
    );
    if !flags.non_interactive && std::io::stdin().is_terminal() {
        let answer = ask("Install the proxy as a service now (starts with the machine)? [y/N] ")?;
        if answer.eq_ignore_ascii_case("y") || answer.eq_ignore_ascii_case("yes") {
            let path = std::path::absolute(&cli.config)?;
            let definition = xoauth2_proxy::service::Definition::for_config(
                &path,
                false,
                cli.state_dir.as_deref(),
            )?;
            xoauth2_proxy::service::perform(xoauth2_proxy::service::Action::Install, &definition)?;
        }
    }
    Ok(())
}
