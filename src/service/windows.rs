//! Windows: a service of the Service Control Manager, started at boot
//! (automatic), restarted on failure, running `xoauth2-proxy service-run`
//! as LocalSystem. Configuration, tokens and logs default to
//! `%ProgramData%\xoauth2-proxy\`. A Stop or a system shutdown drains the
//! sessions like Ctrl-C does.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType, UserEventCode,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use super::{Action, DESCRIPTION, Definition, NAME, STOP_MARGIN_SECS};
use crate::config::{Config, DEFAULT_LOG_KEEP};
use crate::notify::event_log;

const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
const ERROR_SERVICE_EXISTS: i32 = 1073;
const ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: i32 = 1063;
/// A service configuration setting this system does not have.
const ERROR_INVALID_LEVEL: i32 = 124;
/// The user-defined control `xoauth2-proxy reload` sends to the service.
const RELOAD: u32 = 128;
/// A start reports progress within this long.
const START_WAIT: Duration = Duration::from_secs(30);

/// `%ProgramData%\xoauth2-proxy`.
pub(crate) fn program_data() -> PathBuf {
    std::env::var_os("ProgramData")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
        .join("xoauth2-proxy")
}

/// What `service-run` was started with.
struct Args {
    config: PathBuf,
    log_dir: PathBuf,
    state_dir: Option<PathBuf>,
}

static ARGS: OnceLock<Args> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// `service-run`: hands this process to the Service Control Manager, which
/// calls `service_main`.
pub fn run_as_service(
    config: &Path,
    log_dir: Option<&Path>,
    state_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let _ = ARGS.set(Args {
        config: config.to_owned(),
        log_dir: log_dir
            .map(Path::to_owned)
            .unwrap_or_else(|| program_data().join("logs")),
        state_dir: state_dir.map(Path::to_owned),
    });
    match service_dispatcher::start(NAME, ffi_service_main) {
        Ok(()) => Ok(()),
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error() == Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) =>
        {
            anyhow::bail!(
                "service-run is started by the Service Control Manager; in a console use `xoauth2-proxy run`"
            )
        }
        Err(e) => Err(anyhow::anyhow!("cannot start the service dispatcher: {e}")),
    }
}

fn service_main(_arguments: Vec<OsString>) {
    let Some(args) = ARGS.get() else {
        return;
    };
    // Notifications, start, stop and errors go to the Event Log too (src/notify/event_log.rs).
    crate::notify::use_event_log();
    if let Err(e) = serve(args) {
        let error = crate::logging::error_chain(e.as_ref());
        tracing::error!(error = %error, "the service stopped with an error");
        event_log::report(
            event_log::Level::Error,
            &format!("the service stopped with an error: {error}"),
        );
    } else {
        event_log::report(event_log::Level::Information, "the service stopped");
    }
}

fn status(state: ServiceState, exit_code: ServiceExitCode, wait_hint: Duration) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code,
        checkpoint: 0,
        wait_hint,
        process_id: None,
    }
}

fn serve(args: &Args) -> anyhow::Result<()> {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let config_path = args.config.clone();
    let state_dir = args.state_dir.clone();
    let reloads = crate::control::Reloads::new(move || {
        let mut config = Config::load(&config_path)?;
        if let Some(dir) = &state_dir {
            config.proxy.state_dir = Some(dir.clone());
        }
        Ok(config)
    });
    let reload_tx = reloads.sender();
    let handler = move |event| match event {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            let _ = stop_tx.send(true);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::UserEvent(code) if code.to_raw() == RELOAD => {
            let _ = reload_tx.send(crate::control::Request { reply: None });
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = service_control_handler::register(NAME, handler)?;
    handle.set_service_status(status(
        ServiceState::StartPending,
        ServiceExitCode::NO_ERROR,
        START_WAIT,
    ))?;
    let config = Config::load(&args.config);
    let keep = config
        .as_ref()
        .map(|c| c.proxy.log_keep)
        .unwrap_or(DEFAULT_LOG_KEEP);
    let format = config
        .as_ref()
        .map(|c| c.proxy.log_format)
        .unwrap_or_default();
    let logging = crate::logging::to_files_as("info", &args.log_dir, keep, format);
    let result = (|| -> anyhow::Result<()> {
        logging?;
        let mut config = config?;
        if let Some(dir) = &args.state_dir {
            config.proxy.state_dir = Some(dir.clone());
        }
        let stop_wait = Duration::from_secs(config.proxy.shutdown_grace_secs + STOP_MARGIN_SECS);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        handle.set_service_status(status(
            ServiceState::Running,
            ServiceExitCode::NO_ERROR,
            Duration::ZERO,
        ))?;
        tracing::info!("running as the Windows service {NAME}");
        event_log::report(event_log::Level::Information, "the service started");
        runtime.block_on(crate::run(
            config,
            async {
                let _ = stop_rx.wait_for(|stop| *stop).await;
                tracing::info!("stop requested by the Service Control Manager");
                let _ = handle.set_service_status(status(
                    ServiceState::StopPending,
                    ServiceExitCode::NO_ERROR,
                    stop_wait,
                ));
            },
            reloads,
        ))
    })();
    let exit = match &result {
        Ok(()) => ServiceExitCode::NO_ERROR,
        Err(e) => {
            tracing::error!(error = %crate::logging::error_chain(e.as_ref()), "the service cannot run");
            ServiceExitCode::ServiceSpecific(1)
        }
    };
    handle.set_service_status(status(ServiceState::Stopped, exit, Duration::ZERO))?;
    result
}

/// `xoauth2-proxy reload`: asks the service to apply its configuration again.
/// The outcome is in the service's log.
pub fn request_reload() -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| anyhow::anyhow!("cannot open the Service Control Manager: {e}"))?;
    let service = manager
        .open_service(NAME, ServiceAccess::USER_DEFINED_CONTROL)
        .map_err(|e| {
            anyhow::anyhow!("cannot reach the service {NAME} (installed? administrator?): {e}")
        })?;
    let code = UserEventCode::from_raw(RELOAD)
        .map_err(|e| anyhow::anyhow!("reload control code: {e:?}"))?;
    service
        .notify(code)
        .map_err(|e| anyhow::anyhow!("the service {NAME} did not take the reload: {e}"))?;
    Ok(())
}

/// The arguments the service is started with.
fn launch_arguments(d: &Definition, state_dir: &Path) -> Vec<OsString> {
    vec![
        "service-run".into(),
        "--config".into(),
        d.config.clone().into_os_string(),
        "--log-dir".into(),
        program_data().join("logs").into_os_string(),
        "--state-dir".into(),
        state_dir.as_os_str().to_owned(),
    ]
}

fn is(e: &windows_service::Error, code: i32) -> bool {
    matches!(e, windows_service::Error::Winapi(io) if io.raw_os_error() == Some(code))
}

fn wait_for_state(
    service: &windows_service::service::Service,
    want: ServiceState,
    limit: Duration,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if service.query_status()?.current_state == want {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(false)
}

pub fn perform(action: Action, d: &Definition) -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(|e| {
        anyhow::anyhow!("cannot open the Service Control Manager (run as administrator): {e}")
    })?;
    let open = |access| match manager.open_service(NAME, access) {
        Ok(s) => Ok(Some(s)),
        Err(e) if is(&e, ERROR_SERVICE_DOES_NOT_EXIST) => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot open the service {NAME}: {e}")),
    };
    let stop_limit = Duration::from_secs(d.stop_timeout_secs);
    match action {
        Action::Install => {
            let configured = Config::load(&d.config)?.proxy.state_dir;
            let state_dir = match (&d.state_dir_override, configured) {
                (Some(dir), _) => dir.clone(),
                (None, Some(_)) => d.state_dir.clone(),
                (None, None) => program_data(),
            };
            // %ProgramData% lets every local user read what is inside: the
            // service's folders get a protected DACL (SYSTEM, Administrators).
            for dir in [program_data().join("logs"), state_dir.clone()] {
                crate::fs_secure::private_dir(&dir).map_err(|e| {
                    anyhow::anyhow!("cannot create {} (owner-only): {e}", dir.display())
                })?;
            }
            let info = ServiceInfo {
                name: NAME.into(),
                display_name: NAME.into(),
                service_type: ServiceType::OWN_PROCESS,
                start_type: ServiceStartType::AutoStart,
                error_control: ServiceErrorControl::Normal,
                executable_path: d.exe.clone(),
                launch_arguments: launch_arguments(d, &state_dir),
                dependencies: vec![],
                account_name: None,
                account_password: None,
            };
            let access = ServiceAccess::CHANGE_CONFIG
                | ServiceAccess::START
                | ServiceAccess::STOP
                | ServiceAccess::QUERY_STATUS;
            let service = match manager.create_service(&info, access) {
                Ok(s) => s,
                Err(e) if is(&e, ERROR_SERVICE_EXISTS) => {
                    let s = manager.open_service(NAME, access)?;
                    if s.query_status()?.current_state != ServiceState::Stopped {
                        s.stop()?;
                        wait_for_state(&s, ServiceState::Stopped, stop_limit)?;
                    }
                    s.change_config(&info)?;
                    s
                }
                Err(e) => return Err(anyhow::anyhow!("cannot create the service {NAME}: {e}")),
            };
            service.set_description(DESCRIPTION)?;
            let restart = |secs| ServiceAction {
                action_type: ServiceActionType::Restart,
                delay: Duration::from_secs(secs),
            };
            service.update_failure_actions(ServiceFailureActions {
                reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
                reboot_msg: None,
                command: None,
                actions: Some(vec![restart(5), restart(30), restart(60)]),
            })?;
            // Restarts after an exit with an error too, not only after a
            // crash. A system without that setting (wine: no
            // SERVICE_CONFIG_FAILURE_ACTIONS_FLAG) still gets the service.
            match service.set_failure_actions_on_non_crash_failures(true) {
                Ok(()) => {}
                Err(e) if is(&e, ERROR_INVALID_LEVEL) => tracing::warn!(
                    "this system restarts the service after a crash only, not after an exit with an error"
                ),
                Err(e) => return Err(e.into()),
            }
            // The Event Log source of the service's notifications, start and stop.
            if let Err(e) = event_log::register() {
                tracing::warn!(error = %e, key = %event_log::source_key(),
                    "cannot register the Event Log source; entries will lack their description");
            }
            service.start::<&str>(&[])?;
            if !wait_for_state(&service, ServiceState::Running, START_WAIT)? {
                anyhow::bail!(
                    "installed the service {NAME}, but it did not start; see its log files in {}",
                    program_data().join("logs").display()
                );
            }
            println!(
                "Installed and started the service {NAME} ({}). Tokens: {}; logs: {}",
                d.exe.display(),
                state_dir.display(),
                program_data().join("logs").display()
            );
            Ok(())
        }
        Action::Uninstall => {
            let Some(service) =
                open(ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE)?
            else {
                let _ = event_log::unregister();
                println!("The service {NAME} is not installed");
                return Ok(());
            };
            if service.query_status()?.current_state != ServiceState::Stopped {
                service.stop()?;
                wait_for_state(&service, ServiceState::Stopped, stop_limit)?;
            }
            service.delete()?;
            if let Err(e) = event_log::unregister() {
                tracing::warn!(error = %e, "cannot remove the Event Log source");
            }
            println!("Stopped and removed the service {NAME}");
            Ok(())
        }
        Action::Start => {
            let service = open(ServiceAccess::START | ServiceAccess::QUERY_STATUS)?
                .ok_or_else(|| anyhow::anyhow!("the service {NAME} is not installed"))?;
            service.start::<&str>(&[])?;
            if !wait_for_state(&service, ServiceState::Running, START_WAIT)? {
                anyhow::bail!("the service {NAME} did not start; see its log files");
            }
            Ok(())
        }
        Action::Stop => {
            let service = open(ServiceAccess::STOP | ServiceAccess::QUERY_STATUS)?
                .ok_or_else(|| anyhow::anyhow!("the service {NAME} is not installed"))?;
            if service.query_status()?.current_state != ServiceState::Stopped {
                service.stop()?;
            }
            if !wait_for_state(&service, ServiceState::Stopped, stop_limit)? {
                anyhow::bail!("the service {NAME} did not stop within {stop_limit:?}");
            }
            Ok(())
        }
        Action::Status => {
            let Some(service) = open(ServiceAccess::QUERY_STATUS | ServiceAccess::QUERY_CONFIG)?
            else {
                println!("The service {NAME} is not installed");
                return Ok(());
            };
            let status = service.query_status()?;
            let config = service.query_config()?;
            println!(
                "{NAME}: {:?}{}\n  program: {}\n  start: {:?}",
                status.current_state,
                status
                    .process_id
                    .map(|p| format!(" (pid {p})"))
                    .unwrap_or_default(),
                config.executable_path.display(),
                config.start_type
            );
            Ok(())
        }
    }
}
