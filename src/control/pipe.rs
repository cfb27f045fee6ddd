//! Windows: the control channel as a named pipe ([`super::pipe_name`]).
//!
//! Each instance is created with the DACL of a private file
//! (`fs_secure::private_descriptor`: SYSTEM, Administrators and the proxy's
//! user), local clients only (`PIPE_REJECT_REMOTE_CLIENTS`), and the first
//! with `FILE_FLAG_FIRST_PIPE_INSTANCE`, so a process that created the name
//! before the proxy (to read the passwords sent to it) makes the proxy
//! refuse the name instead of sharing it. One instance waits for a client at
//! a time; a served client's instance is handed to its task and a new one
//! made.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
};
use tokio::sync::mpsc;
use windows_sys::Win32::Foundation::ERROR_PIPE_BUSY;
use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
use windows_sys::Win32::System::Pipes::GetNamedPipeClientProcessId;

use super::{Client, ControlSocket, MAX_CONNECTIONS, Request, serve_connection, token};

/// How long a client waits while every instance is busy (each serves one
/// short request, so this is a burst of [`MAX_CONNECTIONS`] clients).
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// The pause between two tries of a busy pipe.
const BUSY_RETRY: Duration = Duration::from_millis(50);

/// One instance of the pipe `name`, restricted as the module says.
fn instance(name: &str, first: bool) -> std::io::Result<NamedPipeServer> {
    let descriptor = crate::fs_secure::private_descriptor()?;
    let mut attributes = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: descriptor.as_ptr(),
        bInheritHandle: 0,
    };
    // SAFETY: `attributes` is a valid SECURITY_ATTRIBUTES whose descriptor
    // (`descriptor`) lives until after the call, which copies it.
    unsafe {
        ServerOptions::new()
            .first_pipe_instance(first)
            .reject_remote_clients(true)
            .max_instances(MAX_CONNECTIONS + 1)
            .create_with_security_attributes_raw(name, (&raw mut attributes).cast())
    }
}

/// The process at the other end of a connected instance.
fn client_of(server: &NamedPipeServer) -> Option<Client> {
    use std::os::windows::io::AsRawHandle;
    let mut pid = 0u32;
    // SAFETY: a connected pipe handle owned by `server`; `pid` is written.
    let ok = unsafe { GetNamedPipeClientProcessId(server.as_raw_handle(), &mut pid) };
    (ok != 0 && pid != 0).then_some(Client::Pid(pid))
}

/// Serves the control pipe of the proxy using `state_dir`: reloads to
/// `sender`, tokens to `tokens`. Without the pipe (the name is taken, or
/// Windows refuses it) this is logged and nothing else changes: the
/// service still reloads through the Service Control Manager.
pub fn listen(
    state_dir: &Path,
    sender: mpsc::UnboundedSender<Request>,
    tokens: mpsc::Sender<token::TokenRequest>,
) -> ControlSocket {
    let name = super::pipe_name(state_dir);
    let mut server = match instance(&name, true) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(pipe = %name, error = %e,
                "no control pipe (another process holds its name?): `xoauth2-proxy token` and \
                 `reload` will not reach this proxy");
            return ControlSocket::default();
        }
    };
    tracing::info!(pipe = %name, "control pipe ready (`xoauth2-proxy token`, `reload`)");
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            // Past the cap no instance listens: clients wait (`connect`).
            let Ok(place) = connections.clone().acquire_owned().await else {
                return;
            };
            let connected = server.connect().await;
            let next = match instance(&name, false) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(pipe = %name, error = %e,
                        "the control pipe cannot take more clients");
                    return;
                }
            };
            let connected = match connected {
                Ok(()) => std::mem::replace(&mut server, next),
                Err(e) => {
                    // A client that came and went: this instance is spent.
                    tracing::debug!(error = %e, "control pipe: a client left before its request");
                    server = next;
                    continue;
                }
            };
            let client = client_of(&connected);
            let (sender, tokens) = (sender.clone(), tokens.clone());
            tokio::spawn(async move {
                let _place = place;
                serve_connection(connected, client, sender, tokens).await;
            });
        }
    });
    ControlSocket {
        path: None,
        task: Some(task.abort_handle()),
    }
}

/// The control pipe of the proxy using `state_dir`, for a client: waits up
/// to [`BUSY_WAIT`] while every instance serves another client.
pub(crate) async fn connect(state_dir: &Path) -> Result<NamedPipeClient, String> {
    let name = super::pipe_name(state_dir);
    let deadline = tokio::time::Instant::now() + BUSY_WAIT;
    loop {
        match ClientOptions::new().open(&name) {
            Ok(client) => return Ok(client),
            Err(e)
                if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(BUSY_RETRY).await;
            }
            Err(e) => {
                return Err(format!(
                    "no proxy answers on the pipe {name} for {} ({e})",
                    state_dir.display()
                ));
            }
        }
    }
}
