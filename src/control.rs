//! Requests to a running proxy. Reloading the configuration: SIGHUP on
//! Unix; `xoauth2-proxy reload`, which asks through the control channel and
//! prints the outcome; on Windows also a user-defined control of the service
//! (`service::windows`). An access token for another program
//! (`xoauth2-proxy token`) through the same channel: see [`token`] for its
//! framing.
//!
//! The control channel of the proxy that uses a `state_dir`: on Unix the
//! socket `state_dir/control.sock` (owner-only, so only the proxy's user can
//! ask); on Windows the named pipe [`pipe_name`]`(state_dir)`, created first
//! (a process that made the name before is refused, not joined), local
//! clients only, and with the DACL of a private file (SYSTEM,
//! Administrators and the proxy's user: for the service, only
//! administrators). Both are served by [`serve_connection`].
//!
//! The channel's first line says what is asked: `reload` (the original
//! request, answered `ok` or `error: …` and closed), or one JSON object
//! (a [`token`] request, answered with one JSON line and closed).

pub mod token;

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;

/// One reload request, with where to send its outcome.
pub struct Request {
    pub reply: Option<oneshot::Sender<Result<(), String>>>,
}

/// Where reload requests come from, and how the configuration is read again;
/// and the token requests of the control socket, which the running proxy
/// answers through its login gate.
pub struct Reloads {
    pub(crate) load: Box<dyn Fn() -> anyhow::Result<Config> + Send>,
    sender: mpsc::UnboundedSender<Request>,
    pub(crate) requests: mpsc::UnboundedReceiver<Request>,
    token_sender: mpsc::Sender<token::TokenRequest>,
    pub(crate) token_requests: mpsc::Receiver<token::TokenRequest>,
}

impl Reloads {
    /// `load` reads the configuration again (from the same file, with the
    /// same command-line overrides).
    pub fn new(load: impl Fn() -> anyhow::Result<Config> + Send + 'static) -> Reloads {
        let (sender, requests) = mpsc::unbounded_channel();
        let (token_sender, token_requests) = mpsc::channel(token::MAX_PENDING);
        Reloads {
            load: Box::new(load),
            sender,
            requests,
            token_sender,
            token_requests,
        }
    }

    /// Where the control socket hands token requests to the running proxy.
    pub fn token_sender(&self) -> mpsc::Sender<token::TokenRequest> {
        self.token_sender.clone()
    }

    /// For other sources of requests (the Windows service control handler).
    pub fn sender(&self) -> mpsc::UnboundedSender<Request> {
        self.sender.clone()
    }
}

/// The control socket of the proxy that uses `state_dir` (Unix; Windows
/// has [`pipe_name`]).
#[cfg(unix)]
pub(crate) fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Turns SIGHUP and connections to the control socket into requests:
/// reloads to `sender`, tokens to `tokens`. Without a usable socket path
/// only SIGHUP works (logged).
#[cfg(unix)]
pub fn listen(
    state_dir: &Path,
    sender: mpsc::UnboundedSender<Request>,
    tokens: mpsc::Sender<token::TokenRequest>,
) -> ControlSocket {
    use tokio::signal::unix::{SignalKind, signal};

    if let Ok(mut hup) = signal(SignalKind::hangup()) {
        let sender = sender.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                if sender.send(Request { reply: None }).is_err() {
                    return;
                }
            }
        });
    }
    let path = socket_path(state_dir);
    let bound = (|| -> std::io::Result<tokio::net::UnixListener> {
        use std::os::unix::fs::PermissionsExt;
        crate::fs_secure::private_dir(state_dir)?;
        // A socket left by a proxy that did not stop cleanly.
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(listener)
    })();
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e,
                "no control socket: `xoauth2-proxy reload` will not reach this proxy (SIGHUP still reloads)");
            return ControlSocket::default();
        }
    };
    let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            // Past the cap a connection waits here, unread, for a free place.
            let Ok(place) = connections.clone().acquire_owned().await else {
                return;
            };
            // The local user at the other end, for the login throttle.
            let client = stream.peer_cred().ok().map(|c| Client::Uid(c.uid()));
            let (sender, tokens) = (sender.clone(), tokens.clone());
            tokio::spawn(async move {
                let _place = place;
                serve_connection(stream, client, sender, tokens).await;
            });
        }
    });
    ControlSocket {
        path: Some(path),
        task: Some(task.abort_handle()),
    }
}

/// Control connections served at once; more wait to be read. Only the
/// proxy's user can connect, so this only bounds a runaway script.
const MAX_CONNECTIONS: usize = 16;

/// Time a control client has to send its request line, so a connection
/// that sends nothing does not hold one of [`MAX_CONNECTIONS`].
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Who is at the other end of a control connection, as the OS tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The socket peer's user id (Unix).
    Uid(u32),
    /// The pipe client's process id (Windows): the proxy looks its user up.
    Pid(u32),
}

/// One control connection, on the Unix socket or a Windows pipe: reads the
/// first line (at most [`token::MAX_REQUEST_BYTES`]) and answers it.
pub(crate) async fn serve_connection<S: AsyncRead + AsyncWrite>(
    stream: S,
    client: Option<Client>,
    sender: mpsc::UnboundedSender<Request>,
    tokens: mpsc::Sender<token::TokenRequest>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = tokio::io::split(stream);
    // Zeroized when dropped: a token request carries a password.
    let mut line = zeroize::Zeroizing::new(Vec::new());
    let mut read = BufReader::new(read.take(token::MAX_REQUEST_BYTES + 1));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, read.read_until(b'\n', &mut line)).await;
    if !matches!(read, Ok(Ok(_))) {
        let _ = write.write_all(b"error: no request\n").await;
        return;
    }
    if line.trim_ascii() == b"reload" {
        let (reply, outcome) = oneshot::channel();
        if sender.send(Request { reply: Some(reply) }).is_err() {
            return;
        }
        let answer = match outcome.await {
            Ok(Ok(())) => "ok\n".to_owned(),
            Ok(Err(e)) => format!("error: {}\n", e.replace('\n', " ")),
            Err(_) => "error: the proxy is stopping\n".to_owned(),
        };
        let _ = write.write_all(answer.as_bytes()).await;
        let _ = write.flush().await;
        return;
    }
    if line.first() == Some(&b'{') {
        let answer = token::answer(&line, client, &tokens).await;
        let _ = write.write_all(&answer).await;
        let _ = write.flush().await;
        return;
    }
    let _ = write.write_all(b"error: unknown request\n").await;
    let _ = write.flush().await;
}

/// Stops serving the control channel, and removes the Unix socket, when
/// the proxy stops.
#[derive(Default)]
pub struct ControlSocket {
    path: Option<PathBuf>,
    task: Option<tokio::task::AbortHandle>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The Windows named pipe of the proxy that uses `state_dir`: a hash of the
/// folder (pipe names are flat), so two proxies with their own folders have
/// their own pipes, and `token`/`reload` find the one of their
/// configuration. Windows paths ignore case and either slash, so the hash
/// does too.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn pipe_name(state_dir: &Path) -> String {
    use sha2::Digest;
    let text = state_dir
        .to_string_lossy()
        .to_lowercase()
        .replace('/', "\\");
    let digest = sha2::Sha256::digest(text.trim_end_matches('\\').as_bytes());
    let hash: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!(r"\\.\pipe\xoauth2-proxy-{hash}")
}

#[cfg(windows)]
mod pipe;
#[cfg(windows)]
pub use pipe::listen;

/// The control channel of the proxy using `state_dir`, for a client.
#[cfg(unix)]
pub(crate) async fn connect(state_dir: &Path) -> Result<tokio::net::UnixStream, String> {
    let path = socket_path(state_dir);
    tokio::net::UnixStream::connect(&path)
        .await
        .map_err(|e| format!("no proxy answers at {} ({e})", path.display()))
}

#[cfg(windows)]
pub(crate) use pipe::connect;

/// `xoauth2-proxy reload`: asks the proxy using `state_dir` to reload and
/// returns its answer.
#[cfg(any(unix, windows))]
pub async fn request_reload(state_dir: &Path) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect(state_dir)
        .await
        .map_err(|e| anyhow::anyhow!("{e}: is it running with this configuration?"))?;
    stream.write_all(b"reload\n").await?;
    stream.flush().await?;
    let mut answer = String::new();
    stream.take(4096).read_to_string(&mut answer).await?;
    match answer.trim_end().strip_prefix("error: ") {
        None if answer.trim_end() == "ok" => Ok(()),
        None => anyhow::bail!("unexpected answer from the proxy: {answer:?}"),
        Some(e) => anyhow::bail!("the proxy kept its configuration: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_name_is_one_per_state_folder_whatever_its_spelling() {
        let a = pipe_name(Path::new(r"C:\ProgramData\xoauth2-proxy"));
        assert!(a.starts_with(r"\\.\pipe\xoauth2-proxy-"), "{a}");
        assert_eq!(a.len(), r"\\.\pipe\xoauth2-proxy-".len() + 24);
        for same in [
            r"c:\programdata\XOAUTH2-PROXY",
            r"C:\ProgramData\xoauth2-proxy\",
            "C:/ProgramData/xoauth2-proxy",
        ] {
            assert_eq!(pipe_name(Path::new(same)), a, "{same}");
        }
        assert_ne!(
            pipe_name(Path::new(r"C:\Users\a\AppData\Local\xoauth2-proxy")),
            a
        );
    }
}
