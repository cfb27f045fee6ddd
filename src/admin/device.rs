//! Device code sign-ins started from the page: each runs in a background
//! task (it polls for up to ~15 minutes) and leaves its progress in a panel
//! the page shows.

use parking_lot::Mutex;

use super::page::{DevicePanel, DeviceState};

/// At most this many panels are kept (running or finished); a finished one
/// gives way first.
pub(crate) const MAX_DEVICE_PANELS: usize = 8;

/// The panels, newest first.
#[derive(Default)]
pub(crate) struct Panels {
    panels: Mutex<Vec<DevicePanel>>,
}

impl Panels {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Vec<DevicePanel>> {
        self.panels.lock()
    }

    /// Starts a panel for `account`. `false`: one is already running for it,
    /// or every panel is taken by a running sign-in.
    pub(crate) fn begin(&self, account: &str) -> bool {
        let mut panels = self.lock();
        if panels
            .iter()
            .any(|p| p.account.eq_ignore_ascii_case(account) && running(&p.state))
        {
            return false;
        }
        panels.retain(|p| !p.account.eq_ignore_ascii_case(account));
        if panels.len() >= MAX_DEVICE_PANELS {
            let Some(finished) = panels.iter().rposition(|p| !running(&p.state)) else {
                return false;
            };
            panels.remove(finished);
        }
        panels.insert(
            0,
            DevicePanel {
                account: account.to_owned(),
                state: DeviceState::Starting,
            },
        );
        true
    }

    pub fn set(&self, account: &str, state: DeviceState) {
        if let Some(p) = self
            .lock()
            .iter_mut()
            .find(|p| p.account.eq_ignore_ascii_case(account))
        {
            p.state = state;
        }
    }

    pub fn snapshot(&self) -> Vec<DevicePanel> {
        self.lock().clone()
    }
}

fn running(state: &DeviceState) -> bool {
    matches!(state, DeviceState::Starting | DeviceState::Waiting { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_running_sign_in_per_account_and_a_bounded_list() {
        let panels = Panels::default();
        assert!(panels.begin("a@x.test"));
        assert!(!panels.begin("A@x.test"), "already running");
        panels.set("a@x.test", DeviceState::Failed("no".into()));
        assert!(panels.begin("a@x.test"), "a finished one may start again");
        assert_eq!(panels.snapshot().len(), 1);
        for i in 1..MAX_DEVICE_PANELS {
            assert!(panels.begin(&format!("{i}@x.test")));
        }
        assert!(!panels.begin("full@x.test"), "all running");
        panels.set("3@x.test", DeviceState::Done);
        assert!(panels.begin("full@x.test"));
        let snapshot = panels.snapshot();
        assert_eq!(snapshot.len(), MAX_DEVICE_PANELS);
        assert_eq!(snapshot[0].account, "full@x.test");
        assert!(!snapshot.iter().any(|p| p.account == "3@x.test"));
    }
}
