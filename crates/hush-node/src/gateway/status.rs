//! `GET /cluster`: this node's view of the cluster, as JSON — members, view
//! epoch and digest, the shards it owns, and each peer's address and QUIC
//! RTT. A node outside a cluster reports itself alone. With `?group=<hex
//! group id>` it also says which node owns that group in its view, and
//! with `?user=<handle>` which node holds that user's session. It counts
//! the sessions and client connections it holds. An admin page: see
//! [`super::admin_check`].

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use hush_cluster::SHARDS;
use serde_json::json;

use super::AppState;
use crate::route::session_key;

#[derive(serde::Deserialize)]
pub struct StatusQuery {
    group: Option<String>,
    user: Option<String>,
}

pub async fn status(
    app: web::Data<Arc<AppState>>,
    req: actix_web::HttpRequest,
    query: web::Query<StatusQuery>,
) -> HttpResponse {
    if let Err(e) = super::admin_check(&app, &req) {
        return super::error_response(&e);
    }
    let me = app.route.me().to_owned();
    let view = app.route.view().borrow().clone();
    let peers: Vec<_> = app
        .route
        .mesh()
        .map(|mesh| mesh.peers())
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            json!({
                "name": p.name,
                "addr": p.addr.to_string(),
                "rtt_ms": p.rtt.map(|d| d.as_secs_f64() * 1000.0),
            })
        })
        .collect();
    let placement = app.route.placement();
    let shards_owned = placement.as_ref().map(|p| p.shards_owned(&me)).unwrap_or(0);
    let owner = match (&query.group, &placement) {
        (Some(hex_id), Some(p)) => match hex::decode(hex_id) {
            Ok(id) => Some(p.owner(&id).to_string()),
            Err(_) => {
                return HttpResponse::BadRequest().json(json!({
                    "error": "group must be a hex group id"
                }))
            }
        },
        _ => None,
    };
    let session_owner = match (&query.user, &placement) {
        (Some(user), Some(p)) => Some(p.owner(&session_key(user)).to_string()),
        _ => None,
    };
    HttpResponse::Ok().json(json!({
        "group_owner": owner,
        "session_owner": session_owner,
        "sessions": app.sessions.count().await,
        "connections": app.sessions.conns().len(),
        "node": me,
        "clustered": app.route.mesh().is_some(),
        "view_epoch": view.epoch,
        "view_digest": format!("{:016x}", view.digest()),
        "members": view.members,
        "shards_owned": shards_owned,
        "shards_total": SHARDS,
        "peers": peers,
    }))
}
