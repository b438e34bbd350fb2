//! Hush client SDK: device identity, persistent openmls state, the
//! WebSocket/HTTP protocol client, and the `hush` command-line client.
//!
//! Layers (top-down, each uses only those below it):
//! - [`cli`]: the `hush` commands (argument types and output formatting);
//! - [`client`]: [`client::Client`], the async driver: HTTP auth, one
//!   WebSocket connection, timeline processing, commits with retry;
//! - [`ws`] / [`http`]: transports (request/response correlation, events);
//! - [`mls`]: sans-IO MLS operations over the state database;
//! - [`store`]: the SQLite state database (openmls storage + Hush tables);
//! - [`envelope`]: the end-to-end payload format inside MLS messages.

pub mod cli;
pub mod client;
pub mod envelope;
pub mod error;
pub mod http;
pub mod mls;
pub mod store;
pub mod tui;
pub mod ws;

pub use error::{ClientError, Result};
