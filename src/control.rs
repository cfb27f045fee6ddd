//! Reloading the configuration of a running proxy: SIGHUP on Unix;
//! `xoauth2-proxy reload`, which asks through a Unix socket in `state_dir`
//! (`control.sock`, owner-only, so only the proxy's user can ask) and
//! prints the outcome; on Windows a user-defined control of the service
//! (`service::windows`).

#[cfg(unix)]
use std::path::Path;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;

/// One reload request, with where to send its outcome.
pub struct Request {
    pub reply: Option<oneshot::Sender<Result<(), String>>>,
}

/// Where reload requests come from, and how the configuration is read again.
pub struct Reloads {
    pub(crate) load: Box<dyn Fn() -> anyhow::Result<Config> + Send>,
    sender: mpsc::UnboundedSender<Request>,
    pub(crate) requests: mpsc::UnboundedReceiver<Request>,
}

impl Reloads {
    /// `load` reads the configuration again (from the same file, with the
    /// same command-line overrides).
    pub fn new(load: impl Fn() -> anyhow::Result<Config> + Send + 'static) -> Reloads {
        let (sender, requests) = mpsc::unbounded_channel();
        Reloads {
            load: Box::new(load),
            sender,
            requests,
        }
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

/// Turns SIGHUP and connections to the control socket into requests.
/// Without a usable socket path only SIGHUP works (logged).
#[cfg(unix)]
pub fn listen(state_dir: &Path, sender: mpsc::UnboundedSender<Request>) -> ControlSocket {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut read = BufReader::new(read.take(64));
                if read.read_line(&mut line).await.is_err() || line.trim() != "reload" {
                    let _ = write.write_all(b"error: unknown request\n").await;
                    return;
                }
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
            });
        }
    });
    ControlSocket { path: Some(path) }
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
