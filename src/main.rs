//! The command line: parse arguments, load the configuration, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use xoauth2_proxy::auth::flows;
use xoauth2_proxy::auth::vault::TokenStore;
use xoauth2_proxy::config::Config;

#[derive(Parser)]
#[command(
    name = "xoauth2-proxy",
    version,
    about = "Password logins in front, OAuth 2.0 (XOAUTH2) behind: IMAP, POP3 and SMTP for Office 365"
)]
struct Cli {
    /// The configuration file.
    #[arg(short, long, global = true, default_value = "proxy.toml")]
    config: PathBuf,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy until Ctrl-C.
    Run,
    /// Check the configuration file and exit.
    CheckConfig,
    /// Sign an account in and store its tokens.
    Authorize {
        /// The account's address, as in the configuration.
        account: String,
        /// Use the device code flow (a code to enter on another device); the default for now.
        #[arg(long)]
        device: bool,
    },
    /// Remove an account's stored tokens (to sign in again and bind a new local password).
    Forget {
        /// The account's address.
        account: String,
    },
    /// Read a password from standard input and print an Argon2id hash of it for `password_hash`.
    HashPassword,
    /// The local TLS certificate (for listeners with local_tls).
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
}

#[derive(Subcommand)]
enum CertAction {
    /// Print the certificate's path and SHA-256 fingerprint, and how to trust it
    /// on Windows, macOS and Linux (generating it first if there is none yet).
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if let Command::HashPassword = cli.command {
        return hash_password();
    }
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Run => {
            xoauth2_proxy::run(config, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
        }
        Command::CheckConfig => {
            println!(
                "{}: {} listener(s), {} account(s); tokens in {}",
                cli.config.display(),
                config.listeners.len(),
                config.accounts.len(),
                config.state_dir().display()
            );
            Ok(())
        }
        Command::Authorize { account, device: _ } => authorize(&config, &account).await,
        Command::Forget { account } => forget(&config, &account),
        Command::HashPassword => unreachable!("handled before loading the configuration"),
        Command::Cert {
            action: CertAction::Show,
        } => {
            let source = xoauth2_proxy::tls::local_cert::CertSource::from_config(&config);
            let loaded = source.load(std::time::SystemTime::now())?;
            print!("{}", xoauth2_proxy::tls::local_cert::describe(&loaded));
            Ok(())
        }
    }
}

fn forget(config: &Config, name: &str) -> anyhow::Result<()> {
    let store = TokenStore::new(&config.state_dir());
    let name = config
        .account(name)
        .map(|a| a.username.as_str())
        .unwrap_or(name);
    let path = store.path_for(name);
    if store.remove(name)? {
        println!(
            "Removed the tokens of {name} ({}). Sign in again with `xoauth2-proxy authorize {name}`; \
             the next login of a mail client binds its password. A proxy that is running keeps \
             the access token it holds until it expires (at most an hour); restart it to drop it now.",
            path.display()
        );
    } else {
        println!(
            "{name} has no stored tokens ({} does not exist).",
            path.display()
        );
    }
    Ok(())
}

/// Prints a PHC string for `password_hash`. From a terminal the password is
/// read twice without echo; otherwise one line of standard input is read.
fn hash_password() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = zeroize::Zeroizing::new(
            rpassword::prompt_password("Password: ").context("cannot read the password")?,
        );
        let second = zeroize::Zeroizing::new(
            rpassword::prompt_password("Again: ").context("cannot read the password")?,
        );
        if *first != *second {
            anyhow::bail!("the two passwords differ");
        }
        first
    } else {
        let mut line = zeroize::Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let trimmed = line.trim_end_matches(['\r', '\n']).len();
        line.truncate(trimmed);
        line
    };
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    let phc = xoauth2_proxy::auth::password::hash_password(password.as_bytes())?;
    println!("{phc}");
    Ok(())
}

async fn authorize(config: &Config, name: &str) -> anyhow::Result<()> {
    let account = config.account(name).with_context(|| {
        format!(
            "{name} is not an account in {}; add an [[account]] for it",
            config.source.display()
        )
    })?;
    let http = xoauth2_proxy::http_client(config)?;
    let tokens = flows::device_code(account, &http, |prompt| {
        println!("{}", prompt.message);
        println!(
            "(the code is valid for {} minutes; waiting for the sign-in…)",
            prompt.expires_in.as_secs() / 60
        );
    })
    .await?;
    if tokens.refresh_token.is_none() {
        anyhow::bail!(
            "the sign-in gave no refresh token: add the offline_access scope to the account"
        );
    }
    let store = TokenStore::new(&config.state_dir());
    store
        .save(&account.username, &tokens)
        .with_context(|| "cannot save the tokens")?;
    println!(
        "Signed in {}. Tokens saved to {}",
        account.username,
        store.path_for(&account.username).display()
    );
    Ok(())
}
