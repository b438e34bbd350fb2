//! Application messages: `SendMessage` (stored, sequenced, fanned out) and
//! `SendEphemeral` (typing: validated the same way, fanned out to online
//! devices, never stored).
//!
//! Both pass [`GroupActor::check_application`]: size, membership of the
//! authenticated device, and the PrivateMessage header (content type
//! application, this group, epoch within `limits.epoch_window`). The server
//! reads nothing else of the message.
//!
//! Sends are pipelined: the actor validates a send and queues it, and the
//! queue goes to the store as one batch ([`Store::append_messages`]: one
//! writer operation, seqs in queue order) while the actor goes on
//! validating the next sends. One batch per group is with the store at a
//! time; what queued meanwhile is the next batch. The task that awaits the
//! store acks the batch's senders, in seq order, then fans its messages
//! out, in seq order (store, ack, fan out, as before, and with no more
//! thread hops than before: the actor hands the batch to the store itself,
//! before the task first runs), and only then tells the actor
//! (`GroupMsg::Appended`), which lets the next batch go. So the group does
//! not wait for one message's durability before validating the next. Before, a group took one send per store round trip
//! (writer wait, batch, fsync: 5 ms on average at 9,000 msg/s), so its
//! sends queued in its mailbox for tens of ms while the writer, which
//! commits every group's writes together, took one message per group per
//! batch.
//!
//! Commits and proposals change what the next message is checked against
//! (epoch, members, the DS state), so they wait for the pipeline to drain
//! (`Pipeline::deferred`), and so does every send that arrives after one of
//! them: mailbox order holds between a commit and the sends around it.
//! Ephemeral messages are never stored and go at once.

use std::future::Future as _;
use std::sync::Arc;
use std::task::{Context, Waker};

use hush_proto::{server_frame::Body as Reply, v1};
use hush_store::{AppendOutcome, EntryKind, MemberDevice, NewEntry};
use ractor::{ActorRef, RpcReplyPort};

use super::actor::{
    stale_with_head, AppendBatch, Appended, GroupActor, GroupMsg, GroupState, Loaded, Waiting,
};
use crate::error::{ApiError, ApiResult};
use crate::wire::{encode, Caller, Outbound};

/// The most sends one batch takes to the store (admission already bounds
/// a group's pending sends by `limits.max_pending_per_group`).
const MAX_APPEND_BATCH: usize = 64;

impl GroupActor {
    /// The checks every application message passes; returns the loaded
    /// group and the message's epoch.
    async fn check_application<'s>(
        &self,
        state: &'s mut GroupState,
        caller: &Caller,
        message: &[u8],
        now: u64,
    ) -> ApiResult<(&'s mut Loaded, u64)> {
        self.check_size("message", message.len())?;
        let window = self.groups.limits.epoch_window;
        let loaded = self.load(state, now).await?;
        Self::member_check(loaded, caller)?;
        let epoch = loaded
            .tracker
            .check_application(message, window)
            .map_err(|e| stale_with_head(e.into(), loaded.head_seq))?;
        Ok((loaded, epoch))
    }

    /// One frame to every member device but the sender's, through the
    /// sessions online now. No store write, no seq, no client_msg_id: a
    /// retry is just another typing notice.
    pub(super) async fn on_ephemeral(
        &self,
        state: &mut GroupState,
        caller: &Caller,
        req: v1::SendEphemeral,
    ) -> ApiResult<v1::EphemeralAccepted> {
        let now = self.now_ms();
        let group_id = state.group_id.clone();
        let (loaded, epoch) = self
            .check_application(state, caller, &req.message, now)
            .await?;
        let to: Vec<MemberDevice> = loaded
            .members
            .iter()
            .filter(|m| m.device_id != caller.device_id)
            .cloned()
            .collect();
        let frame = encode(
            0,
            Reply::EphemeralEvent(v1::EphemeralEvent {
                group_id,
                epoch,
                message: req.message,
            }),
        );
        self.groups
            .sessions
            .deliver(&to, Outbound::Ephemeral { frame })
            .await;
        metrics::counter!("hush_ephemeral_messages_total").increment(1);
        Ok(v1::EphemeralAccepted {})
    }

    /// A send: checked now, then queued for the group's next batch to the
    /// store, which leaves at once unless a batch is with the store already.
    pub(super) async fn accept_send(
        &self,
        myself: &ActorRef<GroupMsg>,
        state: &mut GroupState,
        caller: &Caller,
        req: v1::SendMessage,
        reply: RpcReplyPort<ApiResult<v1::MessageAccepted>>,
    ) {
        match self.check_send(state, caller, req).await {
            Ok((entry, members)) => {
                let queued = &mut state.pipeline.queued;
                queued.entries.push(entry);
                queued.waiting.push(Waiting { reply, members });
                if !state.pipeline.in_flight {
                    self.start_append(myself, state);
                }
            }
            Err(e) => {
                let r = Err(e);
                self.settle(myself, state, &r);
                let _ = reply.send(r);
            }
        }
    }

    async fn check_send(
        &self,
        state: &mut GroupState,
        caller: &Caller,
        req: v1::SendMessage,
    ) -> ApiResult<(NewEntry, Arc<[MemberDevice]>)> {
        Self::check_msg_id(&req.client_msg_id)?;
        let now = self.now_ms();
        let (loaded, epoch) = self
            .check_application(state, caller, &req.message, now)
            .await?;
        let entry = NewEntry {
            kind: EntryKind::Application,
            epoch,
            sender: caller.identity(),
            client_msg_id: req.client_msg_id,
            message: req.message,
            server_time_ms: now,
        };
        Ok((entry, loaded.members.clone()))
    }

    /// Hands the queued sends (up to [`MAX_APPEND_BATCH`]) to the store,
    /// under the group's fence. The store takes them here, in the actor's
    /// turn (the future is polled once before it is spawned); the task then
    /// waits for the store, acks and fans out ([`finish_batch`]) and reports
    /// back with `GroupMsg::Appended`. A stopped actor never hears back; a
    /// sender whose ack was not sent yet is told the group moved and resends
    /// by `client_msg_id` (deduplicated: a stored batch keeps its seqs).
    fn start_append(&self, myself: &ActorRef<GroupMsg>, state: &mut GroupState) {
        let queued = &mut state.pipeline.queued;
        let batch = if queued.entries.len() > MAX_APPEND_BATCH {
            AppendBatch {
                entries: queued.entries.drain(..MAX_APPEND_BATCH).collect(),
                waiting: queued.waiting.drain(..MAX_APPEND_BATCH).collect(),
            }
        } else {
            std::mem::take(queued)
        };
        if batch.entries.is_empty() {
            return;
        }
        let Some(fence) = state.loaded.as_ref().map(|l| l.lease.token) else {
            // Unloaded since the check (a lost lease): the actor stops.
            let e = ApiError::new(hush_proto::ErrorCode::Unavailable, "group moved; retry");
            metrics::counter!("hush_errors_total", "code" => e.code_name())
                .increment(batch.waiting.len() as u64);
            for w in batch.waiting {
                let _ = w.reply.send(Err(e.clone()));
            }
            return;
        };
        state.pipeline.in_flight = true;
        let actor = GroupActor {
            groups: self.groups.clone(),
        };
        let group_id = state.group_id.clone();
        let myself = myself.clone();
        let report = Report::new(move |appended| {
            let _ = myself.send_message(GroupMsg::Appended(Box::new(appended)));
        });
        let mut task = Box::pin(async move {
            let result = actor
                .groups
                .store
                .append_messages(&group_id, fence, &batch.entries)
                .await;
            report.send(finish_batch(&actor, &group_id, batch, result).await);
        });
        // The first poll queues the batch to the store now; a task spawned
        // unpolled would reach the store only once the runtime gets to it.
        let mut cx = Context::from_waker(Waker::noop());
        if task.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(task);
        }
    }

    /// A batch is done (see [`finish_batch`]): the group's head moves, a
    /// lost fence stops the actor, and the next batch leaves, or, with
    /// nothing queued, the requests that waited for the pipeline to drain
    /// are served.
    pub(super) async fn on_appended(
        &self,
        myself: &ActorRef<GroupMsg>,
        state: &mut GroupState,
        appended: Appended,
    ) {
        state.pipeline.in_flight = false;
        match appended.result {
            Ok(last) => {
                if let Some(l) = state.loaded.as_mut() {
                    l.head_seq = l.head_seq.max(last);
                }
            }
            Err(_) if appended.lost => {
                // What the store holds now is unknown here: stop, and the
                // next request loads the group again. Senders not yet
                // answered were told the group moved and resend by id.
                state.loaded = None;
                myself.stop(Some("a batch's task ended unfinished".into()));
            }
            Err(e) => Self::stop_if_moved(myself, state, &e),
        }
        if state.pipeline.busy() {
            self.start_append(myself, state);
        } else {
            self.serve_deferred(myself, state).await;
        }
    }

    /// Serves the requests that waited for the pipeline, in order, until
    /// one must wait again (a commit or proposal behind a send it let go).
    async fn serve_deferred(&self, myself: &ActorRef<GroupMsg>, state: &mut GroupState) {
        while let Some(next) = state.pipeline.deferred.front() {
            let waits = match next {
                GroupMsg::Send { .. } => false,
                _ => state.pipeline.busy(),
            };
            if waits {
                return;
            }
            let Some(msg) = state.pipeline.deferred.pop_front() else {
                return;
            };
            self.serve(myself, state, msg).await;
        }
    }
}

/// The one report a batch's task owes its actor, sent even when the task
/// never finishes: a task that panics (a bug in what it calls) or is
/// dropped unfinished reports `lost`, so the group does not wait forever
/// for an answer that cannot come (the actor, not ractor, spawned it, so
/// no supervisor would notice). Its senders' replies are dropped with it:
/// they are told the group moved and resend by `client_msg_id`.
struct Report<F: FnOnce(Appended)>(Option<F>);

impl<F: FnOnce(Appended)> Report<F> {
    fn new(to: F) -> Self {
        Self(Some(to))
    }

    fn send(mut self, result: ApiResult<u64>) {
        if let Some(to) = self.0.take() {
            to(Appended {
                result,
                lost: false,
            });
        }
    }
}

impl<F: FnOnce(Appended)> Drop for Report<F> {
    fn drop(&mut self) {
        if let Some(to) = self.0.take() {
            to(Appended {
                result: Err(ApiError::internal(
                    "append batch",
                    "its task ended without reporting",
                )),
                lost: true,
            });
        }
    }
}

/// What the store said about a batch, told to its senders: acks in seq
/// order (a repeated `client_msg_id` acked with its original seq, and not
/// fanned out again), then the fan-out of each new message in seq order;
/// or the error, to every sender. Returns the largest new seq.
async fn finish_batch(
    actor: &GroupActor,
    group_id: &[u8],
    batch: AppendBatch,
    result: hush_store::Result<Vec<AppendOutcome>>,
) -> ApiResult<u64> {
    let n = batch.entries.len();
    let outcomes = match result {
        Ok(o) if o.len() == n => Ok(o),
        Ok(o) => Err(ApiError::internal(
            "append batch",
            format!("{} outcomes for {n} entries", o.len()),
        )),
        Err(e) => Err(ApiError::from(e)),
    };
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(e) => {
            metrics::counter!("hush_errors_total", "code" => e.code_name()).increment(n as u64);
            for w in batch.waiting {
                let _ = w.reply.send(Err(e.clone()));
            }
            return Err(e);
        }
    };
    let mut last = 0;
    let mut fan_outs = Vec::with_capacity(n);
    for ((entry, w), outcome) in batch.entries.into_iter().zip(batch.waiting).zip(outcomes) {
        let duplicate = matches!(outcome, AppendOutcome::Duplicate { .. });
        if !duplicate {
            last = last.max(outcome.seq());
            metrics::counter!("hush_messages_in_total", "kind" => "application").increment(1);
            fan_outs.push((outcome.seq(), entry, w.members));
        }
        let _ = w.reply.send(Ok(v1::MessageAccepted {
            group_id: group_id.to_vec(),
            seq: outcome.seq(),
            duplicate,
        }));
    }
    for (seq, entry, members) in fan_outs {
        actor.fan_out(group_id, seq, &entry, &members).await;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn reported() -> (Report<impl FnOnce(Appended)>, mpsc::Receiver<Appended>) {
        let (tx, rx) = mpsc::channel();
        (Report::new(move |a| tx.send(a).expect("receiver")), rx)
    }

    #[test]
    fn a_finished_batch_reports_once() {
        let (report, rx) = reported();
        report.send(Ok(7));
        let a = rx.try_recv().expect("reported");
        assert!(!a.lost);
        assert_eq!(a.result.expect("ok"), 7);
        assert!(rx.try_recv().is_err(), "reported twice");
    }

    #[test]
    fn a_task_that_panics_still_reports_its_batch_lost() {
        let (report, rx) = reported();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let joined = rt.block_on(async move {
            tokio::spawn(async move {
                let _report = report;
                panic!("a bug in the batch's task");
            })
            .await
        });
        assert!(joined.expect_err("the task panicked").is_panic());
        let a = rx.try_recv().expect("reported although the task panicked");
        assert!(a.lost);
        assert_eq!(
            a.result.expect_err("lost").code,
            hush_proto::ErrorCode::Internal
        );
        assert!(rx.try_recv().is_err(), "reported twice");
    }
}
