//! Welcomes stored once per commit (the parent module's "Welcomes, once
//! per commit"): delivering a pending commit's Welcome, reading inbox
//! pages with their Welcomes joined back, and releasing Welcomes on acks.
//! Invariants: a `welcomes` row, with every device it is about to deliver
//! to in `waiting`, is written before any inbox row refers to it; a device
//! leaves `waiting` only by acknowledging its item; the row is deleted only
//! when `waiting` is empty. So an inbox item whose Welcome row is missing
//! has been acknowledged, and is skipped.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use futures_util::{StreamExt, TryStreamExt};

use super::{from_bigint, ScyllaStore};
use crate::{InboxItem, Result, StoreError};

/// How many Welcome rows one inbox page reads at once.
const WELCOME_READS_IN_FLIGHT: usize = 8;

/// A pending commit's Welcome: the one blob for all the devices it
/// welcomes (they join with the commit's ratchet tree, the head's).
#[derive(Clone, PartialEq, Eq)]
pub struct PendingWelcome {
    pub welcome: Vec<u8>,
    pub devices: BTreeSet<String>,
}

impl std::fmt::Debug for PendingWelcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingWelcome")
            .field("len", &self.welcome.len())
            .field("devices", &self.devices)
            .finish()
    }
}

/// An `inbox` row: since schema version 3 a reference to its commit's
/// `welcomes` row (no blobs); before, with a copy of both.
#[derive(::scylla::DeserializeRow)]
struct InboxRow {
    inbox_seq: i64,
    group_id: Vec<u8>,
    commit_seq: i64,
    welcome: Option<Vec<u8>>,
    ratchet_tree: Option<Vec<u8>>,
}

impl InboxRow {
    /// The `welcomes` row it refers to, if it has no blobs of its own.
    fn reference(&self) -> Option<(Vec<u8>, i64)> {
        self.welcome
            .is_none()
            .then(|| (self.group_id.clone(), self.commit_seq))
    }
}

/// A commit's Welcome and tree as read from `welcomes` (`None`: no row).
type Joined = HashMap<(Vec<u8>, i64), Option<(Vec<u8>, Vec<u8>)>>;

impl ScyllaStore {
    /// Delivers a pending commit's Welcome: its `welcomes` row for the
    /// devices that have no delivery yet, then every device's inbox row.
    /// Idempotent; `tree` as for `materialize`.
    pub(super) async fn deliver_welcome(
        &self,
        group_id: &[u8],
        commit_seq: i64,
        w: &PendingWelcome,
        tree: Option<&[u8]>,
    ) -> Result<()> {
        let mut given = Vec::with_capacity(w.devices.len());
        for device in &w.devices {
            given.push(self.delivered(device, group_id, commit_seq).await?);
        }
        let missing: BTreeSet<&String> = w
            .devices
            .iter()
            .zip(&given)
            .filter(|(_, n)| n.is_none())
            .map(|(d, _)| d)
            .collect();
        if !missing.is_empty() {
            let tree = match tree {
                Some(tree) => Some(Cow::Borrowed(tree)),
                None => self.tree_at(group_id, commit_seq).await?.map(Cow::Owned),
            };
            // Without a tree the head has moved past the commit, and
            // whoever moved it materialized the commit first, this row
            // included: every delivery exists by now.
            if let Some(tree) = tree {
                self.run(
                    "welcome_put",
                    (&w.welcome, tree.as_ref(), &missing, group_id, commit_seq),
                )
                .await?;
            }
        }
        for (device, given) in w.devices.iter().zip(given) {
            let inbox_seq = match given {
                Some(n) => n,
                None => self.deliver(device, group_id, commit_seq).await?,
            };
            self.run("inbox_insert", (device, inbox_seq, group_id, commit_seq))
                .await?;
        }
        Ok(())
    }

    /// The head's ratchet tree if the head is still at `commit_seq` (so the
    /// tree is that commit's), read at SERIAL.
    async fn tree_at(&self, group_id: &[u8], commit_seq: i64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .one::<(i64, Option<Vec<u8>>)>("head_tree_get", (group_id,))
            .await?
            .filter(|(head_seq, _)| *head_seq == commit_seq)
            .map(|(_, tree)| tree.unwrap_or_default()))
    }

    /// Up to `limit` inbox items after `after`, each with its Welcome and
    /// tree: one read of the page, then one per distinct Welcome it refers
    /// to. Items whose Welcome is gone were acknowledged (see the module
    /// docs) and are skipped, and the next rows read in their place.
    pub(super) async fn inbox_page(
        &self,
        device_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<InboxItem>> {
        let limit = limit as usize;
        let mut after = i64::try_from(after).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        while out.len() < limit {
            let want = limit - out.len();
            let rows = self
                .all::<InboxRow>("inbox_read", (device_id, after), want)
                .await?;
            let last_page = rows.len() < want;
            if let Some(last) = rows.last() {
                after = last.inbox_seq;
            }
            let joined = self.welcomes_of(&rows).await?;
            for row in rows {
                if let Some(item) = item_of(row, &joined)? {
                    out.push(item);
                }
            }
            if last_page {
                break;
            }
        }
        Ok(out)
    }

    /// The Welcome rows `rows` refer to, each read once.
    async fn welcomes_of(&self, rows: &[InboxRow]) -> Result<Joined> {
        let keys: BTreeSet<(Vec<u8>, i64)> = rows.iter().filter_map(InboxRow::reference).collect();
        futures_util::stream::iter(keys)
            .map(|key| async move {
                let found = self
                    .one::<(Option<Vec<u8>>, Option<Vec<u8>>)>("welcome_get", (&key.0, key.1))
                    .await?
                    .and_then(|(welcome, tree)| Some((welcome?, tree.unwrap_or_default())));
                Ok::<_, StoreError>((key, found))
            })
            .buffer_unordered(WELCOME_READS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Before a device's items up to `upto` are deleted: takes the device
    /// out of `waiting` of every Welcome they refer to, and deletes each
    /// Welcome nobody waits for any more. Idempotent (set removal, delete).
    pub(super) async fn release_welcomes(&self, device_id: &str, upto: i64) -> Result<()> {
        let acked: BTreeSet<(Vec<u8>, i64)> = self
            .all::<(Vec<u8>, i64)>("inbox_refs", (device_id, upto), usize::MAX)
            .await?
            .into_iter()
            .collect();
        let me = BTreeSet::from([device_id]);
        for (group_id, commit_seq) in acked {
            // (An item of version 2 has no Welcome row: the removal then
            // only leaves a tombstone, and there is nothing to delete.)
            self.run("welcome_unwait", (&me, &group_id, commit_seq))
                .await?;
            let waiting = self
                .one::<(Option<BTreeSet<String>>,)>("welcome_waiting", (&group_id, commit_seq))
                .await?;
            if waiting.is_some_and(|(w,)| w.is_none_or(|w| w.is_empty())) {
                self.run("welcome_delete", (&group_id, commit_seq)).await?;
            }
        }
        Ok(())
    }
}

/// The item of `row`: its own blobs (version 2), else its Welcome's;
/// `None` if its Welcome is gone (it was acknowledged).
fn item_of(row: InboxRow, joined: &Joined) -> Result<Option<InboxItem>> {
    let inbox_seq = from_bigint(row.inbox_seq, "inbox seq")?;
    let commit_seq = from_bigint(row.commit_seq, "commit seq")?;
    let (welcome, ratchet_tree) = match (row.welcome, row.ratchet_tree) {
        (Some(welcome), tree) => (welcome, tree.unwrap_or_default()),
        (None, _) => match joined.get(&(row.group_id.clone(), row.commit_seq)) {
            Some(Some((welcome, tree))) => (welcome.clone(), tree.clone()),
            _ => {
                tracing::debug!(
                    inbox_seq,
                    commit_seq,
                    "inbox item of a released welcome skipped"
                );
                return Ok(None);
            }
        },
    };
    Ok(Some(InboxItem {
        inbox_seq,
        group_id: row.group_id,
        commit_seq,
        welcome,
        ratchet_tree,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, commit_seq: i64, inline: bool) -> InboxRow {
        InboxRow {
            inbox_seq: seq,
            group_id: b"g".to_vec(),
            commit_seq,
            welcome: inline.then(|| b"own welcome".to_vec()),
            ratchet_tree: inline.then(|| b"own tree".to_vec()),
        }
    }

    #[test]
    fn items_take_their_own_blobs_else_their_commits_and_skip_released_ones() {
        let joined: Joined = [
            ((b"g".to_vec(), 4), Some((b"w4".to_vec(), b"t4".to_vec()))),
            ((b"g".to_vec(), 6), None),
        ]
        .into_iter()
        .collect();
        let old = item_of(row(1, 2, true), &joined).unwrap().unwrap();
        assert_eq!(
            (old.welcome.as_slice(), old.ratchet_tree.as_slice()),
            (&b"own welcome"[..], &b"own tree"[..])
        );
        let new = item_of(row(2, 4, false), &joined).unwrap().unwrap();
        assert_eq!((new.inbox_seq, new.commit_seq), (2, 4));
        assert_eq!(
            (new.welcome.as_slice(), new.ratchet_tree.as_slice()),
            (&b"w4"[..], &b"t4"[..])
        );
        assert!(item_of(row(3, 6, false), &joined).unwrap().is_none());
        assert!(item_of(row(3, 8, false), &joined).unwrap().is_none());
        assert!(item_of(row(-1, 4, false), &joined).is_err());
    }

    #[test]
    fn only_rows_without_blobs_refer_to_a_welcome_row() {
        assert_eq!(row(1, 4, false).reference(), Some((b"g".to_vec(), 4)));
        assert_eq!(row(1, 4, true).reference(), None);
    }
}
