//! Sending application messages: text, and the group name a new member is
//! told. A send survives what a cluster does to a connection: a transient
//! failure (the connection dropped, the node went away, the group is moving
//! between nodes) is retried after reconnecting, with backoff from
//! [`SEND_BACKOFF_FIRST`] to [`SEND_BACKOFF_MAX`], at most
//! `transient_retries` times; a STALE_EPOCH answer goes through the shared
//! catch-up in `commit.rs` and the message is encrypted again on the new
//! epoch.
//!
//! An overloaded node refuses a send early (RATE_LIMITED or UNAVAILABLE)
//! with a `retry_after_ms` hint: the retry waits at least that long.
//!
//! Invariants: every retry of one message carries the same `client_msg_id`,
//! so a message the server took but could not acknowledge is answered with
//! its original seq instead of being stored twice. A message is logged (and
//! its seq recorded as this device's own) only once the server accepted it.

use std::time::Duration;

use hush_proto::{client_frame, v1, ErrorCode};

use super::commit::{removed_from_group, AfterCatchUp, Intent};
use super::{log_row, Client, MAX_COMMIT_ATTEMPTS, SEND_BACKOFF_FIRST, SEND_BACKOFF_MAX};
use crate::backoff::Backoff;
use crate::envelope::Envelope;
use crate::error::{ClientError, Result};
use crate::mls;
use crate::store::{now_ms, GroupStatus};

impl Client {
    /// Sends a text message; returns its seq.
    pub async fn send_text(&mut self, group: &str, text: &str) -> Result<u64> {
        if text.is_empty() {
            return Err(ClientError::InvalidArgument("empty message".into()));
        }
        let g = self.active_group(group)?;
        self.send_envelope(
            &g.group_id,
            &Envelope::Text {
                body: text.to_string(),
                ts: now_ms(),
            },
        )
        .await
    }

    /// Tells the members a group's name, if it has one and this device is
    /// still in it. Returns the message's seq.
    pub(super) async fn send_name(&mut self, gid: &[u8]) -> Result<Option<u64>> {
        let Some(g) = self.db.group(gid)? else {
            return Ok(None);
        };
        match (g.status, g.name) {
            (GroupStatus::Active, Some(name)) => self
                .send_envelope(gid, &Envelope::Name { name })
                .await
                .map(Some),
            _ => Ok(None),
        }
    }

    /// Sends an application message. A transient failure (the connection
    /// dropped, the node went away, the group is moving between nodes) is
    /// retried with the same `client_msg_id` after reconnecting, so a
    /// message the server took but could not acknowledge is not sent twice:
    /// the repeat is answered with the original seq.
    async fn send_envelope(&mut self, gid: &[u8], env: &Envelope) -> Result<u64> {
        let me = self.me()?;
        let client_msg_id = self.random_id()?;
        let plaintext = env.encode_padded();
        let mut stale_attempts = 0;
        let mut retries = 0;
        let mut backoff = Backoff::new(SEND_BACKOFF_FIRST, SEND_BACKOFF_MAX);
        while stale_attempts < MAX_COMMIT_ATTEMPTS {
            if !self.is_connected() {
                // Boxed: connecting syncs, and a sync may send (a cycle).
                if let Err(e) = Box::pin(self.connect()).await {
                    if !e.is_transient() || retries >= self.transient_retries {
                        return Err(e);
                    }
                    retries += 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
            if mls::has_pending_proposals(&self.db, gid)? {
                // openmls refuses to encrypt while proposals are pending.
                self.commit_intent(gid, Intent::PendingProposals).await?;
            }
            let message = mls::encrypt(&self.db, &me, gid, &plaintext)?;
            let r = self
                .ask::<v1::MessageAccepted>(client_frame::Body::SendMessage(v1::SendMessage {
                    group_id: gid.to_vec(),
                    client_msg_id: client_msg_id.clone(),
                    message,
                }))
                .await;
            match r {
                Ok(acc) => {
                    let (kind, body) = match env {
                        Envelope::Text { body, .. } => ("text", body.clone()),
                        Envelope::Name { name } => ("name", name.clone()),
                        Envelope::Typing | Envelope::Unknown => ("unknown", String::new()),
                    };
                    self.db.atomically(|db| {
                        db.record_own_seq(gid, acc.seq)?;
                        db.log(gid, &log_row(acc.seq, &me.user_id, kind, body), true)
                    })?;
                    return Ok(acc.seq);
                }
                Err(e) if e.server_code() == Some(ErrorCode::StaleEpoch) => {
                    stale_attempts += 1;
                    if let AfterCatchUp::Gone { .. } = self.recover_stale_epoch(gid, &e).await? {
                        return Err(removed_from_group());
                    }
                }
                Err(e) if e.is_transient() && retries < self.transient_retries => {
                    retries += 1;
                    tracing::warn!(error = %e, "send interrupted; retrying with the same message id");
                    if !self.is_connected() {
                        self.close().await;
                    }
                    tokio::time::sleep(retry_delay(&e, backoff.next_delay())).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::GaveUp(
            "message kept hitting stale epochs".into(),
        ))
    }
}

/// The longest a server's retry hint makes a send wait.
const MAX_HINTED_WAIT: Duration = Duration::from_secs(30);

/// How long to wait before retrying after `e`: the backoff's delay, or the
/// server's `retry_after_ms` hint when it asks for longer (capped).
fn retry_delay(e: &ClientError, backoff: Duration) -> Duration {
    match e {
        ClientError::Server {
            retry_after_ms: Some(ms),
            ..
        } => backoff.max(Duration::from_millis(*ms).min(MAX_HINTED_WAIT)),
        _ => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: ErrorCode, retry_after_ms: Option<u64>) -> ClientError {
        ClientError::Server {
            code,
            message: String::new(),
            stale_epoch: None,
            retry_after_ms,
        }
    }

    #[test]
    fn a_refusal_waits_at_least_the_server_hint() {
        let b = Duration::from_millis(50);
        let hinted = refused(ErrorCode::Unavailable, Some(400));
        assert_eq!(retry_delay(&hinted, b), Duration::from_millis(400));
        let short = refused(ErrorCode::RateLimited, Some(10));
        assert_eq!(retry_delay(&short, b), b, "the backoff is the floor");
        assert_eq!(retry_delay(&refused(ErrorCode::Unavailable, None), b), b);
        let huge = refused(ErrorCode::Unavailable, Some(10_000_000));
        assert_eq!(retry_delay(&huge, b), MAX_HINTED_WAIT);
    }
}
