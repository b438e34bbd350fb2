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

/// `handle`, or "you" when it is this user's.
fn person<'a>(handle: &'a str, me: &str) -> &'a str {
    if handle == me {
        "you"
    } else {
        handle
    }
}

/// The words for a membership or name event as `me` reads it: own actions
/// in the first person ("you added bob", "alice removed you"), a leave as a
/// leave ("bob left"). Texts and refused entries have their own renderings.
pub fn event_text(row: &LogRow, me: &str) -> String {
    let members = member_handles(row);
    let who = members
        .iter()
        .map(|h| person(h, me))
        .collect::<Vec<_>>()
        .join(", ");
    let actor = person(&row.sender, me);
    match row.kind.as_str() {
        "name" => format!("{actor} named the group {:?}", row.body),
        "joined" => format!("you joined (members: {})", members.join(", ")),
        "left" if members.is_empty() || row.sender == me => "you left".to_string(),
        "left" => format!("{who} left"),
        // An external join: the sender added itself (a new device).
        "added" if members.len() == 1 && members[0] == row.sender => {
            format!("{actor} joined from a new device")
        }
        kind if row.sender.is_empty() => format!("{kind}: {who}"),
        kind => format!("{actor} {kind} {who}"),
    }
}

/// The times to show beside rows in seq order: each row's own time, but
/// never later than the time of a row after it. Entries carry the server's
/// time; the rows this device wrote itself on joining carry the local
/// clock at processing, which is later than when the entry happened, and
/// would otherwise show out of order ("03:45 you joined" above "03:44 dave
/// named the group").
pub fn display_times(rows: &[LogRow]) -> Vec<u64> {
    let mut out: Vec<u64> = rows.iter().map(|r| r.ts_ms).collect();
    for i in (0..out.len().saturating_sub(1)).rev() {
        out[i] = out[i].min(out[i + 1]);
    }
    out
}

/// Splits `text` into rows of at most `width` characters, at spaces where
/// it can (a word longer than a row is cut), keeping the text's own line
/// breaks. Never returns an empty list.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut rows = Vec::new();
    for line in text.split('\n') {
        let mut row = String::new();
        let mut len = 0;
        for word in line.split(' ') {
            let mut word: Vec<char> = word.chars().collect();
            let sep = usize::from(len > 0);
            if len + sep + word.len() > width && len > 0 {
                rows.push(std::mem::take(&mut row));
                len = 0;
            } else if sep == 1 {
                row.push(' ');
                len += 1;
            }
            while word.len() > width - len {
                let rest = word.split_off(width - len);
                row.extend(word);
                rows.push(std::mem::take(&mut row));
                len = 0;
                word = rest;
            }
            len += word.len();
            row.extend(word);
        }
        rows.push(row);
    }
    rows
}

/// The part of an input line that fits in `width` columns with the cursor
/// at its end, and the cursor's column: the line scrolls left as it grows.
pub fn input_window(input: &str, width: usize) -> (String, usize) {
    let chars: Vec<char> = input.chars().collect();
    // One column stays free for the cursor.
    let room = width.saturating_sub(1);
    let start = chars.len().saturating_sub(room);
    let visible: String = chars[start..].iter().collect();
    let cursor = chars.len() - start;
    (visible, cursor)
}

/// Renders one log line as the `sync`/`listen` output (JSON or human), as
/// user `me` reads it.
pub fn render_log_line(
    json: bool,
    group_id: &[u8],
    group_label: &str,
    row: &LogRow,
    me: &str,
) -> String {
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
        "forged" => format!("[{group_label}] {}", forged_text(row)),
        _ => format!("[{group_label}] * {}", event_text(row, me)),
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
        let s = render_log_line(
            true,
            &[0xab, 0xcd],
            "friends",
            &row("text", "hi \"you\""),
            "zed",
        );
        assert_eq!(
            s,
            r#"{"group":"abcd","seq":7,"sender":"alice","text":"hi \"you\""}"#
        );
        assert_eq!(
            render_log_line(false, &[0xab], "friends", &row("text", "hi"), "zed"),
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
            "zed",
        );
        assert_eq!(
            s,
            r#"{"group":"01","seq":7,"event":"added","members":["bob","carol"]}"#
        );
        let s = render_log_line(true, &[1], "g", &row("name", "friends"), "zed");
        assert_eq!(
            s,
            r#"{"group":"01","seq":7,"event":"name","name":"friends"}"#
        );
    }

    #[test]
    fn forged_lines_and_alerts() {
        let s = render_log_line(true, &[1], "g", &row("forged", "signed as bob/b1"), "zed");
        assert_eq!(
            s,
            r#"{"group":"01","seq":7,"event":"forged","sender":"alice","reason":"signed as bob/b1"}"#
        );
        let s = render_log_line(false, &[1], "g", &row("forged", "signed as bob/b1"), "zed");
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

    fn ev(sender: &str, kind: &str, body: &str) -> LogRow {
        LogRow {
            sender: sender.into(),
            ..row(kind, body)
        }
    }

    #[test]
    fn events_read_in_the_first_person_and_leaves_as_leaves() {
        let added = ev("alice", "added", r#"["bob/b1","bob/b2"]"#);
        assert_eq!(event_text(&added, "alice"), "you added bob");
        assert_eq!(event_text(&added, "bob"), "alice added you");
        assert_eq!(event_text(&added, "carol"), "alice added bob");
        let linked = ev("alice", "added", r#"["alice/a2"]"#);
        assert_eq!(event_text(&linked, "alice"), "you joined from a new device");
        assert_eq!(event_text(&linked, "bob"), "alice joined from a new device");
        let removed = ev("alice", "removed", r#"["bob/b1"]"#);
        assert_eq!(event_text(&removed, "bob"), "alice removed you");
        let left = ev("bob", "left", r#"["bob/b1"]"#);
        assert_eq!(event_text(&left, "alice"), "bob left");
        assert_eq!(event_text(&left, "bob"), "you left");
        let two = ev("bob", "left", r#"["bob/b1","carol/c1"]"#);
        assert_eq!(event_text(&two, "alice"), "bob, carol left");
        assert_eq!(
            event_text(&ev("alice", "name", "friends"), "alice"),
            "you named the group \"friends\""
        );
        assert_eq!(
            event_text(&ev("", "joined", r#"["alice/a1","bob/b1"]"#), "bob"),
            "you joined (members: alice, bob)"
        );
        assert_eq!(
            render_log_line(false, &[1], "g", &added, "alice"),
            "[g] * you added bob"
        );
        // JSON lines stay as they were: the handles, no "you".
        assert_eq!(
            render_log_line(true, &[1], "g", &left, "alice"),
            r#"{"group":"01","seq":7,"event":"left","members":["bob"]}"#
        );
    }

    #[test]
    fn times_never_run_backwards() {
        let at = |seq, ts_ms| LogRow {
            seq,
            ts_ms,
            ..row("text", "x")
        };
        // seq 3 was stamped locally at 03:45; seq 4 happened at 03:44.
        let rows = [at(2, 100), at(3, 225_000), at(4, 224_000), at(5, 300_000)];
        assert_eq!(display_times(&rows), vec![100, 224_000, 224_000, 300_000]);
        assert!(display_times(&[]).is_empty());
    }

    #[test]
    fn wraps_at_spaces_and_cuts_long_words() {
        assert_eq!(wrap("hello world", 20), vec!["hello world"]);
        assert_eq!(wrap("hello big world", 9), vec!["hello big", "world"]);
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("ab cdefghij", 4), vec!["ab", "cdef", "ghij"]);
        assert_eq!(wrap("one\ntwo", 10), vec!["one", "two"]);
        assert_eq!(wrap("", 10), vec![""]);
        for r in wrap(
            "a fairly long message that goes on and on past the edge",
            12,
        ) {
            assert!(r.chars().count() <= 12, "{r:?}");
        }
    }

    #[test]
    fn the_input_line_scrolls() {
        assert_eq!(input_window("hi", 10), ("hi".to_string(), 2));
        assert_eq!(input_window("abcdefghij", 5), ("ghij".to_string(), 4));
        assert_eq!(input_window("", 5), (String::new(), 0));
    }
}
