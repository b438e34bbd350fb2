//! Hush client SDK: device identity, persistent openmls state, the
//! protocol client (WebSocket, or SSE + HTTP), and the `hush` command-line client.
//!
//! Layers (top-down, each uses only those below it; no module imports one
//! that imports it back):
//! - [`cli`]: the `hush` commands (argument types, one function per command
//!   group, human or `--json` output);
//! - [`tui`]: `hush chat`, the ratatui chat screen;
//! - [`display`]: how log lines and identities read, shared by `cli` and `tui`;
//! - [`client`]: [`client::Client`], the async driver, one file per concern
//!   (accounts, connection, timeline, sync, commit with the stale-epoch
//!   catch-up, groups, sending, presence);
//! - [`conn`]: [`conn::Conn`], the connection over either transport, and the
//!   `ws|sse|auto` choice (auto falls back to SSE when the upgrade fails);
//! - [`ws`] / [`sse`] / [`http`]: transports (request/response correlation,
//!   pushed events; SSE resumes with `Last-Event-ID`); [`tls`]: whom they
//!   trust over `https://` / `wss://` (system roots or `--ca FILE`);
//! - [`mls`]: sans-IO MLS operations over the state database;
//! - [`store`]: the SQLite state database (openmls storage + Hush tables);
//! - leaves: [`envelope`] (the end-to-end payload format inside MLS
//!   messages), [`live`] (presence and typing, in memory), [`backoff`]
//!   (retry delays), [`error`].
//!
//! State: `<home>/hush.db`, one SQLite file (WAL). openmls keeps its group
//! and key state there through `openmls_sqlite_storage` (its migrations run
//! on open); Hush's own `hush_*` tables hold the identity (user, device id,
//! Ed25519 key pair, server URL, inbox cursor), the groups (name, joined
//! seq, last processed seq, status), the seqs this device submitted (skipped
//! when they come back), and a log of messages/events for display. Applying
//! a timeline entry is one savepoint over both, so a crash never applies an
//! entry twice or loses one.
//!
//! MLS choices: one ciphersuite (X25519/AES-128-GCM/SHA-256/Ed25519),
//! PURE_PLAINTEXT handshake messages, `max_past_epochs` 5, and no ratchet
//! tree extension in GroupInfo (the tree is sent and served separately).
//! Group names never leave MLS: they travel as `{"t":"name"}` envelopes.

pub mod backoff;
pub mod cli;
pub mod client;
pub mod conn;
pub mod display;
pub mod envelope;
pub mod error;
pub mod http;
pub mod live;
pub mod mls;
pub mod sse;
pub mod store;
pub mod tls;
pub mod tui;
pub mod ws;

pub use error::{ClientError, Result};
