//! The Sync exchange and deferred work. A Sync sends the stored cursors
//! (every active group's last applied seq, and the inbox seq) and processes
//! the backlog the server pushes until `SyncCaughtUp`; afterwards the work
//! the entries queued ([`Action`]) runs.
//!
//! Invariants: a sync never waits more than [`SYNC_IDLE_TIMEOUT`] for an
//! event; its acks are flushed before it returns. Deferred work runs at
//! most [`MAX_ACTION_ROUNDS`] rounds per call (work may queue more work: a
//! commit retry processes events), and only a lost connection stops a round
//! early; any other failure of one action is logged and the rest still run.

use std::time::Duration;

use hush_proto::{client_frame, server_frame, v1};

use super::{Action, Client};
use crate::error::{ClientError, Result};
use crate::store::GroupStatus;

/// How long a sync may go without any event before it is abandoned.
const SYNC_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How many rounds of deferred work one call runs at most, so that a
/// misbehaving peer cannot keep the client in them.
const MAX_ACTION_ROUNDS: usize = 8;

impl Client {
    /// Sends a Sync with the stored cursors and processes the backlog until
    /// the server says it is caught up, then runs deferred work.
    pub async fn sync(&mut self) -> Result<()> {
        self.sync_backlog().await?;
        self.run_actions().await
    }

    /// Syncs without running deferred work: what was queued before, and
    /// what the backlog queues, stays queued for the caller's next round.
    pub(super) async fn sync_deferring_actions(&mut self) -> Result<()> {
        let saved = std::mem::take(&mut self.actions);
        let r = self.sync_backlog().await;
        let queued = std::mem::replace(&mut self.actions, saved);
        self.actions.extend(queued);
        r
    }

    /// The Sync exchange itself. `SyncStarted` may come as the Sync's
    /// response or as a push (request_id 0); an `Error` response aborts.
    async fn sync_backlog(&mut self) -> Result<()> {
        let cursors = self
            .db
            .groups()?
            .into_iter()
            .filter(|g| g.status == GroupStatus::Active)
            .map(|g| v1::Cursor {
                group_id: g.group_id,
                after_seq: g.last_seq,
            })
            .collect();
        let inbox_after = self.db.inbox_seq()?;
        self.caught_up = false;
        let (id, mut answer) = self
            .conn()?
            .start_request(client_frame::Body::Sync(v1::Sync {
                cursors,
                inbox_after,
            }))?;
        let r = async {
            let mut answered = false;
            while !self.caught_up {
                let p = tokio::select! {
                    a = &mut answer, if !answered => {
                        answered = true;
                        if let Ok(server_frame::Body::Error(e)) = a {
                            return Err(ClientError::from(e));
                        }
                        continue;
                    }
                    p = self.wait_event_within(SYNC_IDLE_TIMEOUT) => p?,
                };
                match p {
                    None => {
                        return Err(ClientError::Disconnected(
                            "sync: no event from the server in time".into(),
                        ))
                    }
                    Some(p) => self.process_pushed(p).await?,
                }
            }
            // An error answer may sit right behind the last event.
            if let Ok(server_frame::Body::Error(e)) = answer.try_recv() {
                return Err(ClientError::from(e));
            }
            Ok(())
        }
        .await;
        if let Some(conn) = self.conn.as_ref() {
            conn.forget(id);
        }
        r?;
        self.flush_acks()
    }

    /// Runs the deferred work, round after round, until none is left.
    pub(super) async fn run_actions(&mut self) -> Result<()> {
        for _ in 0..MAX_ACTION_ROUNDS {
            if self.actions.is_empty() {
                return Ok(());
            }
            let actions = std::mem::take(&mut self.actions);
            for a in actions {
                let r = match &a {
                    Action::CommitPending(gid) => self.commit_pending_if_any(gid).await,
                    Action::SendName(gid) => self.send_name(gid).await.map(|_| ()),
                    Action::CheckKeyPackages => self.maintain_key_packages().await,
                    Action::RefreshContacts => self.refresh_stale_contacts().await,
                };
                if let Err(e) = r {
                    if matches!(e, ClientError::Disconnected(_)) {
                        return Err(e);
                    }
                    tracing::warn!(action = ?a, error = %e, "deferred action failed");
                }
            }
        }
        Ok(())
    }
}
