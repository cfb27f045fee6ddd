//! The command line: parse arguments, load the configuration, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use secrecy::SecretString;
use xoauth2_proxy::auth::flows;
use xoauth2_proxy::auth::signin::LocalPassword;
use xoauth2_proxy::auth::vault::TokenStore;
use xoauth2_proxy::config::Config;

#[derive(Parser)]
#[command(
    name = "xoauth2-proxy",
    // `0.1.0 (commit abc1234)`: the commit from build.rs, "unknown" outside git.
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("XOAUTH2_PROXY_COMMIT"), ")"),
    about = "Password logins in front, OAuth 2.0 (XOAUTH2) behind: IMAP, POP3 and SMTP for Office 365"
)]
struct Cli {
    /// The configuration file.
    #[arg(short, long, global = true, default_value = "proxy.toml")]
    config: PathBuf,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    /// Log lines as text, or as one JSON object per line for log shippers;
    /// overrides `log_format` of the configuration.
    #[arg(long, global = true, value_enum)]
    log_format: Option<xoauth2_proxy::logging::LogFormat>,
    /// `run`: log to daily files in this directory instead of stderr (the
    /// service definitions set it); overrides `log_dir` of the configuration.
    /// `doctor`: the log folder to check.
    #[arg(long, global = true)]
    log_dir: Option<PathBuf>,
    /// Tokens and runtime state; overrides `state_dir` of the configuration
    /// (a system service keeps them in its own directory).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy until Ctrl-C or SIGTERM (SIGHUP reloads the configuration).
    Run,
    /// Make the running proxy (the one with this configuration's state_dir, or
    /// the Windows service) apply its configuration file again, without a restart.
    Reload,
    /// Print a valid access token for ACCOUNT from the running proxy (refreshed
    /// by it first if needed), for msmtp's passwordeval, mutt, mbsync's PassCmd
    /// or git send-email. Asks for the account's local password (the one mail
    /// clients log in with); only the token goes to standard output.
    Token {
        /// The account's address, as mail clients log in with it.
        account: String,
        /// Read the local password as one line of standard input instead of
        /// prompting for it.
        #[arg(long)]
        password_stdin: bool,
        /// Print the base64 SASL XOAUTH2 string
        /// (`user=…\x01auth=Bearer …\x01\x01`) instead of the bare token.
        #[arg(long)]
        xoauth2: bool,
    },
    /// Check the configuration file and exit.
    CheckConfig,
    /// Write a first configuration (to --config, default proxy.toml): asks for
    /// the address and the app's client id, finds the tenant, prints the mail
    /// client settings and offers to install the service.
    Init(InitFlags),
    /// Check the configuration, each upstream (DNS, TCP, TLS, greeting), each
    /// token endpoint and each account's tokens; exits non-zero on a problem.
    Doctor,
    /// Sign an account in and store its tokens (the account's `flow` decides
    /// how, unless told; an app-only account is checked with one token request).
    Authorize {
        /// The account's address, as in the configuration.
        account: String,
        /// Sign in in a browser on this machine (authorization code with PKCE;
        /// the answer comes back to a listener on localhost).
        #[arg(long, conflicts_with_all = ["device", "paste"])]
        browser: bool,
        /// Sign in in a browser on any machine, then paste back here the
        /// address it ends on (http://localhost/?code=…&state=…): for machines
        /// without a desktop where the device code is blocked.
        #[arg(long, conflicts_with = "device")]
        paste: bool,
        /// Use the device code flow (a code to enter on any device).
        #[arg(long)]
        device: bool,
        /// With the browser: only print the URL, do not try to open a browser.
        #[arg(long)]
        no_open: bool,
        /// Read the local password (the one mail clients will log in with;
        /// it seals the tokens) as the first line of standard input instead
        /// of prompting for it twice; with --paste, the address the browser
        /// ended on is the next line.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove an account's stored tokens (signing in again also replaces them, with a new local password).
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
    /// Run the proxy as a service of the system: a systemd unit (Linux), a
    /// launchd agent (macOS), a Windows service.
    Service {
        #[command(subcommand)]
        action: ServiceCommand,
    },
    /// Started by the Windows Service Control Manager (`service install` registers it).
    #[command(hide = true)]
    ServiceRun,
    /// The token store (`token_store`): copy its entries elsewhere.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Copy every account's tokens from the configured store to another:
    /// `--to redis://host:6379/0` (or `rediss://`), or `--to files` (the
    /// files under state_dir). Sealed tokens stay sealed.
    Migrate {
        /// `files`, or a Redis URL (its password may come from XOAUTH2_PROXY_REDIS_PASSWORD).
        #[arg(long)]
        to: String,
        /// Replace entries the destination already holds (kept by default).
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Register the service for this configuration, start it, and start it at boot or login.
    Install(ServiceFlags),
    /// Stop the service and remove it.
    Uninstall(ServiceFlags),
    /// Start the installed service.
    Start(ServiceFlags),
    /// Stop the service (it drains open sessions first).
    Stop(ServiceFlags),
    /// Show whether the service is installed and running.
    Status(ServiceFlags),
    /// Print the systemd system unit for a program at `--exe` (the text
    /// `service install --system` writes): the Debian package ships it, so the
    /// two cannot drift. `--config` is the configuration the unit names; the
    /// stop timeout comes from `--timeout-from` (default: `--config`).
    #[command(hide = true)]
    Unit {
        /// Where the package installs this program.
        #[arg(long)]
        exe: PathBuf,
        /// The configuration to read the shutdown grace from, when `--config`
        /// does not exist yet (the example the package's conffile is made from).
        #[arg(long)]
        timeout_from: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct InitFlags {
    /// Replace an existing configuration file.
    #[arg(long)]
    force: bool,
    /// Ask nothing: take --address and --client-id (required) and the others
    /// (for scripts and installers).
    #[arg(long)]
    non_interactive: bool,
    /// The mail address that signs in.
    #[arg(long)]
    address: Option<String>,
    /// The Entra app's Application (client) ID.
    #[arg(long)]
    client_id: Option<String>,
    /// The tenant (id or domain); found from the address's domain when not given.
    #[arg(long)]
    tenant: Option<String>,
    /// The listeners to write: imap, pop3, smtp, separated by commas.
    #[arg(long, default_value = "imap,smtp")]
    listeners: String,
}

#[derive(clap::Args)]
struct ServiceFlags {
    /// Linux: a system unit (/etc/systemd/system, needs root) instead of a user unit.
    #[arg(long)]
    system: bool,
}

#[derive(Subcommand)]
enum CertAction {
    /// Print the certificate's path and SHA-256 fingerprint, and how to trust it
    /// on Windows, macOS and Linux (generating it first if there is none yet).
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::ServiceRun = cli.command {
        return match xoauth2_proxy::service::run_as_service(
            &cli.config,
            cli.log_dir.as_deref(),
            cli.state_dir.as_deref(),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", xoauth2_proxy::logging::error_chain(e.as_ref()));
                ExitCode::FAILURE
            }
        };
    }
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
            eprintln!("error: {}", xoauth2_proxy::logging::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if let Command::HashPassword = cli.command {
        xoauth2_proxy::logging::to_stderr_as(&cli.log, cli.log_format.unwrap_or_default());
        return hash_password();
    }
    if let Command::Init(flags) = &cli.command {
        xoauth2_proxy::logging::to_stderr_as(&cli.log, cli.log_format.unwrap_or_default());
        return init(flags, &cli).await;
    }
    if let Command::Service { action } = &cli.command {
        xoauth2_proxy::logging::to_stderr_as(&cli.log, cli.log_format.unwrap_or_default());
        return service(action, &cli);
    }
    let mut config = Config::load(&cli.config)?;
    if let Some(dir) = &cli.state_dir {
        config.proxy.state_dir = Some(dir.clone());
    }
    let log_dir = match cli.command {
        Command::Run => cli.log_dir.clone().or_else(|| config.proxy.log_dir.clone()),
        _ => None,
    };
    let log_format = cli.log_format.unwrap_or(config.proxy.log_format);
    match &log_dir {
        Some(dir) => {
            xoauth2_proxy::logging::to_files_as(&cli.log, dir, config.proxy.log_keep, log_format)?
        }
        None => xoauth2_proxy::logging::to_stderr_as(&cli.log, log_format),
    }
    match cli.command {
        Command::Run => {
            let path = cli.config.clone();
            let state_dir = cli.state_dir.clone();
            let reloads = xoauth2_proxy::control::Reloads::new(move || {
                let mut config = Config::load(&path)?;
                if let Some(dir) = &state_dir {
                    config.proxy.state_dir = Some(dir.clone());
                }
                Ok(config)
            });
            xoauth2_proxy::run(config, xoauth2_proxy::stop_signal(), reloads).await
        }
        Command::Doctor => {
            // The folder of the logs to check, as `run` would take it.
            if let Some(dir) = &cli.log_dir {
                config.proxy.log_dir = Some(dir.clone());
            }
            let findings = xoauth2_proxy::doctor::check(&config, |f| println!("{f}")).await;
            let problems = findings
                .iter()
                .filter(|f| matches!(f, xoauth2_proxy::doctor::Finding::Problem(_)))
                .count();
            if problems > 0 {
                anyhow::bail!("{problems} problem(s) found");
            }
            println!("Everything checked is fine.");
            Ok(())
        }
        Command::Reload => {
            reload(&config).await?;
            println!("Reloaded: the proxy applies {} now.", cli.config.display());
            Ok(())
        }
        Command::Token {
            account,
            password_stdin,
            xoauth2,
        } => token(&config, &account, password_stdin, xoauth2).await,
        Command::Service { .. } | Command::ServiceRun | Command::Init(_) => {
            unreachable!("handled before loading the configuration")
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
        Command::Authorize {
            account,
            browser,
            paste,
            device,
            no_open,
            password_stdin,
        } => {
            let how = match (browser, paste, device) {
                (true, _, _) => Some(SignIn::Browser { open: !no_open }),
                (_, true, _) => Some(SignIn::Paste),
                (_, _, true) => Some(SignIn::Device),
                _ => None,
            };
            authorize(&config, &account, how, !no_open, password_stdin).await
        }
        Command::Forget { account } => forget(&config, &account),
        Command::Store {
            action: StoreAction::Migrate { to, replace },
        } => migrate(&config, &to, replace),
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

/// Where the Entra app is registered, for `init`'s explanation.
const REGISTER_APP_URL: &str =
    "https://entra.microsoft.com/#view/Microsoft_AAD_RegisteredApps/ApplicationsListBlade";

async fn init(flags: &InitFlags, cli: &Cli) -> anyhow::Result<()> {
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

fn service(action: &ServiceCommand, cli: &Cli) -> anyhow::Result<()> {
    use xoauth2_proxy::service::{Action, Definition};
    let (action, flags) = match action {
        ServiceCommand::Install(f) => (Action::Install, f),
        ServiceCommand::Uninstall(f) => (Action::Uninstall, f),
        ServiceCommand::Start(f) => (Action::Start, f),
        ServiceCommand::Stop(f) => (Action::Stop, f),
        ServiceCommand::Status(f) => (Action::Status, f),
        ServiceCommand::Unit { exe, timeout_from } => {
            let loaded = Config::load(timeout_from.as_deref().unwrap_or(&cli.config))?;
            let stop_timeout_secs =
                loaded.proxy.shutdown_grace_secs + xoauth2_proxy::service::STOP_MARGIN_SECS;
            print!(
                "{}",
                xoauth2_proxy::service::systemd::system_unit_text(
                    exe,
                    &cli.config,
                    stop_timeout_secs
                )
            );
            return Ok(());
        }
    };
    let definition = Definition::for_config(&cli.config, flags.system, cli.state_dir.as_deref())?;
    xoauth2_proxy::service::perform(action, &definition)
}

#[cfg(unix)]
async fn reload(config: &Config) -> anyhow::Result<()> {
    xoauth2_proxy::control::request_reload(&config.state_dir()).await
}

/// Windows: the control pipe of the proxy (a per-user run, or the service
/// for an administrator), which answers with the outcome; without one, the
/// service's reload control (which does not wait for the outcome).
#[cfg(windows)]
async fn reload(config: &Config) -> anyhow::Result<()> {
    match xoauth2_proxy::control::request_reload(&config.state_dir()).await {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().starts_with("no proxy answers") => {
            xoauth2_proxy::service::windows::request_reload()
        }
        Err(e) => Err(e),
    }
}

#[cfg(not(any(unix, windows)))]
async fn reload(_config: &Config) -> anyhow::Result<()> {
    anyhow::bail!("reload is not supported on this system; restart the proxy")
}

/// `store migrate`: the configured store's entries copied to `to`.
fn migrate(config: &Config, to: &str, replace: bool) -> anyhow::Result<()> {
    use xoauth2_proxy::config::TokenStoreSetting;
    let from = TokenStore::open(config)?;
    let setting =
        TokenStoreSetting::try_from(to.to_owned()).map_err(|e| anyhow::anyhow!("--to {e}"))?;
    let dest = TokenStore::open_setting(config, &setting)?;
    if from.describe() == dest.describe() {
        anyhow::bail!("the configured token store is already {}", dest.describe());
    }
    let done = xoauth2_proxy::auth::vault::copy_entries(&from, &dest, replace)?;
    for account in &done.copied {
        println!("copied {account}");
    }
    for account in &done.kept {
        println!(
            "kept {account}: {} already holds tokens for it (--replace to overwrite)",
            dest.describe()
        );
    }
    println!(
        "Copied {} account(s) from {} to {}. Set token_store in [proxy] to use it.",
        done.copied.len(),
        from.describe(),
        dest.describe()
    );
    Ok(())
}

fn forget(config: &Config, name: &str) -> anyhow::Result<()> {
    let store = TokenStore::open(config)?;
    let name = config
        .account(name)
        .map(|a| a.username.clone())
        .unwrap_or_else(|| name.to_owned());
    let name = name.as_str();
    let path = store.location(name);
    if store.remove(name)? {
        println!(
            "Removed the tokens of {name} ({}). Sign in again with `xoauth2-proxy authorize {name}` \
             and choose the local password there. A proxy that is running keeps \
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

/// `token`: asks the running proxy for a token and prints it alone on
/// standard output (everything else goes to standard error).
#[cfg(any(unix, windows))]
async fn token(
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
async fn token(
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

/// A password to check (not to choose): one line of standard input, or
/// typed once without echo at a prompt on the terminal (`/dev/tty`, so it
/// works inside mutt or msmtp too, whose standard input is not one; the
/// console on Windows).
#[cfg(any(unix, windows))]
fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<SecretString> {
    if from_stdin {
        let mut line = zeroize::Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let trimmed = line.trim_end_matches(['\r', '\n']).len();
        line.truncate(trimmed);
        return Ok(SecretString::from(line.as_str()));
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

/// How `authorize` signs a delegated account in.
#[derive(Clone, Copy)]
enum SignIn {
    Browser { open: bool },
    Paste,
    Device,
}

/// The local password for a delegated sign-in: one line of standard input
/// (`--password-stdin`), or typed twice at a prompt without echo.
fn choose_password(from_stdin: bool) -> anyhow::Result<LocalPassword> {
    use std::io::IsTerminal;
    if from_stdin {
        let mut line = zeroize::Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let trimmed = line.trim_end_matches(['\r', '\n']).len();
        line.truncate(trimmed);
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

async fn authorize(
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
