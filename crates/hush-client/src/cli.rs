//! The `hush` command line: argument types (clap) and the commands, with
//! human or `--json` output. Output shapes (`--json`, one object per line):
//!
//! ```text
//! register         {"user_id":"alice","device_id":"0123456789abcdef"}
//! group create     {"group":"<hex>","name":"friends"}
//! group add        {"added":["bob"],"devices":["bob/…"],"epoch":1,"group":"<hex>","seq":3}
//! group remove     {"devices":["bob/…"],"epoch":2,"group":"<hex>","removed":["bob"],"seq":4}
//! group leave      {"group":"<hex>","seq":5}
//! group update     {"group":"<hex>","seq":6,"epoch":3}
//! group list       {"group":"<hex>","name":"friends","status":"active","epoch":2,"last_seq":5,"members":["alice","bob"]}
//! send             {"group":"<hex>","seq":6}
//! sync / listen    {"group":"<hex>","seq":6,"sender":"alice","text":"hi"}
//!                  {"group":"<hex>","seq":3,"event":"added","members":["bob"]}
//!                  (events: added, removed, joined, left, name — "name" has "name" instead of "members")
//! device link-code {"code":"…","expires_at_ms":…} then {"linked":"<device>","added_to":["<hex>",…],"failed":[…]}
//! device link      {"user_id":"alice","device_id":"…","joined":["<hex>",…]}
//! device list      {"created_at_ms":…,"device_id":"…","signature_key":"<hex>","this_device":true}   (one line per device)
//! device revoke    {"device_id":"…","removed_from":[{"group":"<hex>","seq":7},…]}
//! verify           {"user":"bob","safety_number":"<60 digits>","verified":false,"changed":false,"devices":["…"],"own_devices":["…"]}
//! warnings         {"warning":"devices_changed","user":"bob","added":["…"],"rekeyed":[],"removed":[],"was_verified":true}
//!                  (sync/listen print them among their lines; other commands on stderr, in words;
//!                  kinds: devices_changed, own_devices_changed)
//! refused entries  {"group":"<hex>","seq":7,"event":"forged","sender":"mallory","reason":"…"}
//! errors (stdout)  {"error":"NOT_FOUND","message":"…"}   plus one line on stderr, exit code 1
//! ```
//!
//! Lines built with `serde_json::json!` list their keys in alphabetical
//! order (serde_json's map is sorted); where an order is promised, a struct
//! keeps it (`group update`, `group list`, the `sync`/`listen` lines).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::backoff::Backoff;
use crate::client::{Client, CommitDone};
use crate::conn::Transport;
use crate::display::{handles_of, render_alert, render_log_line};
use crate::error::{short_id, ClientError, Result};
use crate::store::GroupStatus;
use crate::trust::format_number;

/// `hush listen`: the wait before reconnecting after a failed connect.
const LISTEN_BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// `hush listen`: the longest wait between two connect attempts (the wait
/// doubles from [`LISTEN_BACKOFF_FIRST`] up to this).
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(10);

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
    /// For https:// servers: trust only the CA certificate(s) in this PEM
    /// file (a private or development CA) instead of the system's roots.
    #[arg(long, env = "HUSH_CA", global = true)]
    pub ca: Option<PathBuf>,
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
    /// Device linking, listing and revocation.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Show the safety number with a user: compare it with theirs (in
    /// person, on a call). The same digits on both sides mean the server
    /// told you both the truth about each other's devices.
    Verify {
        /// The other user's handle.
        handle: String,
        /// Mark the user verified (after comparing the numbers). A change of
        /// their devices later removes the mark, with a warning.
        #[arg(long)]
        mark: bool,
    },
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
    /// On an existing device: print a one-time code for linking a new one,
    /// wait for the new device, and add it to this device's groups.
    LinkCode {
        /// Seconds to wait for the new device (0: print the code and exit).
        #[arg(long, default_value_t = crate::client::LINK_WAIT.as_secs())]
        wait: u64,
    },
    /// On a new device (empty home): become a device of the code's user and
    /// wait to be added to its groups.
    Link {
        /// The code printed by `hush device link-code` (or the web page).
        code: String,
        /// Seconds to wait for the user's other devices to add this one;
        /// the groups nobody added it to are then joined by external commit.
        #[arg(long, default_value_t = crate::client::LINK_WELCOME_WAIT.as_secs())]
        wait: u64,
    },
    /// List this user's devices.
    List,
    /// Revoke another device of this user (lost, stolen, or not yours): it
    /// can no longer connect, and this device removes it from every group.
    Revoke {
        /// The device id (or a unique prefix), from `hush device list`.
        device: String,
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

fn print_unshown(client: &Client, out: Out) -> Result<()> {
    for alert in client.db().take_alerts()? {
        out.line(&render_alert(out.json, &alert));
    }
    let me = client.me()?.user_id.clone();
    let lines = client.take_unshown()?;
    for (gid, row) in lines {
        let label = client
            .db()
            .group(&gid)?
            .map(|g| g.display_name())
            .unwrap_or_else(|| hex::encode(&gid));
        out.line(&render_log_line(out.json, &gid, &label, &row, &me));
    }
    Ok(())
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let out = Out::new(cli.json);
    let home = cli.home_dir();
    let creates_account = matches!(
        cli.command,
        Command::Register { .. } | Command::Device(DeviceCommand::Link { .. })
    );
    if !creates_account && !home.join(crate::store::DB_FILE).exists() {
        // A mistyped --home must not silently start a new, empty state.
        return Err(ClientError::NoAccount { home });
    }
    let mut client = Client::open(&home, cli.server.as_deref())?;
    client.set_transport(cli.transport);
    if let Some(ca) = &cli.ca {
        client.set_trust(crate::tls::Trust::ca_file(ca)?)?;
    }
    let r = dispatch(&mut client, cli.command, out).await;
    client.close().await;
    // Warnings that no `sync`/`listen` printed go to stderr, once.
    if let Ok(alerts) = client.db().take_alerts() {
        for alert in alerts {
            eprintln!("hush: {}", render_alert(false, &alert));
        }
    }
    r
}

/// Runs one command; every command but `register`, `device link` and
/// `listen` (which connects itself, again and again) connects first.
async fn dispatch(client: &mut Client, command: Command, out: Out) -> Result<()> {
    match command {
        Command::Register { handle } => register(client, &handle, out).await,
        Command::Device(command) => device(client, command, out).await,
        Command::Group(GroupCommand::List) => {
            // Listing is local; connecting first applies what is pending,
            // and without a server the local state is listed as it is.
            match client.connect().await {
                Ok(()) => {}
                Err(e @ ClientError::Unreachable { .. }) => {
                    eprintln!("hush: offline, listing local state: {e}");
                }
                Err(e) => return Err(e),
            }
            list_groups(client, out)
        }
        Command::Group(command) => {
            client.connect().await?;
            group(client, command, out).await
        }
        Command::Send { group, text } => {
            client.connect().await?;
            let g = client.group(&group)?;
            let seq = client.send_text(&group, &text).await?;
            out.emit(
                &serde_json::json!({"group": g.hex_id(), "seq": seq}),
                || seq.to_string(),
            );
            Ok(())
        }
        Command::Sync => {
            client.connect().await?;
            print_unshown(client, out)
        }
        Command::Listen => listen(client, out).await,
        Command::Chat { group } => {
            client.connect().await?;
            crate::tui::chat(client, &group).await
        }
        Command::Verify { handle, mark } => {
            client.connect().await?;
            verify(client, &handle, mark, out).await
        }
    }
}

/// `hush verify HANDLE [--mark]`.
async fn verify(client: &mut Client, handle: &str, mark: bool, out: Out) -> Result<()> {
    let n = if mark {
        client.mark_verified(handle).await?
    } else {
        client.safety_number(handle).await?
    };
    #[derive(Serialize)]
    struct R<'a> {
        user: &'a str,
        safety_number: &'a str,
        verified: bool,
        changed: bool,
        devices: &'a [String],
        own_devices: &'a [String],
    }
    out.emit(
        &R {
            user: &n.user_id,
            safety_number: &n.number,
            verified: n.verified,
            changed: n.changed,
            devices: &n.devices,
            own_devices: &n.own_devices,
        },
        || {
            let digits = format_number(&n.number);
            let (first, second) = digits.split_at(digits.len().min(35));
            let devices = match n.devices.len() {
                1 => "1 device".to_string(),
                k => format!("{k} devices"),
            };
            let state = if n.verified {
                format!("{} ({devices}) is verified.", n.user_id)
            } else {
                format!(
                    "{} ({devices}) is not verified. If both of you see these digits: hush verify {} --mark",
                    n.user_id, n.user_id
                )
            };
            let changed = if n.changed {
                format!("\n!! {}'s devices changed since you last looked.", n.user_id)
            } else {
                String::new()
            };
            format!(
                "Safety number with {} (the same on both sides; compare it in person or on a call):\n    {}\n    {}{changed}\n{state}",
                n.user_id,
                first.trim(),
                second.trim()
            )
        },
    );
    Ok(())
}

/// `hush register HANDLE`.
async fn register(client: &mut Client, handle: &str, out: Out) -> Result<()> {
    let me = client.register(handle).await?;
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
    Ok(())
}

/// `hush device link-code`: prints the code, then (unless `--wait 0`)
/// waits for the new device and adds it to this device's groups.
async fn link_code(client: &mut Client, wait: u64, out: Out) -> Result<()> {
    client.connect().await?;
    let known: Vec<String> = client
        .devices()
        .await?
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    let code = client.link_code().await?;
    out.emit(
        &serde_json::json!({"code": code.code, "expires_at_ms": code.expires_at_ms}),
        || {
            if wait == 0 {
                code.code.clone()
            } else {
                format!(
                    "{}\non the new device: hush device link {} (or \"I already have an \
                     account\" on the web page); waiting up to {wait} s...",
                    code.code, code.code
                )
            }
        },
    );
    if wait == 0 {
        return Ok(());
    }
    let Some(linked) = client
        .add_linked_device(&known, Duration::from_secs(wait))
        .await?
    else {
        return Err(ClientError::GaveUp(format!(
            "no new device used the code within {wait} s; run hush device link-code again"
        )));
    };
    let added: Vec<&str> = linked.added_to.iter().map(|(g, _)| g.as_str()).collect();
    out.emit(
        &serde_json::json!({
            "linked": &linked.device_id,
            "added_to": &added,
            "failed": &linked.failed,
        }),
        || {
            let mut s = format!(
                "device {} linked; added it to {} group(s)",
                linked.device_id,
                added.len()
            );
            for (g, why) in &linked.failed {
                s.push_str(&format!("\ncould not add it to {g}: {why}"));
            }
            s
        },
    );
    Ok(())
}

/// `hush device ...`.
async fn device(client: &mut Client, command: DeviceCommand, out: Out) -> Result<()> {
    match command {
        DeviceCommand::Link { code, wait } => {
            let joined = client.link_device(&code, Duration::from_secs(wait)).await?;
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
        DeviceCommand::LinkCode { wait } => link_code(client, wait, out).await?,
        DeviceCommand::List => {
            client.connect().await?;
            for d in client.devices().await? {
                let key = hex::encode(&d.signature_key);
                out.emit(
                    &serde_json::json!({
                        "device_id": &d.device_id,
                        "created_at_ms": d.created_at_ms,
                        "signature_key": &key,
                        "this_device": d.this_device,
                    }),
                    || {
                        let mark = if d.this_device { "  (this device)" } else { "" };
                        format!("{}  key {}…{mark}", d.device_id, &key[..16.min(key.len())])
                    },
                );
            }
        }
        DeviceCommand::Revoke { device } => {
            client.connect().await?;
            let r = client.revoke_device(&device).await?;
            let groups: Vec<serde_json::Value> = r
                .removed_from
                .iter()
                .map(|(g, seq)| serde_json::json!({"group": g, "seq": seq}))
                .collect();
            out.emit(
                &serde_json::json!({"device_id": &r.device_id, "removed_from": groups}),
                || {
                    format!(
                        "revoked {}; removed it from {} group(s)",
                        r.device_id,
                        r.removed_from.len()
                    )
                },
            );
        }
    }
    Ok(())
}

/// `hush group ...`, on a connected client.
async fn group(client: &mut Client, command: GroupCommand, out: Out) -> Result<()> {
    match command {
        GroupCommand::Create { name } => {
            let same: Vec<String> = client
                .groups()?
                .into_iter()
                .filter(|v| {
                    v.row.status == GroupStatus::Active
                        && v.row.name.as_deref() == Some(name.trim())
                })
                .map(|v| short_id(&v.row.hex_id()))
                .collect();
            let g = client.create_group(&name).await?;
            if !same.is_empty() {
                eprintln!(
                    "hush: warning: you already have a group named {:?} (id {}…); \
                     name them apart with their id prefixes, e.g. `hush send {} ...`",
                    name.trim(),
                    same.join("…, id "),
                    short_id(&g.hex_id())
                );
            }
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
        GroupCommand::Add { group, handles } => {
            let gid = client.group(&group)?.hex_id();
            let done = client.add_members(&group, &handles).await?;
            print_commit(out, &gid, "added", done.as_ref());
        }
        GroupCommand::Remove { group, handles } => {
            let gid = client.group(&group)?.hex_id();
            let done = client.remove_members(&group, &handles).await?;
            print_commit(out, &gid, "removed", done.as_ref());
        }
        GroupCommand::Leave { group } => {
            let g = client.group(&group)?;
            let seq = client.leave(&group).await?;
            out.emit(
                &serde_json::json!({"group": g.hex_id(), "seq": seq}),
                || format!("left {}", g.display_name()),
            );
        }
        GroupCommand::Update { group } => {
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
        GroupCommand::List => list_groups(client, out)?,
    }
    Ok(())
}

/// `hush group list`: one line per local group.
fn list_groups(client: &Client, out: Out) -> Result<()> {
    #[derive(Serialize)]
    struct R<'a> {
        group: String,
        name: Option<&'a str>,
        status: &'a str,
        epoch: Option<u64>,
        last_seq: u64,
        members: Vec<String>,
    }
    for v in client.groups()? {
        let status = match v.row.status {
            GroupStatus::Active => "active",
            GroupStatus::Left => "left",
            GroupStatus::Removed => "removed",
        };
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
    let mut backoff = Backoff::new(LISTEN_BACKOFF_FIRST, LISTEN_BACKOFF_MAX);
    loop {
        if !client.is_connected() {
            match client.connect().await {
                Ok(()) => backoff.reset(),
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    // Visibly: a listener that prints nothing looks healthy.
                    eprintln!("hush: {e}; retrying in {}", format_delay(delay));
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
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
                eprintln!("hush: connection lost ({e}); reconnecting");
                client.close().await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A retry delay in words: "250 ms", "1.0 s".
fn format_delay(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_read_well() {
        assert_eq!(format_delay(Duration::from_millis(250)), "250 ms");
        assert_eq!(format_delay(Duration::from_secs(1)), "1.0 s");
        assert_eq!(format_delay(Duration::from_millis(10_000)), "10.0 s");
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
        let cli = Cli::try_parse_from(["hush", "verify", "bob", "--mark"]).unwrap();
        match cli.command {
            Command::Verify { handle, mark } => assert_eq!((handle.as_str(), mark), ("bob", true)),
            other => panic!("unexpected {other:?}"),
        }
        let cli = Cli::try_parse_from(["hush", "--transport", "sse", "sync"]).unwrap();
        assert_eq!(cli.transport, Transport::Sse);
        assert!(Cli::try_parse_from(["hush", "--transport", "smoke", "sync"]).is_err());
    }
}
