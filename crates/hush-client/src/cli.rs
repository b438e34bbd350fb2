//! The `hush` command line: argument types (clap) and the commands, with
//! human or `--json` output. Output shapes (`--json`, one object per line):
//!
//! ```text
//! register         {"user_id":"alice","device_id":"0123456789abcdef"}
//! group create     {"group":"<hex>","name":"friends"}
//! group add        {"group":"<hex>","seq":3,"epoch":1,"added":["bob"],"devices":["bob/…"]}
//! group remove     {"group":"<hex>","seq":4,"epoch":2,"removed":["bob"],"devices":["bob/…"]}
//! group leave      {"group":"<hex>","seq":5}
//! group update     {"group":"<hex>","seq":6,"epoch":3}
//! group list       {"group":"<hex>","name":"friends","status":"active","epoch":2,"last_seq":5,"members":["alice","bob"]}
//! send             {"group":"<hex>","seq":6}
//! sync / listen    {"group":"<hex>","seq":6,"sender":"alice","text":"hi"}
//!                  {"group":"<hex>","seq":3,"event":"added","members":["bob"]}
//!                  (events: added, removed, joined, left, name — "name" has "name" instead of "members")
//! device link-code {"code":"…","expires_at_ms":…}
//! device link      {"user_id":"alice","device_id":"…","joined":["<hex>",…]}
//! errors (stdout)  {"error":"NOT_FOUND","message":"…"}   plus one line on stderr, exit code 1
//! ```

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::client::{Client, CommitDone};
use crate::conn::Transport;
use crate::error::{ClientError, Result};
use crate::mls::user_of;
use crate::store::{GroupStatus, LogRow};

/// Hush end-to-end encrypted group chat client.
#[derive(Debug, Parser)]
#[command(name = "hush", version, about)]
pub struct Cli {
    /// Server URL.
    #[arg(long, env = "HUSH_SERVER", global = true)]
    pub server: Option<String>,
    /// Directory holding this device's state (default ~/.hush).
    #[arg(long, env = "HUSH_HOME", global = true)]
    pub home: Option<PathBuf>,
    /// Print JSON objects, one per line.
    #[arg(long, global = true)]
    pub json: bool,
    /// Transport: ws (WebSocket), sse (Server-Sent Events + HTTP requests),
    /// or auto (WebSocket, falling back to SSE when the upgrade fails).
    #[arg(long, env = "HUSH_TRANSPORT", global = true, default_value_t = Transport::Auto)]
    pub transport: Transport,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a user with this home directory as its first device.
    Register {
        /// [a-z0-9_]{3,32}
        handle: String,
    },
    /// Group management.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Send a text message; prints its seq.
    Send {
        /// Group name, hex id, or unique hex-id prefix.
        group: String,
        /// The text.
        text: String,
    },
    /// Fetch and print everything new, then exit.
    Sync,
    /// Like sync, then stay connected and print messages as they arrive.
    Listen,
    /// Interactive chat in a group.
    Chat {
        /// Group name, hex id, or unique hex-id prefix.
        group: String,
    },
    /// Device linking.
    #[command(subcommand)]
    Device(DeviceCommand),
}

/// `hush group ...`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group; prints its id.
    Create {
        /// Display name (end-to-end encrypted; never sent in clear).
        name: String,
    },
    /// Add users (all their devices).
    Add {
        /// Group name, hex id, or unique hex-id prefix.
        group: String,
        /// Handles to add.
        #[arg(required = true)]
        handles: Vec<String>,
    },
    /// Remove users (all their devices).
    Remove {
        /// Group name, hex id, or unique hex-id prefix.
        group: String,
        /// Handles to remove.
        #[arg(required = true)]
        handles: Vec<String>,
    },
    /// Leave a group.
    Leave {
        /// Group name, hex id, or unique hex-id prefix.
        group: String,
    },
    /// Rotate this device's keys in the group (MLS self-update); prints the new epoch.
    Update {
        /// Group name, hex id, or unique hex-id prefix.
        group: String,
    },
    /// List this device's groups.
    List,
}

/// `hush device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// On an existing device: print a one-time code for linking a new one.
    LinkCode,
    /// On a new device (empty home): become a device of the code's user.
    Link {
        /// The code printed by `hush device link-code`.
        code: String,
    },
}

impl Cli {
    /// The home directory: `--home`, else `$HOME/.hush`.
    pub fn home_dir(&self) -> PathBuf {
        self.home.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".hush")
        })
    }
}

/// Prints results: JSON lines or human text.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    json: bool,
}

impl Out {
    /// An output in JSON or human mode.
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    fn line(&self, s: &str) {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (e.g. `| head`) is not worth failing a command for.
        let _ = writeln!(stdout, "{s}");
        let _ = stdout.flush();
    }

    fn emit<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        if self.json {
            match serde_json::to_string(value) {
                Ok(s) => self.line(&s),
                Err(e) => tracing::error!(error = %e, "json encoding failed"),
            }
        } else {
            self.line(&human());
        }
    }

    /// Prints an error: one line on stderr, and with `--json` a JSON object
    /// on stdout.
    pub fn error(&self, e: &ClientError) {
        eprintln!("hush: {e}");
        if self.json {
            #[derive(Serialize)]
            struct ErrorOut<'a> {
                error: &'a str,
                message: String,
            }
            if let Ok(s) = serde_json::to_string(&ErrorOut {
                error: e.code(),
                message: e.to_string(),
            }) {
                self.line(&s);
            }
        }
    }
}

/// A text line of `sync`/`listen`. Field order and names are a contract.
#[derive(Debug, Serialize)]
pub struct TextLine<'a> {
    /// Hex group id.
    pub group: String,
    /// Timeline seq.
    pub seq: u64,
    /// Sender handle.
    pub sender: &'a str,
    /// The text.
    pub text: &'a str,
}

/// A membership event line of `sync`/`listen`.
#[derive(Debug, Serialize)]
pub struct EventLine<'a> {
    /// Hex group id.
    pub group: String,
    /// Timeline seq.
    pub seq: u64,
    /// "added", "removed", "joined", "left".
    pub event: &'a str,
    /// Handles concerned (deduplicated).
    pub members: Vec<String>,
}

/// A name event line of `sync`/`listen`.
#[derive(Debug, Serialize)]
pub struct NameLine<'a> {
    /// Hex group id.
    pub group: String,
    /// Timeline seq.
    pub seq: u64,
    /// Always "name".
    pub event: &'a str,
    /// The group's new name.
    pub name: &'a str,
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

/// Renders one log line as the `sync`/`listen` output (JSON or human).
pub fn render_log_line(json: bool, group_id: &[u8], group_label: &str, row: &LogRow) -> String {
    let group = hex::encode(group_id);
    match row.kind.as_str() {
        "text" => {
            if json {
                serde_json::to_string(&TextLine {
                    group,
                    seq: row.seq,
                    sender: &row.sender,
                    text: &row.body,
                })
                .unwrap_or_default()
            } else {
                format!("[{group_label}] {}: {}", row.sender, row.body)
            }
        }
        "name" => {
            if json {
                serde_json::to_string(&NameLine {
                    group,
                    seq: row.seq,
                    event: "name",
                    name: &row.body,
                })
                .unwrap_or_default()
            } else {
                format!(
                    "[{group_label}] * {} named the group {:?}",
                    row.sender, row.body
                )
            }
        }
        kind => {
            let ids: Vec<String> = serde_json::from_str(&row.body).unwrap_or_default();
            let members = handles_of(&ids);
            if json {
                serde_json::to_string(&EventLine {
                    group,
                    seq: row.seq,
                    event: kind,
                    members,
                })
                .unwrap_or_default()
            } else {
                let who = members.join(", ");
                match kind {
                    "joined" => format!("[{group_label}] * you joined (members: {who})"),
                    "left" => format!("[{group_label}] * you left"),
                    _ if row.sender.is_empty() => format!("[{group_label}] * {kind}: {who}"),
                    _ => format!("[{group_label}] * {} {kind} {who}", row.sender),
                }
            }
        }
    }
}

fn print_unshown(client: &Client, out: Out) -> Result<()> {
    let lines = client.take_unshown()?;
    for (gid, row) in lines {
        let label = client
            .db()
            .group(&gid)?
            .map(|g| g.display_name())
            .unwrap_or_else(|| hex::encode(&gid));
        out.line(&render_log_line(out.json, &gid, &label, &row));
    }
    Ok(())
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let out = Out::new(cli.json);
    let home = cli.home_dir();
    let mut client = Client::open(&home, cli.server.as_deref())?;
    client.set_transport(cli.transport);
    let r = dispatch(&mut client, cli.command, out).await;
    client.close().await;
    r
}

async fn dispatch(client: &mut Client, command: Command, out: Out) -> Result<()> {
    match command {
        Command::Register { handle } => {
            let me = client.register(&handle).await?;
            #[derive(Serialize)]
            struct R<'a> {
                user_id: &'a str,
                device_id: &'a str,
            }
            out.emit(
                &R {
                    user_id: &me.user_id,
                    device_id: &me.device_id,
                },
                || format!("registered {} (device {})", me.user_id, me.device_id),
            );
        }
        Command::Device(DeviceCommand::Link { code }) => {
            let joined = client.link_device(&code).await?;
            let me = client.me()?;
            #[derive(Serialize)]
            struct R<'a> {
                user_id: &'a str,
                device_id: &'a str,
                joined: &'a [String],
            }
            out.emit(
                &R {
                    user_id: &me.user_id,
                    device_id: &me.device_id,
                    joined: &joined,
                },
                || {
                    format!(
                        "linked as {} (device {}); joined {} group(s)",
                        me.user_id,
                        me.device_id,
                        joined.len()
                    )
                },
            );
        }
        Command::Device(DeviceCommand::LinkCode) => {
            client.connect().await?;
            let code = client.link_code().await?;
            out.emit(
                &serde_json::json!({"code": code.code, "expires_at_ms": code.expires_at_ms}),
                || code.code.clone(),
            );
        }
        Command::Group(GroupCommand::Create { name }) => {
            client.connect().await?;
            let g = client.create_group(&name).await?;
            #[derive(Serialize)]
            struct R<'a> {
                group: String,
                name: &'a str,
            }
            out.emit(
                &R {
                    group: g.hex_id(),
                    name: &name,
                },
                || g.hex_id(),
            );
        }
        Command::Group(GroupCommand::Add { group, handles }) => {
            client.connect().await?;
            let gid = client.group(&group)?.hex_id();
            let done = client.add_members(&group, &handles).await?;
            print_commit(out, &gid, "added", done.as_ref());
        }
        Command::Group(GroupCommand::Remove { group, handles }) => {
            client.connect().await?;
            let gid = client.group(&group)?.hex_id();
            let done = client.remove_members(&group, &handles).await?;
            print_commit(out, &gid, "removed", done.as_ref());
        }
        Command::Group(GroupCommand::Leave { group }) => {
            client.connect().await?;
            let g = client.group(&group)?;
            let seq = client.leave(&group).await?;
            out.emit(
                &serde_json::json!({"group": g.hex_id(), "seq": seq}),
                || format!("left {}", g.display_name()),
            );
        }
        Command::Group(GroupCommand::Update { group }) => {
            client.connect().await?;
            let g = client.group(&group)?;
            let done = client.self_update(&group).await?;
            let gid = g.hex_id();
            out.emit(&update_line(&gid, &done), || {
                format!(
                    "rotated keys in {}: epoch {} (seq {})",
                    g.display_name(),
                    done.epoch,
                    done.seq
                )
            });
        }
        Command::Group(GroupCommand::List) => {
            // Listing is local, but first apply what is pending.
            client.connect().await?;
            for v in client.groups()? {
                let status = match v.row.status {
                    GroupStatus::Active => "active",
                    GroupStatus::Left => "left",
                    GroupStatus::Removed => "removed",
                };
                #[derive(Serialize)]
                struct R<'a> {
                    group: String,
                    name: Option<&'a str>,
                    status: &'a str,
                    epoch: Option<u64>,
                    last_seq: u64,
                    members: Vec<String>,
                }
                let members = handles_of(&v.members);
                out.emit(
                    &R {
                        group: v.row.hex_id(),
                        name: v.row.name.as_deref(),
                        status,
                        epoch: v.epoch,
                        last_seq: v.row.last_seq,
                        members: members.clone(),
                    },
                    || {
                        format!(
                            "{}  {:<20} {:<8} {}",
                            v.row.hex_id(),
                            v.row.name.as_deref().unwrap_or("-"),
                            status,
                            members.join(",")
                        )
                    },
                );
            }
        }
        Command::Send { group, text } => {
            client.connect().await?;
            let g = client.group(&group)?;
            let seq = client.send_text(&group, &text).await?;
            out.emit(
                &serde_json::json!({"group": g.hex_id(), "seq": seq}),
                || seq.to_string(),
            );
        }
        Command::Sync => {
            client.connect().await?;
            print_unshown(client, out)?;
        }
        Command::Listen => listen(client, out).await?,
        Command::Chat { group } => {
            client.connect().await?;
            crate::tui::chat(client, &group).await?;
        }
    }
    Ok(())
}

/// The `group update` line: `{"group":"<hex>","seq":N,"epoch":E}` (a struct,
/// not `json!`, so the fields keep this order).
#[derive(Debug, Serialize)]
struct UpdateLine<'a> {
    group: &'a str,
    seq: u64,
    epoch: u64,
}

fn update_line<'a>(gid: &'a str, done: &CommitDone) -> UpdateLine<'a> {
    UpdateLine {
        group: gid,
        seq: done.seq,
        epoch: done.epoch,
    }
}

fn print_commit(out: Out, gid: &str, what: &str, done: Option<&CommitDone>) {
    let (seq, epoch, ids) = match done {
        Some(d) => (
            Some(d.seq),
            Some(d.epoch),
            if what == "added" {
                d.added.clone()
            } else {
                d.removed.clone()
            },
        ),
        None => (None, None, Vec::new()),
    };
    let handles = handles_of(&ids);
    let mut v = serde_json::json!({"group": gid, "seq": seq, "epoch": epoch, "devices": ids});
    v[what] = serde_json::json!(handles);
    out.emit(&v, || match done {
        Some(d) => format!("{what} {} (seq {})", handles.join(", "), d.seq),
        None => format!("nothing {what}: already up to date"),
    });
}

/// `hush listen`: sync, then print as events arrive; reconnects with
/// backoff; exits on Ctrl-C.
async fn listen(client: &mut Client, out: Out) -> Result<()> {
    let mut backoff = std::time::Duration::from_millis(250);
    loop {
        if !client.is_connected() {
            match client.connect().await {
                Ok(()) => backoff = std::time::Duration::from_millis(250),
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "connect failed; retrying");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        print_unshown(client, out)?;
        let ev = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            ev = client.wait_event() => ev,
        };
        let r = match ev {
            Ok(p) => client.handle(p).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "connection lost; reconnecting");
                client.close().await;
            }
            Err(e) => return Err(e),
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
    fn update_line_has_exact_shape() {
        let done = CommitDone {
            seq: 6,
            epoch: 3,
            added: vec![],
            removed: vec![],
        };
        assert_eq!(
            serde_json::to_string(&update_line("abcd", &done)).unwrap(),
            r#"{"group":"abcd","seq":6,"epoch":3}"#
        );
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "hush", "--json", "--home", "/tmp/x", "group", "add", "g", "bob", "carol",
        ])
        .unwrap();
        assert!(cli.json);
        match cli.command {
            Command::Group(GroupCommand::Add { group, handles }) => {
                assert_eq!(group, "g");
                assert_eq!(handles, vec!["bob", "carol"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Cli::try_parse_from(["hush", "group", "add", "g"]).is_err());
        let cli = Cli::try_parse_from(["hush", "group", "update", "friends"]).unwrap();
        match cli.command {
            Command::Group(GroupCommand::Update { group }) => assert_eq!(group, "friends"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(Cli::try_parse_from(["hush", "group", "update"]).is_err());
        let cli =
            Cli::try_parse_from(["hush", "send", "g", "hello world", "--server", "http://h:1"])
                .unwrap();
        assert_eq!(cli.server.as_deref(), Some("http://h:1"));
        assert_eq!(cli.transport, Transport::Auto);
        let cli = Cli::try_parse_from(["hush", "--transport", "sse", "sync"]).unwrap();
        assert_eq!(cli.transport, Transport::Sse);
        assert!(Cli::try_parse_from(["hush", "--transport", "smoke", "sync"]).is_err());
    }
}
