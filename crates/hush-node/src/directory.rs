//! Where a node finds its local actors by key: get-or-activate for virtual
//! actors, and removal when an actor stops.
//!
//! Actors are spawned on the node's multi-thread runtime (never on an
//! actix-web worker's single-threaded runtime), see [`Directory::get_or_spawn`].
//!
//! Bound: a directory holds at most `max` actors ([`Directory::bounded`];
//! `actors.max_group_actors`, `actors.max_session_actors`). Activating one
//! more is refused with UNAVAILABLE and a hint, never queued: the node's
//! memory does not grow with what strangers ask for.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;

use ractor::{Actor, ActorRef, Message};

use hush_proto::ErrorCode;

use crate::error::{ApiError, ApiResult};

/// Why [`Directory::get_or_activate`] did not activate.
enum Refused {
    Full(DirectoryFull),
    Api(ApiError),
}

impl From<DirectoryFull> for Refused {
    fn from(f: DirectoryFull) -> Self {
        Refused::Full(f)
    }
}

/// Local actors of one kind, by key.
pub struct Directory<K, M: Message> {
    actors: tokio::sync::Mutex<HashMap<K, ActorRef<M>>>,
    /// How many actors are live; observers wait on changes (tests, metrics).
    count: tokio::sync::watch::Sender<usize>,
    /// The most actors this directory holds at once.
    max: usize,
}

impl<K: Eq + Hash + Clone + Send, M: Message> Default for Directory<K, M> {
    /// An unbounded directory (tests); the node uses [`Directory::bounded`].
    fn default() -> Self {
        Self::bounded(usize::MAX)
    }
}

/// Activating one more actor would exceed the directory's bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryFull {
    pub max: usize,
}

impl<K: Eq + Hash + Clone + Send, M: Message> Directory<K, M> {
    /// A directory that holds at most `max` live actors.
    pub fn bounded(max: usize) -> Self {
        Self {
            actors: tokio::sync::Mutex::new(HashMap::new()),
            count: tokio::sync::watch::Sender::new(0),
            max,
        }
    }

    /// The live actor for `key`, if any.
    pub async fn get(&self, key: &K) -> Option<ActorRef<M>> {
        self.actors.lock().await.get(key).cloned()
    }

    /// The live actor for `key`, activating it with `spawn` if there is none.
    /// Activation is serialized per directory, so a key never gets two actors.
    /// A new key when the directory already holds `max` actors is refused
    /// with [`DirectoryFull`] (an entry whose actor has stopped but not yet
    /// removed itself does not count as room: it is replaced in place).
    pub async fn get_or_spawn<F, Fut, E>(&self, key: &K, spawn: F) -> Result<ActorRef<M>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ActorRef<M>, E>>,
        E: From<DirectoryFull>,
    {
        let mut actors = self.actors.lock().await;
        match actors.get(key) {
            Some(actor) if actor.get_status() <= ractor::ActorStatus::Running => {
                return Ok(actor.clone());
            }
            Some(_) => {}
            None if actors.len() >= self.max => {
                return Err(DirectoryFull { max: self.max }.into());
            }
            None => {}
        }
        let actor = spawn().await?;
        actors.insert(key.clone(), actor.clone());
        self.count.send_replace(actors.len());
        Ok(actor)
    }

    /// The live actor for `key`, or a new `actor` spawned on `runtime` (the
    /// node's multi-thread runtime: never an actix worker's). `what` names
    /// the kind of actor in errors (e.g. "group actor"); a full directory is
    /// UNAVAILABLE naming `limit_key`, the config key of its bound.
    pub async fn get_or_activate<A>(
        &self,
        key: &K,
        runtime: &tokio::runtime::Handle,
        what: &'static str,
        limit_key: &'static str,
        actor: impl FnOnce() -> (A, A::Arguments),
    ) -> ApiResult<ActorRef<M>>
    where
        A: Actor<Msg = M>,
    {
        let r = self
            .get_or_spawn(key, || async move {
                let (actor, args) = actor();
                match runtime.spawn(Actor::spawn(None, actor, args)).await {
                    Ok(Ok((actor, _join))) => Ok(actor),
                    Ok(Err(e)) => Err(Refused::Api(ApiError::internal(
                        &format!("{what} activation"),
                        e,
                    ))),
                    Err(e) => Err(Refused::Api(ApiError::internal(
                        &format!("{what} activation"),
                        e,
                    ))),
                }
            })
            .await;
        match r {
            Ok(actor) => Ok(actor),
            Err(Refused::Api(e)) => Err(e),
            Err(Refused::Full(DirectoryFull { max })) => {
                metrics::counter!("hush_actor_limit_refusals_total", "actor" => what).increment(1);
                tracing::warn!(actor = what, max, "actor limit reached; activation refused");
                Err(ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "this node already runs {max} {what}s (`{limit_key}`); retry later \
                         or connect to another node"
                    ),
                ))
            }
        }
    }

    /// Forgets `key` if it still maps to the actor `id` (an actor that stops
    /// must not evict its successor).
    pub async fn remove(&self, key: &K, id: ractor::ActorId) {
        let mut actors = self.actors.lock().await;
        if actors.get(key).is_some_and(|a| a.get_id() == id) {
            actors.remove(key);
            self.count.send_replace(actors.len());
        }
    }

    /// Follows the number of live actors.
    pub fn watch_count(&self) -> tokio::sync::watch::Receiver<usize> {
        self.count.subscribe()
    }

    pub async fn len(&self) -> usize {
        self.actors.lock().await.len()
    }

    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    /// Every live actor with its key.
    pub async fn entries(&self) -> Vec<(K, ActorRef<M>)> {
        self.actors
            .lock()
            .await
            .iter()
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect()
    }

    /// Every live actor (for shutdown).
    pub async fn all(&self) -> Vec<ActorRef<M>> {
        self.actors.lock().await.values().cloned().collect()
    }
}
