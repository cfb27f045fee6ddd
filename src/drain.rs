//! Graceful shutdown: every client connection runs as a tracked task, so a
//! stopping proxy can wait a bounded time for sessions to end on their own
//! and then close the rest itself, instead of the process being killed with
//! writes in flight.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// The client connections of one proxy (sessions and refusals).
pub struct Sessions {
    open: watch::Sender<usize>,
    close: watch::Sender<bool>,
}

/// Counts a task as open until it is dropped.
struct Open(Arc<Sessions>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Connections open when the drain began.
    pub open_at_start: usize,
    /// Connections still open at the end of the grace time, closed by the proxy.
    pub closed: usize,
}

impl Sessions {
    pub fn new() -> Arc<Sessions> {
        Arc::new(Sessions {
            open: watch::channel(0).0,
            close: watch::channel(false).0,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        *self.open.borrow()
    }

    /// Runs one connection as a counted task. When [`Sessions::drain`]
    /// gives up waiting, the task is dropped: its sockets close, and work it
    /// started elsewhere (a token refresh runs in its own task) finishes.
    pub fn spawn(self: &Arc<Self>, connection: impl Future<Output = ()> + Send + 'static) {
        self.open.send_modify(|n| *n += 1);
        let open = Open(self.clone());
        let mut close = self.close.subscribe();
        tokio::spawn(async move {
            let _open = open;
            tokio::select! {
                _ = connection => {}
                _ = close.wait_for(|close| *close) => {
                    tracing::debug!("connection closed by the shutdown");
                }
            }
        });
    }

    /// Waits up to `grace` for the open connections to end, then closes the
    /// rest and waits for their tasks to be gone.
    pub(crate) async fn drain(&self, grace: Duration) -> Drained {
        let open_at_start = self.open();
        let mut open = self.open.subscribe();
        let ended = tokio::time::timeout(grace, open.wait_for(|n| *n == 0))
            .await
            .is_ok();
        let closed = if ended { 0 } else { self.open() };
        if closed > 0 {
            self.close.send_replace(true);
            // A dropped task ends at its next poll; this only waits for the
            // runtime to get to them.
            let _ = tokio::time::timeout(Duration::from_secs(5), open.wait_for(|n| *n == 0)).await;
        }
        Drained {
            open_at_start,
            closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finished_sessions_need_no_closing() {
        let sessions = Sessions::new();
        sessions.spawn(tokio::time::sleep(Duration::from_millis(20)));
        assert_eq!(sessions.open(), 1);
        let drained = sessions.drain(Duration::from_secs(5)).await;
        assert_eq!(
            drained,
            Drained {
                open_at_start: 1,
                closed: 0
            }
        );
        assert_eq!(sessions.open(), 0);
    }

    #[tokio::test]
    async fn sessions_past_the_grace_are_closed() {
        let sessions = Sessions::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        sessions.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        let started = std::time::Instant::now();
        let drained = sessions.drain(Duration::from_millis(100)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(drained.closed, 1);
        assert_eq!(sessions.open(), 0);
        // The session's future was dropped (and with it what it owned).
        assert!(rx.await.is_err());
    }
}
