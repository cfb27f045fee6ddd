//! The command line: parse arguments, load the configuration, call the library.
//! Each subcommand's work is in `cli/`, the binary's own modules.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use xoauth2_proxy::config::Config;

use cli::args::{CertAction, Cli, Command, StoreAction};
use cli::authorize::{SignIn, authorize};
use cli::init::init;
use cli::password::hash_password;
use cli::service::service;
use cli::store::{forget, migrate};
use cli::token::{reload, token};

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
            let how = SignIn::from_flags(browser, paste, device, !no_open);
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
