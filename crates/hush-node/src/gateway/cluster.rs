//! `GET /cluster`: this node's view of the cluster, as JSON — members, view
//! epoch and digest, the shards it owns, and each peer's address and QUIC
//! RTT. A node outside a cluster reports itself alone.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use hush_cluster::{Placement, View, SHARDS};
use serde_json::json;

use crate::ctx::NodeCtx;

pub async fn status(ctx: web::Data<Arc<NodeCtx>>) -> HttpResponse {
    let me = ctx.config.node.id.clone();
    let (view, peers) = match ctx.cluster.get() {
        Some(mesh) => {
            let view = mesh.view().borrow().clone();
            let peers: Vec<_> = mesh
                .peers()
                .into_iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "addr": p.addr.to_string(),
                        "rtt_ms": p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    })
                })
                .collect();
            (view, peers)
        }
        None => (View::new(1, [me.clone()]), Vec::new()),
    };
    let shards_owned = Placement::new(view.clone())
        .map(|p| p.shards_owned(&me))
        .unwrap_or(0);
    HttpResponse::Ok().json(json!({
        "node": me,
        "clustered": ctx.cluster.get().is_some(),
        "view_epoch": view.epoch,
        "view_digest": format!("{:016x}", view.digest()),
        "members": view.members,
        "shards_owned": shards_owned,
        "shards_total": SHARDS,
        "peers": peers,
    }))
}
