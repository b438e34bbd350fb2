//! How the log reads: one [`LogRow`] rendered as a `sync`/`listen` output
//! line, human or JSON, and identities (`<user>/<device>`) shown as handles.
//! A leaf under both front ends: the `hush` commands (`cli.rs`) print these
//! lines and the chat screen (`tui.rs`) lists members by handle.
//!
//! The JSON line shapes (field names and order) are a contract with scripts
//! that read `hush --json`; the tests pin them.

use serde::Serialize;

use crate::mls::user_of;
use crate::store::{Alert, LogRow};
use crate::trust::ALERT_OWN_DEVICES_CHANGED;

/// A `sync`/`listen` JSON line: the group and the seq, then what the entry
/// was. Field order and names are a contract:
///
/// ```text
/// {"group":"<hex>","seq":6,"sender":"alice","text":"hi"}
/// {"group":"<hex>","seq":3,"event":"added","members":["bob"]}
/// {"group":"<hex>","seq":4,"event":"name","name":"friends"}
/// {"group":"<hex>","seq":5,"event":"forged","sender":"mallory","reason":"…"}
/// ```
#[derive(Debug, Serialize)]
pub struct JsonLine<'a> {
    /// Hex group id.
    pub group: String,
    /// Timeline seq.
    pub seq: u64,
    /// The fields that depend on the entry's kind.
    #[serde(flatten)]
    pub entry: JsonEntry<'a>,
}

/// The kind-dependent fields of a [`JsonLine`].
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum JsonEntry<'a> {
    /// A text message: sender handle and text.
    Text { sender: &'a str, text: &'a str },
    /// A membership event ("added", "removed", "joined", "left") and the
    /// handles concerned (deduplicated).
    Members {
        event: &'a str,
        members: Vec<String>,
    },
    /// The group's new name (`event` is always "name").
    Name { event: &'a str, name: &'a str },
    /// An entry (or a Welcome, with an empty `sender`) refused because it
    /// does not authenticate (`event` is always "forged"); `sender` is the
    /// handle the server attributed it to. Its content is never shown.
    Forged {
        event: &'a str,
        sender: &'a str,
        reason: &'a str,
    },
}

/// Handles of identities, deduplicated in order.
pub fn handles_of<'a>(ids: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        let h = user_of(id).to_string();
        if !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

/// The handles a membership event's log line names (its body is a JSON
/// array of identities).
pub fn member_handles(row: &LogRow) -> Vec<String> {
    let ids: Vec<String> = serde_json::from_str(&row.body).unwrap_or_default();
    handles_of(&ids)
}

/// Renders one log line as the `sync`/`listen` output (JSON or human).
pub fn render_log_line(json: bool, group_id: &[u8], group_label: &str, row: &LogRow) -> String {
    if json {
        let entry = match row.kind.as_str() {
            "text" => JsonEntry::Text {
                sender: &row.sender,
                text: &row.body,
            },
            "name" => JsonEntry::Name {
                event: "name",
                name: &row.body,
            },
            "forged" => JsonEntry::Forged {
                event: "forged",
                sender: &row.sender,
                reason: &row.body,
            },
            kind => JsonEntry::Members {
                event: kind,
                members: member_handles(row),
            },
        };
        let line = JsonLine {
            group: hex::encode(group_id),
            seq: row.seq,
            entry,
        };
        return serde_json::to_string(&line).unwrap_or_default();
    }
    match row.kind.as_str() {
        "text" => format!("[{group_label}] {}: {}", row.sender, row.body),
        "name" => format!(
            "[{group_label}] * {} named the group {:?}",
            row.sender, row.body
        ),
        "forged" => format!("[{group_label}] {}", forged_text(row)),
        kind => {
            let who = member_handles(row).join(", ");
            match kind {
                "joined" => format!("[{group_label}] * you joined (members: {who})"),
                "left" => format!("[{group_label}] * you left"),
                _ if row.sender.is_empty() => format!("[{group_label}] * {kind}: {who}"),
                _ => format!("[{group_label}] * {} {kind} {who}", row.sender),
            }
        }
    }
}

/// The human words for a refused entry (without the group label).
pub fn forged_text(row: &LogRow) -> String {
    if row.sender.is_empty() {
        format!(
            "!! REFUSED an invitation that does not authenticate: {}",
            row.body
        )
    } else {
        format!(
            "!! REFUSED a message the server attributes to {}: {}",
            row.sender, row.body
        )
    }
}

/// Renders an alert (see [`crate::store::Alert`]) as a line: JSON
/// `{"warning":"<kind>","user":"bob",...}` with the alert's details, or
/// words for people.
pub fn render_alert(json: bool, alert: &Alert) -> String {
    let details: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&alert.body).unwrap_or_default();
    if json {
        /// `warning` and `user` first, then the details (sorted).
        #[derive(Serialize)]
        struct AlertLine<'a> {
            warning: &'a str,
            user: &'a str,
            #[serde(flatten)]
            details: &'a serde_json::Map<String, serde_json::Value>,
        }
        let line = AlertLine {
            warning: &alert.kind,
            user: &alert.user_id,
            details: &details,
        };
        return serde_json::to_string(&line).unwrap_or_default();
    }
    let list = |k: &str| -> Vec<String> {
        details
            .get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (added, removed, rekeyed) = (list("added"), list("removed"), list("rekeyed"));
    let mut what = Vec::new();
    if !added.is_empty() {
        what.push(format!("new: {}", added.join(", ")));
    }
    if !removed.is_empty() {
        what.push(format!("removed: {}", removed.join(", ")));
    }
    if !rekeyed.is_empty() {
        what.push(format!("KEY CHANGED: {}", rekeyed.join(", ")));
    }
    let what = what.join("; ");
    let user = &alert.user_id;
    match alert.kind.as_str() {
        ALERT_OWN_DEVICES_CHANGED => format!(
            "!! WARNING: the devices of your account changed ({what}). \
             If you did not do this, someone else can read your messages: \
             check `hush device list` and revoke what you do not know"
        ),
        _ => {
            let was = if details.get("was_verified").and_then(|v| v.as_bool()) == Some(true) {
                format!(" {user} was verified and is not any more.")
            } else {
                String::new()
            };
            format!(
                "!! WARNING: {user}'s devices changed ({what}).{was} \
                 Compare safety numbers again: hush verify {user}"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, body: &str) -> LogRow {
        LogRow {
            seq: 7,
            sender: "alice".into(),
            kind: kind.into(),
            body: body.into(),
            ts_ms: 0,
        }
    }

    #[test]
    fn text_line_has_exact_shape() {
        let s = render_log_line(true, &[0xab, 0xcd], "friends", &row("text", "hi \"you\""));
        assert_eq!(
            s,
            r#"{"group":"abcd","seq":7,"sender":"alice","text":"hi \"you\""}"#
        );
        assert_eq!(
            render_log_line(false, &[0xab], "friends", &row("text", "hi")),
            "[friends] alice: hi"
        );
    }

    #[test]
    fn event_lines() {
        let s = render_log_line(
            true,
            &[1],
            "g",
            &row("added", r#"["bob/aaaa","bob/bbbb","carol/cccc"]"#),
        );
        assert_eq!(
            s,
            r#"{"group":"01","seq":7,"event":"added","members":["bob","carol"]}"#
        );
        let s = render_log_line(true, &[1], "g", &row("name", "friends"));
        assert_eq!(
            s,
            r#"{"group":"01","seq":7,"event":"name","name":"friends"}"#
        );
    }

    #[test]
    fn forged_lines_and_alerts() {
        let s = render_log_line(true, &[1], "g", &row("forged", "signed as bob/b1"));
        assert_eq!(
            s,
            r#"{"group":"01","seq":7,"event":"forged","sender":"alice","reason":"signed as bob/b1"}"#
        );
        let s = render_log_line(false, &[1], "g", &row("forged", "signed as bob/b1"));
        assert_eq!(
            s,
            "[g] !! REFUSED a message the server attributes to alice: signed as bob/b1"
        );
        let alert = Alert {
            id: 1,
            user_id: "bob".into(),
            kind: "devices_changed".into(),
            body: r#"{"added":["b2"],"removed":[],"rekeyed":[],"was_verified":true}"#.into(),
            ts_ms: 0,
        };
        assert_eq!(
            render_alert(true, &alert),
            r#"{"warning":"devices_changed","user":"bob","added":["b2"],"rekeyed":[],"removed":[],"was_verified":true}"#
        );
        let human = render_alert(false, &alert);
        assert!(human.contains("bob's devices changed (new: b2)"), "{human}");
        assert!(
            human.contains("bob was verified and is not any more"),
            "{human}"
        );
        assert!(human.contains("hush verify bob"), "{human}");
    }
}
