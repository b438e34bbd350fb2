//! The directory and the pins: asking the server which devices (and keys)
//! a user has, pinning the answer (trust on first use, judged by
//! [`crate::trust`]), and the safety numbers people compare to check the
//! server's answer beyond its word.
//!
//! Invariants: every directory answer goes through
//! [`trust::pin_directory`], so a change of a contact's devices is never
//! taken silently (it raises an alert and unverifies the contact); this
//! device's own user is asked about on every connect, so a device that
//! appears on the account (a ghost device) is noticed at once; other
//! contacts are asked about when one of their devices is not pinned, when
//! they are added to a group, when the person asks for the safety number,
//! and otherwise at most every [`CONTACT_REFRESH`] after a sync.

use std::time::Duration;

use hush_proto::{client_frame, v1, ErrorCode};

use super::{validate_handle, Client};
use crate::error::{ClientError, Result};
use crate::mls;
use crate::store::{now_ms, GroupStatus};
use crate::trust::{self, DirectoryDevice, PinOutcome, Verdict};

/// How long a pinned directory answer is used before the contacts of this
/// device's groups are asked about again (after a sync).
pub const CONTACT_REFRESH: Duration = Duration::from_secs(3600);

/// A safety number with a contact, as `hush verify` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    /// The contact.
    pub user_id: String,
    /// 60 digits (see [`trust::safety_number`]).
    pub number: String,
    /// The person marked this contact verified and nothing changed since.
    pub verified: bool,
    /// The contact's devices had changed since the person last looked (this
    /// look clears it).
    pub changed: bool,
    /// The contact's current device ids.
    pub devices: Vec<String>,
    /// This user's current device ids.
    pub own_devices: Vec<String>,
}

impl Client {
    /// Asks the directory about `user` and pins the answer. A user the
    /// server does not know has no devices.
    pub(super) async fn refresh_user(&mut self, user: &str) -> Result<PinOutcome> {
        let me = self.me()?;
        let info = match self
            .ask::<v1::UserInfo>(client_frame::Body::LookupUser(v1::LookupUser {
                handle: user.to_string(),
            }))
            .await
        {
            Ok(info) => info,
            Err(e) if e.server_code() == Some(ErrorCode::NotFound) => v1::UserInfo::default(),
            Err(e) => return Err(e),
        };
        if !info.user_id.is_empty() && info.user_id != user {
            return Err(ClientError::Protocol(format!(
                "asked the directory about {user}, it answered about {}",
                info.user_id
            )));
        }
        let devices: Vec<DirectoryDevice> = info
            .devices
            .into_iter()
            .map(|d| DirectoryDevice {
                device_id: d.device_id,
                signature_key: d.signature_key,
            })
            .collect();
        let outcome = trust::pin_directory(&self.db, &me.user_id, user, &devices)?;
        if let PinOutcome::Changed(change) = &outcome {
            tracing::warn!(user = %user, added = ?change.added, removed = ?change.removed, rekeyed = ?change.rekeyed, "a contact's devices changed");
        }
        Ok(outcome)
    }

    /// Checks every leaf of a local group's tree against the pins, asking
    /// the directory about each unknown user once: `Forged` if one does not
    /// authenticate.
    pub(super) async fn verify_tree(&mut self, gid: &[u8]) -> Result<()> {
        let mut asked = std::collections::BTreeSet::new();
        loop {
            let leaves = mls::leaves(&self.db, gid)?;
            let verdict = trust::check_leaves(
                &self.db,
                leaves.iter().map(|(i, k)| (i.as_str(), k.as_slice())),
            )?;
            match verdict {
                Verdict::Trusted => return Ok(()),
                Verdict::Forged(why) => return Err(ClientError::Forged(why)),
                Verdict::Unknown { user } if asked.contains(&user) => {
                    return Err(ClientError::Forged(format!(
                        "a device of {user} that the directory does not list"
                    )))
                }
                Verdict::Unknown { user } => {
                    self.refresh_user(&user).await?;
                    asked.insert(user);
                }
            }
        }
    }

    /// Asks the directory again about the users of this device's active
    /// groups whose answer is older than [`CONTACT_REFRESH`].
    pub(super) async fn refresh_stale_contacts(&mut self) -> Result<()> {
        let mut users = std::collections::BTreeSet::new();
        for g in self.db.groups()? {
            if g.status == GroupStatus::Active && mls::has_group(&self.db, &g.group_id)? {
                for m in mls::members(&self.db, &g.group_id)? {
                    users.insert(mls::user_of(&m.identity).to_string());
                }
            }
        }
        let stale_before = now_ms().saturating_sub(CONTACT_REFRESH.as_millis() as u64);
        for u in users {
            let stale = self
                .db
                .contact(&u)?
                .is_none_or(|c| c.refreshed_ms < stale_before);
            if stale {
                self.refresh_user(&u).await?;
            }
        }
        Ok(())
    }

    /// The safety number with `handle`, from fresh directory answers for
    /// both users. Looking at it clears the contact's "changed" warning.
    pub async fn safety_number(&mut self, handle: &str) -> Result<SafetyNumber> {
        let (n, _) = self.fresh_safety_number(handle).await?;
        self.db.atomically(|db| {
            if let Some(c) = db.contact(handle)? {
                db.put_contact(handle, c.verified, false, c.refreshed_ms)?;
            }
            Ok(())
        })?;
        Ok(n)
    }

    /// Marks `handle` verified: the person compared the safety number. Refused
    /// when the devices changed since the number was last shown (the person
    /// compared an old number): it must be compared again.
    pub async fn mark_verified(&mut self, handle: &str) -> Result<SafetyNumber> {
        let (mut n, changed_now) = self.fresh_safety_number(handle).await?;
        if changed_now || n.changed {
            return Err(ClientError::InvalidArgument(format!(
                "{handle}'s safety number changed since you last looked at it: \
                 compare the new one (hush verify {handle}) before marking it verified"
            )));
        }
        self.db.atomically(|db| {
            if let Some(c) = db.contact(handle)? {
                db.put_contact(handle, true, false, c.refreshed_ms)?;
            }
            Ok(())
        })?;
        n.verified = true;
        Ok(n)
    }

    /// Refreshes both users and computes the number; also says whether
    /// either answer changed just now.
    async fn fresh_safety_number(&mut self, handle: &str) -> Result<(SafetyNumber, bool)> {
        validate_handle(handle)?;
        let me = self.me()?;
        if handle == me.user_id {
            return Err(ClientError::InvalidArgument(
                "a safety number is between you and someone else".into(),
            ));
        }
        let mine = self.refresh_user(&me.user_id).await?;
        let theirs = self.refresh_user(handle).await?;
        let changed_now =
            matches!(mine, PinOutcome::Changed(_)) || matches!(theirs, PinOutcome::Changed(_));
        let own = self
            .db
            .contact(&me.user_id)?
            .ok_or_else(|| ClientError::Protocol("own user not pinned".into()))?;
        let contact = self
            .db
            .contact(handle)?
            .ok_or_else(|| ClientError::Protocol(format!("{handle} not pinned")))?;
        if contact.current_keys().is_empty() {
            return Err(ClientError::Server {
                code: ErrorCode::NotFound,
                message: format!("{handle} has no devices"),
                stale_epoch: None,
                retry_after_ms: None,
            });
        }
        let number = trust::safety_number(
            (&me.user_id, &own.current_keys()),
            (handle, &contact.current_keys()),
        );
        let current = |c: &crate::store::Contact| {
            c.devices
                .iter()
                .filter(|d| d.current)
                .map(|d| d.device_id.clone())
                .collect::<Vec<_>>()
        };
        Ok((
            SafetyNumber {
                user_id: handle.to_string(),
                number,
                verified: contact.verified,
                changed: contact.changed,
                devices: current(&contact),
                own_devices: current(&own),
            },
            changed_now,
        ))
    }
}
