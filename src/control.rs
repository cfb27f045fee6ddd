//! Requests to a running proxy. Reloading the configuration: SIGHUP on
//! Unix; `xoauth2-proxy reload`, which asks through a Unix socket in
//! `state_dir` (`control.sock`, owner-only, so only the proxy's user can
//! ask) and prints the outcome; on Windows a user-defined control of the
//! service (`service::windows`). An access token for another program
//! (`xoauth2-proxy token`) through the same socket: see [`token`] for its
//! framing.
//!
//! The socket's first line says what is asked: `reload` (the original
//! request, answered `ok` or `error: …` and closed), or one JSON object
//! (a [`token`] request, answered with one JSON line and closed).

pub mod token;

#[cfg(unix)]
use std::path::Path;
use std::path::PathBuf;

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

/// The control socket of the proxy that uses `state_dir` (Unix only: a
/// Windows service is reloaded through the Service Control Manager).
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
            return ControlSocket { path: None };
        }
    };
    let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            // Past the cap a connection waits here, unread, for a free place.
            let Ok(place) = connections.clone().acquire_owned().await else {
                return;
            };
            let (sender, tokens) = (sender.clone(), tokens.clone());
            tokio::spawn(async move {
                let _place = place;
                serve_connection(stream, sender, tokens).await;
            });
        }
    });
    ControlSocket { path: Some(path) }
}

/// Control connections served at once; more wait to be read. Only the
/// proxy's user can connect, so this only bounds a runaway script.
#[cfg(unix)]
const MAX_CONNECTIONS: usize = 16;

/// Time a control client has to send its request line, so a connection
/// that sends nothing does not hold one of [`MAX_CONNECTIONS`].
#[cfg(unix)]
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One control connection: reads the first line (at most
/// [`token::MAX_REQUEST_BYTES`]) and answers it.
#[cfg(unix)]
async fn serve_connection(
    stream: tokio::net::UnixStream,
    sender: mpsc::UnboundedSender<Request>,
    tokens: mpsc::Sender<token::TokenRequest>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    // The local user at the other end, for the login throttle.
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
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
        return;
    }
    if line.first() == Some(&b'{') {
        let answer = token::answer(&line, uid, &tokens).await;
        let _ = write.write_all(&answer).await;
        return;
    }
    let _ = write.write_all(b"error: unknown request\n").await;
}

/// Removes the control socket when the proxy stops.
pub struct ControlSocket {
    path: Option<PathBuf>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `xoauth2-proxy reload`: asks the proxy using `state_dir` to reload and
/// returns its answer.
#[cfg(unix)]
pub async fn request_reload(state_dir: &Path) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = socket_path(state_dir);
    let mut stream = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
        anyhow::anyhow!(
            "no proxy answers at {} ({e}): is it running with this configuration?",
            path.display()
        )
    })?;
    stream.write_all(b"reload\n").await?;
    let mut answer = String::new();
    stream.take(4096).read_to_string(&mut answer).await?;
    match answer.trim_end().strip_prefix("error: ") {
        None if answer.trim_end() == "ok" => Ok(()),
        None => anyhow::bail!("unexpected answer from the proxy: {answer:?}"),
        Some(e) => anyhow::bail!("the proxy kept its configuration: {e}"),
    }
}
