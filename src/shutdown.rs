//! Graceful shutdown, one mechanism for every binary: [`Shutdown::on_signals`] turns SIGTERM or
//! SIGINT into one broadcast, and every part that must stop holds a [`Shutdown`] and asks it.
//!
//! The api stops accepting connections and lets requests in flight finish (up to
//! `SLUICE__API__SHUTDOWN_GRACE_SECS`); the worker stops reading, finishes the batch in hand,
//! commits, acknowledges and exits.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// A handle on the shutdown broadcast. Cheap to clone; every clone sees the same signal.
#[derive(Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// Sends the shutdown broadcast; dropping it does not.
pub struct Trigger {
    sender: watch::Sender<bool>,
}

impl Shutdown {
    /// A broadcast not yet sent, and the trigger that sends it.
    pub fn new() -> (Trigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (Trigger { sender }, Shutdown { receiver })
    }

    /// A broadcast sent on the first SIGTERM or SIGINT. Needs a Tokio runtime.
    pub fn on_signals() -> std::io::Result<Shutdown> {
        let (trigger, shutdown) = Shutdown::new();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("shutdown requested");
            trigger.fire();
        });
        Ok(shutdown)
    }

    /// True once shutdown has been asked for.
    pub fn is_requested(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Completes when shutdown is asked for (at once if it already was).
    pub async fn requested(&self) {
        let mut receiver = self.receiver.clone();
        // An error means the trigger is gone without firing: then shutdown never comes.
        if receiver.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.sender.send(true);
    }
}
