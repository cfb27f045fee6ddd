//! The command line's words: clap's `Cli` with its global flags, the
//! subcommands and their flags. Parsing only; what each does is beside it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xoauth2-proxy",
    // `0.1.0 (commit abc1234)`: the commit from build.rs, "unknown" outside git.
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("XOAUTH2_PROXY_COMMIT"), ")"),
    about = "Password logins in front, OAuth 2.0 (XOAUTH2) behind: IMAP, POP3 and SMTP for Office 365"
)]
pub(crate) struct Cli {
    /// The configuration file.
    #[arg(short, long, global = true, default_value = "proxy.toml")]
    pub(crate) config: PathBuf,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    pub(crate) log: String,
    /// Log lines as text, or as one JSON object per line for log shippers;
    /// overrides `log_format` of the configuration.
    #[arg(long, global = true, value_enum)]
    pub(crate) log_format: Option<xoauth2_proxy::logging::LogFormat>,
    /// `run`: log to daily files in this directory instead of stderr (the
    /// service definitions set it); overrides `log_dir` of the configuration.
    /// `doctor`: the log folder to check.
    #[arg(long, global = true)]
    pub(crate) log_dir: Option<PathBuf>,
    /// Tokens and runtime state; overrides `state_dir` of the configuration
    /// (a system service keeps them in its own directory).
    #[arg(long, global = true)]
    pub(crate) state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) enum StoreAction {
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
pub(crate) enum ServiceCommand {
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
pub(crate) struct InitFlags {
    /// Replace an existing configuration file.
    #[arg(long)]
    pub(crate) force: bool,
    /// Ask nothing: take --address and --client-id (required) and the others
    /// (for scripts and installers).
    #[arg(long)]
    pub(crate) non_interactive: bool,
    /// The mail address that signs in.
    #[arg(long)]
    pub(crate) address: Option<String>,
    /// The Entra app's Application (client) ID.
    #[arg(long)]
    pub(crate) client_id: Option<String>,
    /// The tenant (id or domain); found from the address's domain when not given.
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// The listeners to write: imap, pop3, smtp, separated by commas.
    #[arg(long, default_value = "imap,smtp")]
    pub(crate) listeners: String,
}

#[derive(clap::Args)]
pub(crate) struct ServiceFlags {
    /// Linux: a system unit (/etc/systemd/system, needs root) instead of a user unit.
    #[arg(long)]
    pub(crate) system: bool,
}

#[derive(Subcommand)]
pub(crate) enum CertAction {
    /// Print the certificate's path and SHA-256 fingerprint, and how to trust it
    /// on Windows, macOS and Linux (generating it first if there is none yet).
    Show,
}
