//! Which interactive sign-in `authorize` runs: the browser (authorization
//! code with PKCE) where this machine has a desktop session to open one in,
//! the device code otherwise. Microsoft-managed Conditional Access policies
//! block the device code flow in many tenants, so it is no longer the
//! first choice where a browser is at hand; where none is, the paste
//! (the same request, signed in on another machine, its answer pasted
//! back) is asked for by name, or taken when the account's `redirect_uri`
//! is not on this machine.

use crate::config::{AccountConfig, Flow, ProviderKind};

/// How an interactive sign-in runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interactive {
    Browser,
    /// The browser on any machine; the address it ends on is pasted back.
    Paste,
    Device,
}

/// What the machine offers, as seen from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    /// Windows or macOS (a desktop whenever someone is at a terminal).
    pub desktop_os: bool,
    /// Standard input is a terminal.
    pub interactive: bool,
    /// Linux and others: `DISPLAY` or `WAYLAND_DISPLAY` is set (non-empty).
    pub display: bool,
}

impl Machine {
    /// This process's machine.
    pub fn current() -> Machine {
        use std::io::IsTerminal;
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        Machine {
            desktop_os: cfg!(any(windows, target_os = "macos")),
            interactive: std::io::stdin().is_terminal(),
            display: set("DISPLAY") || set("WAYLAND_DISPLAY"),
        }
    }

    fn can_open_browser(&self) -> bool {
        if self.desktop_os {
            self.interactive
        } else {
            self.display
        }
    }
}

/// The flow chosen, and one line saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub how: Interactive,
    pub why: &'static str,
}

/// Chooses the interactive flow: an explicit `--browser`/`--paste`/`--device`
/// first, then an explicit `flow` of the account, then (`auto`) the account's
/// `redirect_uri` when it is not on this machine (only a paste can take its
/// answer), then the machine.
/// (`client_credentials` accounts never get here: nobody signs in.)
pub fn choose(account: &AccountConfig, explicit: Option<Interactive>, machine: Machine) -> Choice {
    if let Some(how) = explicit {
        return Choice {
            how,
            why: "chosen on the command line",
        };
    }
    match account.flow {
        Flow::AuthorizationCode => Choice {
            how: Interactive::Browser,
            why: "the account's flow = \"authorization_code\"",
        },
        Flow::Paste => Choice {
            how: Interactive::Paste,
            why: "the account's flow = \"paste\"",
        },
        Flow::DeviceCode | Flow::ClientCredentials => Choice {
            how: Interactive::Device,
            why: "the account's flow = \"device_code\"",
        },
        Flow::Auto
            if account.provider == ProviderKind::Custom && account.authorize_url.is_none() =>
        {
            Choice {
                how: Interactive::Device,
                why: "the custom provider has no authorize_url",
            }
        }
        Flow::Auto if !account.redirect_on_this_machine() => Choice {
            how: Interactive::Paste,
            why: "the account's redirect_uri is not on this machine, so its answer is pasted back",
        },
        Flow::Auto if machine.can_open_browser() => Choice {
            how: Interactive::Browser,
            why: "this machine has a desktop session to open a browser in",
        },
        Flow::Auto => Choice {
            how: Interactive::Device,
            why: "no desktop session here (no DISPLAY or WAYLAND_DISPLAY, or not interactive); \
                  if the tenant blocks the device code, use --paste: sign in in a browser on \
                  any machine and paste the address it ends on back here",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(flow: Flow, provider: ProviderKind) -> AccountConfig {
        account_with(flow, provider, None)
    }

    fn account_with(flow: Flow, provider: ProviderKind, redirect: Option<&str>) -> AccountConfig {
        let text = format!(
            "[[account]]\nusername = \"a@example.com\"\nprovider = \"{}\"\nclient_id = \"c\"\n\
             token_url = \"https://t.example/token\"\nscopes = [\"s\"]\n\
             device_code_url = \"https://t.example/device\"\n",
            match provider {
                ProviderKind::Office365 => "office365",
                ProviderKind::Gmail => "gmail",
                ProviderKind::Custom => "custom",
            }
        );
        let mut c = crate::config::Config::parse(&text, std::path::Path::new("t.toml"))
            .expect("test config");
        let mut a = c.accounts.remove(0);
        a.flow = flow;
        a.redirect_uri = redirect.map(str::to_owned);
        a
    }

    const LINUX_DESKTOP: Machine = Machine {
        desktop_os: false,
        interactive: true,
        display: true,
    };
    const LINUX_HEADLESS: Machine = Machine {
        desktop_os: false,
        interactive: true,
        display: false,
    };
    const WINDOWS_TERMINAL: Machine = Machine {
        desktop_os: true,
        interactive: true,
        display: false,
    };
    const WINDOWS_SCRIPT: Machine = Machine {
        desktop_os: true,
        interactive: false,
        display: false,
    };

    #[test]
    fn table() {
        use Interactive::{Browser, Device, Paste};
        use ProviderKind::{Custom, Office365};
        let rows: &[(
            Flow,
            ProviderKind,
            Option<Interactive>,
            Machine,
            Interactive,
        )] = &[
            // The machine decides when nothing else does.
            (Flow::Auto, Office365, None, LINUX_DESKTOP, Browser),
            (Flow::Auto, Office365, None, LINUX_HEADLESS, Device),
            (Flow::Auto, Office365, None, WINDOWS_TERMINAL, Browser),
            (Flow::Auto, Office365, None, WINDOWS_SCRIPT, Device),
            // A custom provider without authorize_url cannot use the browser.
            (Flow::Auto, Custom, None, LINUX_DESKTOP, Device),
            // An explicit flow in the config wins over the machine.
            (Flow::DeviceCode, Office365, None, LINUX_DESKTOP, Device),
            (
                Flow::AuthorizationCode,
                Office365,
                None,
                LINUX_HEADLESS,
                Browser,
            ),
            // The command line wins over both.
            (
                Flow::DeviceCode,
                Office365,
                Some(Browser),
                LINUX_HEADLESS,
                Browser,
            ),
            (
                Flow::AuthorizationCode,
                Office365,
                Some(Device),
                LINUX_DESKTOP,
                Device,
            ),
            (
                Flow::Auto,
                Office365,
                Some(Device),
                WINDOWS_TERMINAL,
                Device,
            ),
            // The paste: by name on the command line or in the config, never
            // by the machine alone (headless machines keep the device code).
            (Flow::Paste, Office365, None, LINUX_DESKTOP, Paste),
            (Flow::Paste, Office365, None, LINUX_HEADLESS, Paste),
            (Flow::Auto, Office365, Some(Paste), LINUX_HEADLESS, Paste),
            (
                Flow::DeviceCode,
                Office365,
                Some(Paste),
                WINDOWS_SCRIPT,
                Paste,
            ),
            (
                Flow::Paste,
                Office365,
                Some(Browser),
                LINUX_DESKTOP,
                Browser,
            ),
            (Flow::Paste, Office365, Some(Device), LINUX_HEADLESS, Device),
        ];
        for (i, (flow, provider, explicit, machine, want)) in rows.iter().enumerate() {
            let got = choose(&account(*flow, *provider), *explicit, *machine);
            assert_eq!(got.how, *want, "row {i}: {flow:?} {explicit:?} {machine:?}");
            assert!(!got.why.is_empty());
        }
    }

    #[test]
    fn a_redirect_uri_elsewhere_takes_the_paste_under_auto() {
        use Interactive::{Browser, Device, Paste};
        let native = Some("https://login.microsoftonline.com/common/oauth2/nativeclient");
        let local = Some("http://localhost:8400/cb");
        type Row<'a> = (
            Flow,
            Option<&'a str>,
            Option<Interactive>,
            Machine,
            Interactive,
        );
        let rows: &[Row] = &[
            (Flow::Auto, native, None, LINUX_DESKTOP, Paste),
            (Flow::Auto, native, None, LINUX_HEADLESS, Paste),
            (Flow::Auto, native, Some(Device), LINUX_DESKTOP, Device),
            (Flow::DeviceCode, native, None, LINUX_DESKTOP, Device),
            // A redirect URI on this machine changes nothing.
            (Flow::Auto, local, None, LINUX_DESKTOP, Browser),
            (Flow::Auto, local, None, LINUX_HEADLESS, Device),
        ];
        for (i, (flow, redirect, explicit, machine, want)) in rows.iter().enumerate() {
            let got = choose(
                &account_with(*flow, ProviderKind::Office365, *redirect),
                *explicit,
                *machine,
            );
            assert_eq!(got.how, *want, "row {i}");
        }
        let headless = choose(
            &account(Flow::Auto, ProviderKind::Office365),
            None,
            LINUX_HEADLESS,
        );
        assert!(headless.why.contains("--paste"), "{}", headless.why);
    }
}
