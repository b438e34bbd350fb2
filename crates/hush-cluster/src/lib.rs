//! hush-cluster: what turns several hush-nodes into one cluster.
//!
//! - [`placement`]: key -> fixed shard -> node over a membership view
//!   (rendezvous hashing), the same table on every node for one view.
//! - [`membership`]: SWIM failure detection (foca), sans-IO, giving the
//!   live view.
//! - [`mesh`]: membership over real QUIC datagrams between endpoints; the
//!   live view and peers' RTT.
//! - [`tls`]: node identities (a dev CA generated on first start, or PEM
//!   files) and the QUIC endpoint (quinn) with mutual TLS on ring.
//!
//! The router and per-destination batching
//! build on these (see ARCHITECTURE.md, "Cluster").

pub mod membership;
pub mod mesh;
pub mod placement;
pub mod tls;

pub use placement::{shard_of, Placement, View, SHARDS};
pub use tls::{write_node_cert_files, NodeCertFiles, NodeIdentity, TlsError};
