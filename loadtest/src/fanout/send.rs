//! The sender's open-loop schedule for one phase: message `i` of a group
//! is due at the group's [`Schedule`] time whether or not earlier ones were
//! answered; its header carries that intended time, and it goes out with a
//! `client_msg_id` (run, group, counter) that every resend reuses.

use std::sync::Arc;

use hush_proto::v1;

use super::group::GroupShared;
use super::member::MemberSink;
use crate::clock::Clock;
use crate::mls::{Member, Presealed};
use crate::payload::Header;
use crate::scenario::MlsMode;
use crate::stats::Counters;
use crate::workload::Schedule;

/// The sender's MLS side and message counter, kept across phases.
pub struct SenderState {
    pub member: Member,
    /// Presealed mode: ciphertexts replayed round-robin with a new header.
    pub sealed: Vec<Presealed>,
    pub counter: u64,
}

/// What a group's sends in a phase look like.
#[derive(Debug, Clone, Copy)]
pub struct SendPlan {
    pub mode: MlsMode,
    pub payload_bytes: usize,
    /// The run's tag (from its id): the first part of every message id.
    pub run_tag: u32,
    pub schedule: Schedule,
    /// Messages in the phase.
    pub n: u64,
}

/// `client_msg_id` of message `counter` of group `group` in run `run_tag`.
fn client_msg_id(run_tag: u32, group: u32, counter: u64) -> Vec<u8> {
    let mut id = Vec::with_capacity(16);
    id.extend_from_slice(&run_tag.to_le_bytes());
    id.extend_from_slice(&group.to_le_bytes());
    id.extend_from_slice(&counter.to_le_bytes());
    id
}

/// Sends one phase of a group's schedule.
pub async fn send_phase(
    clock: Clock,
    g: Arc<GroupShared>,
    sink: Arc<MemberSink>,
    sender: Arc<tokio::sync::Mutex<SenderState>>,
    plan: SendPlan,
) {
    let mut st = sender.lock().await;
    let Some(gid) = g.group_id.get().cloned() else {
        return;
    };
    let counters = &sink.shared.counters;
    for i in 0..plan.n {
        let intended = plan.schedule.at(i);
        tokio::time::sleep_until(clock.instant_at(intended)).await;
        let counter = st.counter;
        st.counter += 1;
        let h = Header {
            sent_ns: intended,
            group: g.index,
            counter,
        };
        let message = match plan.mode {
            MlsMode::Presealed => st.sealed[(counter as usize) % st.sealed.len()].stamp(&h),
            MlsMode::Live => match st.member.encrypt(&h.plaintext(plan.payload_bytes)) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "encrypt failed");
                    Counters::add(&counters.payload_errors, 1);
                    continue;
                }
            },
        };
        g.scheduled(counter, intended);
        Counters::add(&counters.sent, 1);
        // Resends (after a lost socket or a transient error) reuse this
        // body, so the client_msg_id stays the same.
        sink.send(
            counter,
            intended,
            v1::SendMessage {
                group_id: gid.clone(),
                client_msg_id: client_msg_id(plan.run_tag, g.index, counter),
                message,
            },
        );
    }
}
