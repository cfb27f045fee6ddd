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
    }
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
