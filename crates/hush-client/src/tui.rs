//! `hush chat GROUP`: a ratatui terminal UI. Scrollback on the left,
//! members on the right (● online, ○ offline), an input line at the bottom
//! whose title says who is typing. Enter sends, PageUp/PageDown scroll, Esc
//! or Ctrl-C quits. Typing sends an ephemeral typing notice at most every
//! [`TYPING_RESEND_MS`]; presence is fetched on start and after a reconnect,
//! then follows the server's pushes (or, in a group too large for the
//! server to push them, is fetched again every [`PRESENCE_POLL_MS`]).
//!
//! A red banner on top names every member (and this user itself) whose
//! devices changed since the person last looked at the safety number
//! (`hush verify`), and refused (forged) entries show in red.
//!
//! Terminal input is read on a plain thread (crossterm's blocking `read`)
//! and handed to the async loop over a channel; the loop selects between
//! keys and server events, so the client is only ever used from one task.

use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Direction, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph};
use ratatui::{DefaultTerminal, Frame};
use tokio::sync::mpsc;

use crate::client::Client;
use crate::display::{display_times, event_text, forged_text, handles_of, input_window, wrap};
use crate::error::{ClientError, Result};
use crate::live::TYPING_RESEND_MS;
use crate::store::{now_ms, GroupStatus, LogRow};

/// Log lines loaded into the scrollback.
const SCROLLBACK: usize = 1000;
/// Lines one PageUp/PageDown scrolls.
const PAGE_LINES: usize = 10;
/// How often the screen is redrawn while nothing happens (typing notices
/// expire with time).
const REDRAW_INTERVAL: Duration = Duration::from_secs(1);
/// How long the chat waits before reconnecting after the connection broke.
const RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// How often the member list's presence is asked for again in a group whose
/// changes the server does not push (one above its size limit).
const PRESENCE_POLL_MS: u64 = 30_000;

struct View {
    /// This user's handle (own actions read in the first person).
    me: String,
    title: String,
    lines: Vec<LogRow>,
    members: Vec<String>,
    /// Presence by handle, where known.
    online: std::collections::BTreeMap<String, bool>,
    /// Handles typing now.
    typing: Vec<String>,
    input: String,
    status: String,
    /// Screen rows scrolled up from the bottom.
    scroll: usize,
    /// The most `scroll` can be at the current size (set when drawing).
    max_scroll: std::cell::Cell<usize>,
    /// Warnings for the banner (empty: no banner).
    warnings: Vec<String>,
}

fn hhmm(ts_ms: u64) -> String {
    let secs = ts_ms / 1000;
    format!("{:02}:{:02}", (secs / 3600) % 24, (secs / 60) % 60)
}

/// Width of the time column ("03:45 ").
const TIME_WIDTH: usize = 6;

/// One log row as screen rows of at most `width` columns: the time, then
/// the text wrapped, continuation rows indented under the text. `ts_ms` is
/// the time to show ([`display_times`]); `me` reads its own actions in the
/// first person.
fn render_row(row: &LogRow, ts_ms: u64, me: &str, width: usize) -> Vec<Line<'static>> {
    let event = Style::default().fg(Color::Yellow);
    let (head, head_style, body, body_style) = match row.kind.as_str() {
        "text" => (
            format!("{}: ", row.sender),
            Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
            row.body.clone(),
            Style::default(),
        ),
        "forged" => {
            let red = Style::default().fg(Color::Red).add_modifier(Modifier::BOLD);
            (String::new(), red, forged_text(row), red)
        }
        _ => (
            String::new(),
            event,
            format!("* {}", event_text(row, me)),
            event,
        ),
    };
    let room = width.saturating_sub(TIME_WIDTH).max(1);
    // The sender's name takes the first row's room; the text wraps after it.
    let text = format!("{head}{body}");
    let mut out = Vec::new();
    for (i, piece) in wrap(&text, room).into_iter().enumerate() {
        let time = if i == 0 {
            Span::styled(
                format!("{} ", hhmm(ts_ms)),
                Style::default().fg(Color::DarkGray),
            )
        } else {
            Span::raw(" ".repeat(TIME_WIDTH))
        };
        let mut spans = vec![time];
        if i == 0 && !head.is_empty() && piece.starts_with(&head) {
            spans.push(Span::styled(head.clone(), head_style));
            spans.push(Span::styled(piece[head.len()..].to_string(), body_style));
        } else {
            spans.push(Span::styled(piece, body_style));
        }
        out.push(Line::from(spans));
    }
    out
}

/// Every log row as screen rows, in seq order with times that never run
/// backwards.
fn screen_rows(lines: &[LogRow], me: &str, width: usize) -> Vec<Line<'static>> {
    let times = display_times(lines);
    lines
        .iter()
        .zip(times)
        .flat_map(|(row, ts)| render_row(row, ts, me, width))
        .collect()
}

fn draw(f: &mut Frame<'_>, v: &View) {
    let (banner, area) = if v.warnings.is_empty() {
        (None, f.area())
    } else {
        let split = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Length(1), Constraint::Min(5)])
            .split(f.area());
        (Some(split[0]), split[1])
    };
    if let Some(b) = banner {
        f.render_widget(
            Paragraph::new(v.warnings.join("  ")).style(
                Style::default()
                    .fg(Color::White)
                    .bg(Color::Red)
                    .add_modifier(Modifier::BOLD),
            ),
            b,
        );
    }
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Min(3),
            Constraint::Length(3),
            Constraint::Length(1),
        ])
        .split(area);
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Min(20), Constraint::Length(24)])
        .split(rows[0]);

    let height = cols[0].height.saturating_sub(2) as usize;
    let width = cols[0].width.saturating_sub(2) as usize;
    let all = screen_rows(&v.lines, &v.me, width);
    v.max_scroll.set(all.len().saturating_sub(height));
    let end = all.len().saturating_sub(v.scroll.min(v.max_scroll.get()));
    let start = end.saturating_sub(height);
    let text: Vec<Line<'static>> = all[start..end].to_vec();
    f.render_widget(
        Paragraph::new(text).block(
            Block::default()
                .borders(Borders::ALL)
                .title(v.title.clone()),
        ),
        cols[0],
    );

    let members: Vec<ListItem<'_>> = handles_of(&v.members)
        .into_iter()
        .map(|h| match v.online.get(&h) {
            Some(true) => ListItem::new(format!("● {h}")).style(Style::default().fg(Color::Green)),
            Some(false) => {
                ListItem::new(format!("○ {h}")).style(Style::default().fg(Color::DarkGray))
            }
            None => ListItem::new(format!("  {h}")),
        })
        .collect();
    f.render_widget(
        List::new(members).block(
            Block::default()
                .borders(Borders::ALL)
                .title("members")
                .title_bottom(Line::from(vec![
                    Span::styled("●", Style::default().fg(Color::Green)),
                    Span::raw(" online "),
                    Span::styled("○", Style::default().fg(Color::DarkGray)),
                    Span::raw(" offline"),
                ])),
        ),
        cols[1],
    );

    let input_title = match v.typing.as_slice() {
        [] => "message".to_string(),
        [one] => format!("message — {one} is typing…"),
        many => format!("message — {} are typing…", many.join(", ")),
    };
    // The input line scrolls: its end and the cursor stay in view.
    let (visible, cursor) = input_window(&v.input, rows[1].width.saturating_sub(2) as usize);
    f.render_widget(
        Paragraph::new(visible).block(Block::default().borders(Borders::ALL).title(input_title)),
        rows[1],
    );
    f.set_cursor_position((rows[1].x + 1 + cursor as u16, rows[1].y + 1));
    f.render_widget(
        Paragraph::new(v.status.as_str()).style(Style::default().fg(Color::DarkGray)),
        rows[2],
    );
}

fn reload(client: &Client, gid: &[u8], v: &mut View) -> Result<()> {
    v.lines = client.db().recent_log(gid, SCROLLBACK)?;
    // What the chat shows is read: `sync` and `listen` do not print it again.
    if let Some(last) = v.lines.last() {
        client.db().mark_shown_through(gid, last.seq)?;
    }
    v.members = client.members(gid)?;
    v.online = handles_of(&v.members)
        .into_iter()
        .filter_map(|h| client.live().presence(&h).map(|o| (h, o)))
        .collect();
    v.typing = client.live().typing_in(gid, now_ms());
    v.warnings = banner_warnings(client, &v.members)?;
    if let Some(g) = client.db().group(gid)? {
        v.title = format!(
            "{} [{}]",
            g.display_name(),
            &g.hex_id()[..8.min(g.hex_id().len())]
        );
        if g.status != GroupStatus::Active {
            v.status = "you are no longer a member of this group".into();
        }
    }
    Ok(())
}

/// The banner's warnings: members (and this user) whose devices changed
/// since the person last looked at the safety number.
fn banner_warnings(client: &Client, members: &[String]) -> Result<Vec<String>> {
    let me = client.me()?.user_id.clone();
    let mut users = handles_of(members);
    if !users.contains(&me) {
        users.push(me.clone());
    }
    let mut out = Vec::new();
    for u in users {
        if client.db().contact(&u)?.is_some_and(|c| c.changed) {
            out.push(if u == me {
                "!! your account's devices changed: hush device list".to_string()
            } else {
                format!("!! {u}'s devices changed: hush verify {u}")
            });
        }
    }
    Ok(out)
}

/// Runs the chat UI until Esc/Ctrl-C. The client must be connected.
pub async fn chat(client: &mut Client, group: &str) -> Result<()> {
    let g = client.group(group)?;
    let gid = g.group_id.clone();
    let (tx, mut keys) = mpsc::unbounded_channel::<Event>();
    std::thread::spawn(move || loop {
        match event::read() {
            Ok(ev) => {
                if tx.send(ev).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    });
    let mut terminal = ratatui::try_init()?;
    let r = chat_loop(client, &gid, &mut terminal, &mut keys).await;
    ratatui::restore();
    r
}

async fn chat_loop(
    client: &mut Client,
    gid: &[u8],
    terminal: &mut DefaultTerminal,
    keys: &mut mpsc::UnboundedReceiver<Event>,
) -> Result<()> {
    let mut v = View {
        me: client.me()?.user_id.clone(),
        title: String::new(),
        lines: Vec::new(),
        members: Vec::new(),
        online: Default::default(),
        typing: Vec::new(),
        input: String::new(),
        status: "Enter: send  PgUp/PgDn: scroll  Esc: quit".into(),
        scroll: 0,
        max_scroll: Default::default(),
        warnings: Vec::new(),
    };
    let hex = hex::encode(gid);
    if let Err(e) = client.refresh_presence(&hex).await {
        tracing::debug!(error = %e, "presence unavailable");
    }
    let mut presence_at_ms = now_ms();
    let mut typing_sent_ms = 0u64;
    reload(client, gid, &mut v)?;
    loop {
        terminal.draw(|f| draw(f, &v))?;
        enum Next {
            Key(Option<Event>),
            Server(Result<crate::ws::Pushed>),
            Reconnect,
            /// Redraw: typing notices expire with time.
            Tick,
        }
        let next = if client.is_connected() {
            tokio::select! {
                k = keys.recv() => Next::Key(k),
                e = client.wait_event() => Next::Server(e),
                _ = tokio::time::sleep(REDRAW_INTERVAL) => Next::Tick,
            }
        } else {
            tokio::select! {
                k = keys.recv() => Next::Key(k),
                _ = tokio::time::sleep(RECONNECT_DELAY) => Next::Reconnect,
            }
        };
        match next {
            Next::Key(None) => return Ok(()),
            Next::Key(Some(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                if on_key(client, &hex, &mut v, &mut typing_sent_ms, key).await == Typed::Quit {
                    return Ok(());
                }
            }
            Next::Key(Some(_)) | Next::Tick => {}
            Next::Server(Ok(p)) => {
                if let Err(e) = client.handle(p).await {
                    v.status = format!("{e}");
                }
            }
            Next::Server(Err(e)) => {
                v.status = format!("{e}; reconnecting");
                client.close().await;
            }
            Next::Reconnect => match client.connect().await {
                Ok(()) => {
                    v.status = "reconnected".into();
                    presence_at_ms = now_ms();
                    let _ = client.refresh_presence(&hex).await;
                }
                Err(e @ ClientError::Server { .. }) => return Err(e),
                Err(e) => v.status = format!("reconnect failed: {e}"),
            },
        }
        // Checked after any event: a busy group may never leave a second
        // without one.
        if client.is_connected()
            && !client.live().presence_pushed(gid)
            && now_ms().saturating_sub(presence_at_ms) >= PRESENCE_POLL_MS
        {
            presence_at_ms = now_ms();
            if let Err(e) = client.refresh_presence(&hex).await {
                tracing::debug!(error = %e, "presence unavailable");
            }
        }
        reload(client, gid, &mut v)?;
    }
}

/// What a key press asks of the chat loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Typed {
    /// Keep going.
    Stay,
    /// Leave the chat (Esc, Ctrl-C, Ctrl-D).
    Quit,
}

/// Handles one key press: edit the input line, send it (Enter), scroll, or
/// quit. Typing sends a typing notice at most every [`TYPING_RESEND_MS`]
/// (`typing_sent_ms` is when the last one went out; 0 after a send).
async fn on_key(
    client: &mut Client,
    hex: &str,
    v: &mut View,
    typing_sent_ms: &mut u64,
    key: KeyEvent,
) -> Typed {
    match key.code {
        KeyCode::Esc => return Typed::Quit,
        KeyCode::Char('c') | KeyCode::Char('d')
            if key.modifiers.contains(KeyModifiers::CONTROL) =>
        {
            return Typed::Quit
        }
        KeyCode::Enter => {
            let text = std::mem::take(&mut v.input);
            if !text.trim().is_empty() {
                *typing_sent_ms = 0;
                match client.send_text(hex, &text).await {
                    Ok(seq) => v.status = format!("sent (seq {seq})"),
                    Err(e) => {
                        v.status = format!("send failed: {e}");
                        v.input = text;
                    }
                }
                v.scroll = 0;
            }
        }
        KeyCode::Backspace => {
            v.input.pop();
        }
        KeyCode::PageUp => v.scroll = (v.scroll + PAGE_LINES).min(v.max_scroll.get()),
        KeyCode::PageDown => v.scroll = v.scroll.saturating_sub(PAGE_LINES),
        KeyCode::Char(c) => {
            v.input.push(c);
            let now = now_ms();
            if client.is_connected() && now.saturating_sub(*typing_sent_ms) >= TYPING_RESEND_MS {
                *typing_sent_ms = now;
                if let Err(e) = client.send_typing(hex).await {
                    tracing::debug!(error = %e, "typing notice not sent");
                }
            }
        }
        _ => {}
    }
    Typed::Stay
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn row(seq: u64, sender: &str, kind: &str, body: &str) -> LogRow {
        LogRow {
            seq,
            sender: sender.into(),
            kind: kind.into(),
            body: body.into(),
            ts_ms: 3_600_000 + seq * 60_000,
        }
    }

    fn screen(v: &View, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, v)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    fn view(lines: Vec<LogRow>, scroll: usize) -> View {
        View {
            me: "zed".into(),
            title: "friends [abcd1234]".into(),
            lines,
            members: vec!["alice/d1".into(), "bob/d2".into(), "bob/d3".into()],
            online: Default::default(),
            typing: Vec::new(),
            input: "typing here".into(),
            status: "connected".into(),
            scroll,
            max_scroll: Default::default(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn draws_scrollback_members_input_and_status() {
        let v = view(
            vec![
                row(1, "alice", "added", r#"["bob/d2"]"#),
                row(2, "alice", "name", "friends"),
                row(3, "bob", "text", "hello alice"),
            ],
            0,
        );
        let s = screen(&v, 80, 12).join("\n");
        for want in [
            "friends [abcd1234]",
            "* alice added bob",
            "* alice named the group \"friends\"",
            "01:03 bob: hello alice",
            "members",
            "alice",
            "typing here",
            "connected",
        ] {
            assert!(s.contains(want), "{want:?} not on screen:\n{s}");
        }
        // bob's two devices are one member.
        assert_eq!(s.matches("│  bob").count(), 1, "{s}");
    }

    #[test]
    fn shows_presence_and_typing() {
        let mut v = view(vec![row(1, "bob", "text", "hi")], 0);
        v.online.insert("alice".into(), true);
        v.online.insert("bob".into(), false);
        v.typing = vec!["bob".into()];
        let s = screen(&v, 80, 12).join("\n");
        assert!(s.contains("● alice"), "{s}");
        assert!(s.contains("○ bob"), "{s}");
        assert!(s.contains("bob is typing…"), "{s}");
        v.typing = vec!["alice".into(), "bob".into()];
        let s = screen(&v, 80, 12).join("\n");
        assert!(s.contains("alice, bob are typing…"), "{s}");
    }

    #[test]
    fn shows_the_device_banner_and_refused_entries() {
        let mut v = view(
            vec![
                row(1, "bob", "text", "hi"),
                row(2, "mallory", "forged", "signed as bob/d2"),
            ],
            0,
        );
        let s = screen(&v, 130, 12).join("\n");
        assert!(!s.contains("devices changed"), "{s}");
        assert!(
            s.contains("!! REFUSED a message the server attributes to mallory: signed as bob/d2"),
            "{s}"
        );
        assert!(!s.contains("bob: signed"), "{s}");
        v.warnings = vec!["!! bob's devices changed: hush verify bob".into()];
        let s = screen(&v, 100, 12);
        assert!(
            s[0].starts_with("!! bob's devices changed: hush verify bob"),
            "{s:?}"
        );
        assert!(s.join("\n").contains("friends [abcd1234]"), "{s:?}");
    }

    #[test]
    fn scrollback_shows_the_latest_lines_and_scrolls_up() {
        let lines: Vec<LogRow> = (1..=30)
            .map(|i| row(i, "bob", "text", &format!("line {i:02}")))
            .collect();
        // 12 rows: 6 for text inside the scrollback box.
        let bottom = screen(&view(lines.clone(), 0), 80, 12).join("\n");
        assert!(
            bottom.contains("line 30") && bottom.contains("line 25"),
            "{bottom}"
        );
        assert!(!bottom.contains("line 24"), "{bottom}");
        let up = screen(&view(lines, 10), 80, 12).join("\n");
        assert!(up.contains("line 20") && up.contains("line 15"), "{up}");
        assert!(!up.contains("line 21") && !up.contains("line 14"), "{up}");
    }

    #[test]
    fn long_messages_wrap_and_the_input_scrolls() {
        let long = "the quick brown fox jumps over the lazy dog and keeps running far beyond the edge of the pane";
        let mut v = view(vec![row(1, "bob", "text", long)], 0);
        v.input = "x".repeat(70) + " END";
        let s = screen(&v, 60, 14);
        let all = s.join("\n");
        // Every word is on screen, none cut at the pane's edge.
        for word in long.split(' ') {
            assert!(all.contains(word), "{word:?} missing:\n{all}");
        }
        assert!(all.contains("01:01 bob: the quick"), "{all}");
        // Continuation rows are indented under the text, not the time.
        assert!(s.iter().any(|l| l.starts_with("│      ")), "{all}");
        // The input line shows its end.
        assert!(all.contains("xxx END"), "{all}");
    }

    #[test]
    fn own_actions_in_the_first_person_times_in_order_and_a_legend() {
        let mut joined = row(3, "", "joined", r#"["alice/d1","zed/z1"]"#);
        joined.ts_ms = 3 * 3_600_000 + 45 * 60_000; // stamped late, locally
        let mut named = row(4, "dave", "name", "friends");
        named.ts_ms = 3 * 3_600_000 + 44 * 60_000;
        let mut added = row(5, "zed", "added", r#"["bob/d2"]"#);
        added.ts_ms = 4 * 3_600_000;
        let mut left = row(6, "bob", "left", r#"["bob/d2"]"#);
        left.ts_ms = 4 * 3_600_000 + 60_000;
        let v = view(vec![joined, named, added, left], 0);
        let s = screen(&v, 90, 12).join("\n");
        assert!(
            s.contains("03:44 * you joined (members: alice, zed)"),
            "{s}"
        );
        assert!(s.contains("03:44 * dave named the group"), "{s}");
        assert!(s.contains("04:00 * you added bob"), "{s}");
        assert!(s.contains("04:01 * bob left"), "{s}");
        assert!(!s.contains("removed"), "{s}");
        assert!(s.contains("● online ○ offline"), "{s}");
    }
}
