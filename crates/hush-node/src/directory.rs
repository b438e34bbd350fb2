//! Where a node finds its local actors by key: get-or-activate for virtual
//! actors, and removal when an actor stops.
//!
//! Actors are spawned on the node's multi-thread runtime (never on an
//! actix-web worker's single-threaded runtime), see [`Directory::get_or_spawn`].

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;

use ractor::{Actor, ActorRef, Message};

use crate::error::{ApiError, ApiResult};

/// Local actors of one kind, by key.
pub struct Directory<K, M: Message> {
    actors: tokio::sync::Mutex<HashMap<K, ActorRef<M>>>,
    /// How many actors are live; observers wait on changes (tests, metrics).
    count: tokio::sync::watch::Sender<usize>,
}

impl<K: Eq + Hash + Clone + Send, M: Message> Default for Directory<K, M> {
    fn default() -> Self {
        Self {
            actors: tokio::sync::Mutex::new(HashMap::new()),
            count: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl<K: Eq + Hash + Clone + Send, M: Message> Directory<K, M> {
    /// The live actor for `key`, if any.
    pub async fn get(&self, key: &K) -> Option<ActorRef<M>> {
        self.actors.lock().await.get(key).cloned()
    }

    /// The live actor for `key`, activating it with `spawn` if there is none.
    /// Activation is serialized per directory, so a key never gets two actors.
    pub async fn get_or_spawn<F, Fut, E>(&self, key: &K, spawn: F) -> Result<ActorRef<M>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ActorRef<M>, E>>,
    {
        let mut actors = self.actors.lock().await;
        if let Some(actor) = actors.get(key) {
            if actor.get_status() <= ractor::ActorStatus::Running {
                return Ok(actor.clone());
            }
        }
        let actor = spawn().await?;
        actors.insert(key.clone(), actor.clone());
        self.count.send_replace(actors.len());
        Ok(actor)
    }

    /// The live actor for `key`, or a new `actor` spawned on `runtime` (the
    /// node's multi-thread runtime: never an actix worker's). `what` names
    /// the kind of actor in the error.
    pub async fn get_or_activate<A>(
        &self,
        key: &K,
        runtime: &tokio::runtime::Handle,
        what: &'static str,
        actor: impl FnOnce() -> (A, A::Arguments),
    ) -> ApiResult<ActorRef<M>>
    where
        A: Actor<Msg = M>,
    {
        self.get_or_spawn(key, || async move {
            let (actor, args) = actor();
            match runtime.spawn(Actor::spawn(None, actor, args)).await {
                Ok(Ok((actor, _join))) => Ok(actor),
                Ok(Err(e)) => Err(ApiError::internal(what, e)),
                Err(e) => Err(ApiError::internal(what, e)),
            }
        })
        .await
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
