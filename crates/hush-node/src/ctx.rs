//! What every part of a node shares: config, store, token key, clock, and the
//! actor directories. Passed explicitly (an `Arc<NodeCtx>`), never global.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use actix_web::web::Bytes;
use hush_ds::TokenKey;
use hush_store::{MemberDevice, Store};
use ractor::{Actor, ActorRef};

use crate::clock::Clock;
use crate::config::Config;
use crate::conns::Connections;
use crate::directory::Directory;
use crate::error::{ApiError, ApiResult};
use crate::group::{GroupActor, GroupMsg};
use crate::session::{Outbound, SessionActor, SessionMsg};
use hush_proto::ErrorCode;

pub struct NodeCtx {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub tokens: TokenKey,
    pub clock: Arc<dyn Clock>,
    /// The multi-thread runtime actors run on.
    pub runtime: tokio::runtime::Handle,
    pub groups: Directory<Vec<u8>, GroupMsg>,
    pub sessions: Directory<String, SessionMsg>,
    /// The client connections of this node (their outbound queues).
    pub conns: Connections,
    pub shutting_down: AtomicBool,
    /// Flips to true once when the node starts shutting down; connections
    /// wait on it to close with 4004 at once.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// The name this node takes group leases under: its id and a nonce
    /// kept in its locked data directory (see `lib.rs`, `claim_data_dir`).
    pub lease_owner: String,
    /// The cluster router (and its mesh), when the node runs in a cluster.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Router>>,
    next_conn_id: AtomicU64,
}

impl NodeCtx {
    pub fn new(
        config: Config,
        lease_owner: String,
        store: Arc<dyn Store>,
        tokens: TokenKey,
        clock: Arc<dyn Clock>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            lease_owner,
            config,
            store,
            tokens,
            clock,
            runtime,
            groups: Directory::default(),
            sessions: Directory::default(),
            conns: Connections::default(),
            shutting_down: AtomicBool::new(false),
            shutdown: tokio::sync::watch::Sender::new(false),
            cluster: std::sync::OnceLock::new(),
            next_conn_id: AtomicU64::new(1),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The group's actor, activated on this node if needed.
    pub async fn group(self: &Arc<Self>, group_id: &[u8]) -> ApiResult<ActorRef<GroupMsg>> {
        if self.is_shutting_down() {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "node is shutting down",
            ));
        }
        let key = group_id.to_vec();
        let ctx = self.clone();
        let key2 = key.clone();
        self.groups
            .get_or_spawn(&key, || async move {
                let spawned = ctx
                    .runtime
                    .spawn(Actor::spawn(None, GroupActor { ctx: ctx.clone() }, key2))
                    .await;
                match spawned {
                    Ok(Ok((actor, _join))) => Ok(actor),
                    Ok(Err(e)) => Err(ApiError::internal("group activation", e)),
                    Err(e) => Err(ApiError::internal("group activation", e)),
                }
            })
            .await
    }

    /// The user's session actor, activated on this node if needed.
    pub async fn session(self: &Arc<Self>, user_id: &str) -> ApiResult<ActorRef<SessionMsg>> {
        let key = user_id.to_owned();
        let ctx = self.clone();
        let key2 = key.clone();
        self.sessions
            .get_or_spawn(&key, || async move {
                let spawned = ctx
                    .runtime
                    .spawn(Actor::spawn(None, SessionActor { ctx: ctx.clone() }, key2))
                    .await;
                match spawned {
                    Ok(Ok((actor, _join))) => Ok(actor),
                    Ok(Err(e)) => Err(ApiError::internal("session activation", e)),
                    Err(e) => Err(ApiError::internal("session activation", e)),
                }
            })
            .await
    }

    /// Hands an item to the online devices among `devices`, through the
    /// sessions of their users wherever those live (`session::deliver`).
    pub async fn deliver(&self, devices: &[MemberDevice], item: Outbound) {
        crate::session::deliver(self, devices, item).await;
    }

    /// This node's name (its lease owner name and cluster member name).
    pub fn node_id(&self) -> &str {
        &self.config.node.id
    }
}

/// An encoded server frame, shared by every connection it goes to.
pub type Frame = Bytes;
