//! `service …`: the subcommand's words to the library's `service` actions,
//! and the hidden `service unit` that prints the packaged systemd unit.

use xoauth2_proxy::config::Config;

use super::args::{Cli, ServiceCommand};

pub(crate) fn service(action: &ServiceCommand, cli: &Cli) -> anyhow::Result<()> {
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
