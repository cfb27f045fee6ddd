//! Windows' proxy settings, read from the registry: the current user's
//! Internet settings (what a per-user run and the browsers use), then
//! WinHTTP's (`netsh winhttp set proxy`; what a service sees).

use windows_sys::Win32::Foundation::ERROR_SUCCESS;
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE, RRF_RT_REG_BINARY, RRF_RT_REG_DWORD,
    RRF_RT_REG_SZ, RegGetValueW,
};

use super::{SystemProxy, parse_list, pick_server, winhttp_settings};

const INTERNET_SETTINGS: &str = r"Software\Microsoft\Windows\CurrentVersion\Internet Settings";
const WINHTTP_KEY: &str =
    r"SOFTWARE\Microsoft\Windows\CurrentVersion\Internet Settings\Connections";
/// The largest registry value read: a proxy list and its exceptions are
/// a few hundred bytes.
const MAX_VALUE: u32 = 64 * 1024;

pub(super) fn system_proxy() -> Option<SystemProxy> {
    user_settings().or_else(winhttp)
}

fn user_settings() -> Option<SystemProxy> {
    let enabled = read(
        HKEY_CURRENT_USER,
        INTERNET_SETTINGS,
        "ProxyEnable",
        RRF_RT_REG_DWORD,
    )?;
    if enabled.iter().all(|b| *b == 0) {
        return None;
    }
    let server = read_string(HKEY_CURRENT_USER, INTERNET_SETTINGS, "ProxyServer")?;
    let bypass =
        read_string(HKEY_CURRENT_USER, INTERNET_SETTINGS, "ProxyOverride").unwrap_or_default();
    found(&server, &bypass, "the Internet settings")
}

fn winhttp() -> Option<SystemProxy> {
    let blob = read(
        HKEY_LOCAL_MACHINE,
        WINHTTP_KEY,
        "WinHttpSettings",
        RRF_RT_REG_BINARY,
    )?;
    let (server, bypass) = winhttp_settings(&blob)?;
    found(&server, &bypass, "WinHTTP")
}

fn found(server: &str, bypass: &str, source: &'static str) -> Option<SystemProxy> {
    let proxy = match pick_server(server) {
        Some(Ok(proxy)) => proxy,
        Some(Err(e)) => {
            tracing::warn!("the proxy of {source} is not used: {e}");
            return None;
        }
        None => return None,
    };
    Some(SystemProxy {
        proxy: Some(proxy),
        no_proxy: parse_list(bypass, ';'),
        source,
    })
}

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(std::iter::once(0)).collect()
}

fn read_string(root: HKEY, key: &str, name: &str) -> Option<String> {
    let bytes = read(root, key, name, RRF_RT_REG_SZ)?;
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

fn read(root: HKEY, key: &str, name: &str, kind: u32) -> Option<Vec<u8>> {
    let (key, name) = (wide(key), wide(name));
    let mut size: u32 = 0;
    // SAFETY: the strings are NUL-terminated UTF-16 that outlive the call;
    // a null data pointer asks for the size only.
    let status = unsafe {
        RegGetValueW(
            root,
            key.as_ptr(),
            name.as_ptr(),
            kind,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut size,
        )
    };
    if status != ERROR_SUCCESS || size == 0 || size > MAX_VALUE {
        return None;
    }
    let mut data = vec![0u8; size as usize];
    // SAFETY: `data` has `size` bytes, which RegGetValueW writes at most.
    let status = unsafe {
        RegGetValueW(
            root,
            key.as_ptr(),
            name.as_ptr(),
            kind,
            std::ptr::null_mut(),
            data.as_mut_ptr().cast(),
            &mut size,
        )
    };
    if status != ERROR_SUCCESS {
        return None;
    }
    data.truncate(size as usize);
    Some(data)
}
