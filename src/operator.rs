//! What operators ask of a service's node set through the admin API: pin it (to the current
//! set or an earlier one from its history), unpin it, confirm or refuse a held update. The
//! requests go to the discovery task (`publisher`), the one writer of every service's state,
//! and each gets an answer back.

use std::net::SocketAddr;

use tokio::sync::{mpsc, oneshot};

/// An operator action on one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Route only to the set of history `version` (`None`: the set in use now) until
    /// unpinned; registry updates are read and shown, never applied.
    Pin(Option<u64>),
    /// Back to the registry: its newest answer goes through the usual guard.
    Unpin,
    /// Apply the held update now.
    Confirm,
    /// Discard the held update until the registry answers something else.
    Refuse,
}

impl Action {
    /// The label logs and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pin(_) => "pin",
            Action::Unpin => "unpin",
            Action::Confirm => "confirm",
            Action::Refuse => "reject",
        }
    }
}

/// Why an action could not be done.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    /// No such service.
    #[error("no service {0:?}")]
    UnknownService(String),
    /// The action does not fit the service's state (nothing held, not pinned, no set yet, a
    /// version no longer kept).
    #[error("{0}")]
    Conflict(String),
    /// The discovery task has stopped (the process is stopping).
    #[error("the discovery task has stopped")]
    Stopped,
}

/// One request to the discovery task.
#[derive(Debug)]
pub struct Request {
    /// The service.
    pub service: String,
    /// What to do.
    pub action: Action,
    /// Who asked (the admin peer), for the log and the history.
    pub by: SocketAddr,
    /// Where the answer goes: what was done, in words.
    pub reply: oneshot::Sender<Result<String, ActionError>>,
}

/// The admin API's side of the channel.
#[derive(Debug, Clone)]
pub struct Operator {
    tx: mpsc::Sender<Request>,
}

impl Operator {
    /// A channel between the admin API and the discovery task.
    pub fn channel() -> (Operator, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(64);
        (Operator { tx }, rx)
    }

    /// Asks for `action` on `service` on behalf of `by`, and waits for the answer.
    ///
    /// Errors: [`ActionError`] from the discovery task, or `Stopped`.
    pub async fn ask(
        &self,
        service: &str,
        action: Action,
        by: SocketAddr,
    ) -> Result<String, ActionError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            service: service.to_string(),
            action,
            by,
            reply,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| ActionError::Stopped)?;
        answer.await.map_err(|_| ActionError::Stopped)?
    }
}
