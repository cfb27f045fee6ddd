//! The Windows Event Log (Application log, source `xoauth2-proxy`): where a
//! Windows service, which has no desktop, puts its notifications and its
//! start, stop and errors.
//!
//! Written with `RegisterEventSourceW`/`ReportEventW` of windows-sys (the
//! crate and version the proxy already uses) rather than the `eventlog`
//! crate: that one is a backend of the `log` facade (the proxy logs through
//! `tracing`) and wants its own message resource compiled in; five API
//! calls do the job here. The source's registry key (`register`, by
//! `service install`; `unregister`, by `service uninstall`) names a message
//! file whose every message is the inserted text (`%1`), the one .NET
//! Framework 4 ships for exactly this; without it the Event Viewer still
//! shows the text, after a line saying the description is missing.

/// The event source, as the Event Viewer shows it.
pub const SOURCE: &str = "xoauth2-proxy";

/// The registry key of the source, under `HKEY_LOCAL_MACHINE`.
pub fn source_key() -> String {
    format!(r"SYSTEM\CurrentControlSet\Services\EventLog\Application\{SOURCE}")
}

/// The message file: every event id is `%1`, the text we report.
pub const MESSAGE_FILE: &str =
    r"%SystemRoot%\Microsoft.NET\Framework64\v4.0.30319\EventLogMessages.dll";

/// Error, warning and information (`EVENTLOG_*_TYPE`), the types we report.
pub const TYPES_SUPPORTED: u32 = 0x1 | 0x2 | 0x4;

/// How bad an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Information,
    Warning,
    Error,
}

impl Level {
    /// `EVENTLOG_INFORMATION_TYPE`, `EVENTLOG_WARNING_TYPE`, `EVENTLOG_ERROR_TYPE`.
    pub fn event_type(self) -> u16 {
        match self {
            Level::Information => 0x4,
            Level::Warning => 0x2,
            Level::Error => 0x1,
        }
    }

    /// The event id: one per level, so a filter in the Event Viewer can
    /// pick them.
    pub fn event_id(self) -> u32 {
        match self {
            Level::Information => 1000,
            Level::Warning => 2000,
            Level::Error => 3000,
        }
    }
}

/// A registry value of the source's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `REG_EXPAND_SZ`
    ExpandString(String),
    /// `REG_DWORD`
    Dword(u32),
}

/// The values `register` writes.
pub fn registration_values() -> Vec<(&'static str, Value)> {
    vec![
        ("EventMessageFile", Value::ExpandString(MESSAGE_FILE.into())),
        ("TypesSupported", Value::Dword(TYPES_SUPPORTED)),
    ]
}

/// A UTF-16 string with its terminating NUL; NULs inside (never in our
/// texts) are dropped so the text is not cut short.
pub fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16()
        .filter(|&c| c != 0)
        .chain(std::iter::once(0))
        .collect()
}

/// What one event says: the longest text `ReportEventW` takes is 31,839
/// characters; ours are a line, capped well below.
pub fn entry_text(text: &str) -> String {
    const MAX_CHARS: usize = 4_000;
    text.chars().take(MAX_CHARS).collect()
}

#[cfg(windows)]
mod os {
    use super::*;
    use windows_sys::Win32::Foundation::ERROR_SUCCESS;
    use windows_sys::Win32::System::EventLog::{
        DeregisterEventSource, RegisterEventSourceW, ReportEventW,
    };
    use windows_sys::Win32::System::Registry::{
        HKEY, HKEY_LOCAL_MACHINE, KEY_SET_VALUE, REG_DWORD, REG_EXPAND_SZ, REG_OPTION_NON_VOLATILE,
        RegCloseKey, RegCreateKeyExW, RegDeleteKeyW, RegSetValueExW,
    };

    /// Registers the source (administrators only; `service install`).
    pub fn register() -> std::io::Result<()> {
        let key_name = wide(&source_key());
        let mut key: HKEY = std::ptr::null_mut();
        // SAFETY: valid NUL-terminated key name, out pointer to a local.
        let status = unsafe {
            RegCreateKeyExW(
                HKEY_LOCAL_MACHINE,
                key_name.as_ptr(),
                0,
                std::ptr::null(),
                REG_OPTION_NON_VOLATILE,
                KEY_SET_VALUE,
                std::ptr::null(),
                &mut key,
                std::ptr::null_mut(),
            )
        };
        if status != ERROR_SUCCESS {
            return Err(std::io::Error::from_raw_os_error(status as i32));
        }
        let mut result = Ok(());
        for (name, value) in registration_values() {
            let name = wide(name);
            let (kind, bytes): (u32, Vec<u8>) = match value {
                Value::ExpandString(s) => (
                    REG_EXPAND_SZ,
                    wide(&s).iter().flat_map(|c| c.to_le_bytes()).collect(),
                ),
                Value::Dword(d) => (REG_DWORD, d.to_le_bytes().to_vec()),
            };
            // SAFETY: an open key, a NUL-terminated name, `bytes` as long as said.
            let status = unsafe {
                RegSetValueExW(
                    key,
                    name.as_ptr(),
                    0,
                    kind,
                    bytes.as_ptr(),
                    bytes.len() as u32,
                )
            };
            if status != ERROR_SUCCESS {
                result = Err(std::io::Error::from_raw_os_error(status as i32));
                break;
            }
        }
        // SAFETY: the key opened above.
        unsafe { RegCloseKey(key) };
        result
    }

    /// Removes the source (`service uninstall`); gone already is fine.
    pub fn unregister() -> std::io::Result<()> {
        let key_name = wide(&source_key());
        // SAFETY: valid NUL-terminated key name.
        let status = unsafe { RegDeleteKeyW(HKEY_LOCAL_MACHINE, key_name.as_ptr()) };
        const ERROR_FILE_NOT_FOUND: u32 = 2;
        match status {
            ERROR_SUCCESS | ERROR_FILE_NOT_FOUND => Ok(()),
            e => Err(std::io::Error::from_raw_os_error(e as i32)),
        }
    }

    /// Writes one entry. A failure (no source registered, no right) is a
    /// debug line: the log file has the same text.
    pub fn report(level: Level, text: &str) {
        let source = wide(SOURCE);
        // SAFETY: local machine (null), a NUL-terminated source name.
        let handle = unsafe { RegisterEventSourceW(std::ptr::null(), source.as_ptr()) };
        if handle.is_null() {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot open the Event Log");
            return;
        }
        let text = wide(&entry_text(text));
        let strings = [text.as_ptr()];
        // SAFETY: an open event source; one NUL-terminated string; no SID, no data.
        let ok = unsafe {
            ReportEventW(
                handle,
                level.event_type(),
                0,
                level.event_id(),
                std::ptr::null_mut(),
                1,
                0,
                strings.as_ptr(),
                std::ptr::null(),
            )
        };
        if ok == 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot write to the Event Log");
        }
        // SAFETY: the handle opened above.
        unsafe { DeregisterEventSource(handle) };
    }
}

#[cfg(windows)]
pub use os::{register, report, unregister};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_is_registered_under_the_application_log() {
        assert_eq!(
            source_key(),
            r"SYSTEM\CurrentControlSet\Services\EventLog\Application\xoauth2-proxy"
        );
        let values = registration_values();
        assert_eq!(
            values,
            [
                ("EventMessageFile", Value::ExpandString(MESSAGE_FILE.into())),
                ("TypesSupported", Value::Dword(7)),
            ]
        );
        assert!(MESSAGE_FILE.ends_with("EventLogMessages.dll"));
    }

    #[test]
    fn levels_map_to_event_types_and_ids() {
        for (level, kind, id) in [
            (Level::Error, 0x1, 3000),
            (Level::Warning, 0x2, 2000),
            (Level::Information, 0x4, 1000),
        ] {
            assert_eq!(level.event_type(), kind);
            assert_eq!(level.event_id(), id);
            assert_ne!(TYPES_SUPPORTED & u32::from(kind), 0);
        }
    }

    #[test]
    fn texts_are_nul_terminated_wide_strings_and_capped() {
        assert_eq!(wide("ab"), [b'a' as u16, b'b' as u16, 0]);
        assert_eq!(wide("a\0b"), [b'a' as u16, b'b' as u16, 0]);
        assert_eq!(wide("é").len(), 2);
        assert_eq!(entry_text(&"x".repeat(10_000)).chars().count(), 4_000);
        assert_eq!(entry_text("short"), "short");
    }
}
