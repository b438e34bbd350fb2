//! Who this device is: registering a new user, logging in, linking a new
//! device to an existing user, and keeping this device's KeyPackages
//! stocked on the server.
//!
//! Invariants: a home holds at most one identity, saved before anything is
//! sent under it (registering or linking twice is refused); every HTTP
//! authentication is signed with the device key, and a login that comes
//! back for another user than the stored one is refused. The server keeps
//! at least [`KEY_PACKAGE_LOW`] unclaimed KeyPackages and one last-resort
//! package for this device after every connect and every Welcome.

use std::sync::Arc;
use std::time::Duration;

use hush_proto::{auth, client_frame, v1, ErrorCode};

use super::{validate_handle, Client, KEY_PACKAGE_BATCH, KEY_PACKAGE_LOW};
use crate::error::{ClientError, Result};
use crate::http::Token;
use crate::mls;
use crate::store::Identity;

/// How many times a rate-limited login is tried in all.
const LOGIN_RATE_LIMIT_ATTEMPTS: u32 = 8;
/// The wait when the server gave no hint, and the longest wait either way.
const LOGIN_RATE_LIMIT_DEFAULT_WAIT: Duration = Duration::from_secs(1);
const LOGIN_RATE_LIMIT_MAX_WAIT: Duration = Duration::from_secs(5);

impl Client {
    /// Registers a new user with this home as its first device, then
    /// connects and uploads KeyPackages.
    pub async fn register(&mut self, handle: &str) -> Result<Arc<Identity>> {
        validate_handle(handle)?;
        if let Some(id) = &self.me {
            return Err(ClientError::AlreadyRegistered(id.mls_identity()));
        }
        let keys = mls::new_device_keys()?;
        let sig = mls::sign_raw(&keys, &auth::register_payload(handle, keys.public()))?;
        let resp = self.http.register(handle, keys.public(), sig).await?;
        self.adopt_identity(resp.user_id, resp.device_id, keys)?;
        self.connect().await?;
        self.me()
    }

    fn adopt_identity(
        &mut self,
        user_id: String,
        device_id: String,
        keys: openmls_basic_credential::SignatureKeyPair,
    ) -> Result<()> {
        let id = Identity {
            user_id,
            device_id,
            keys,
            server: self.servers(),
        };
        self.db.save_identity(&id)?;
        tracing::info!(identity = %id.mls_identity(), "device registered");
        self.me = Some(Arc::new(id));
        Ok(())
    }

    /// Logs in over HTTP (challenge, signed response) and keeps the token.
    /// A login the server rate-limits (the CLI logs in once per command,
    /// so a script can run into the per-device budget) waits out the
    /// server's hint and tries again, up to [`LOGIN_RATE_LIMIT_ATTEMPTS`]
    /// times, each wait at most [`LOGIN_RATE_LIMIT_MAX_WAIT`].
    pub(super) async fn login(&mut self) -> Result<Token> {
        let mut attempt = 1;
        loop {
            match self.login_once().await {
                Err(ClientError::Server {
                    code: ErrorCode::RateLimited,
                    retry_after_ms,
                    ..
                }) if attempt < LOGIN_RATE_LIMIT_ATTEMPTS => {
                    let wait = retry_after_ms
                        .map(Duration::from_millis)
                        .unwrap_or(LOGIN_RATE_LIMIT_DEFAULT_WAIT)
                        .min(LOGIN_RATE_LIMIT_MAX_WAIT);
                    tracing::info!(?wait, attempt, "login rate-limited; waiting");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn login_once(&mut self) -> Result<Token> {
        let me = self.me()?;
        let challenge = self.http.login_challenge(&me.device_id).await?;
        let sig = mls::sign_raw(&me.keys, &auth::login_payload(&challenge))?;
        let (token, resp) = self.http.login(&me.device_id, challenge, sig).await?;
        if !resp.user_id.is_empty() && resp.user_id != me.user_id {
            return Err(ClientError::Protocol(format!(
                "logged in as {} but this device belongs to {}",
                resp.user_id, me.user_id
            )));
        }
        self.token = Some(token.clone());
        Ok(token)
    }

    /// Asks the server for a one-time code that links a new device to this
    /// user (`hush device link CODE` on the new device).
    pub async fn link_code(&mut self) -> Result<v1::LinkCodeResponse> {
        let token = match &self.token {
            Some(t) => t.clone(),
            None => self.login().await?,
        };
        self.http.link_code(&token).await
    }

    /// Makes this (empty) home a new device of the user that issued `code`,
    /// then waits up to `wait` for the user's other devices to add it to
    /// their groups, and joins the rest by external commit (see
    /// `devices.rs`). Returns the hex ids of the groups it is in.
    pub async fn link_device(&mut self, code: &str, wait: Duration) -> Result<Vec<String>> {
        if let Some(id) = &self.me {
            return Err(ClientError::AlreadyRegistered(id.mls_identity()));
        }
        let code = code.trim();
        if code.is_empty() {
            return Err(ClientError::InvalidArgument("empty link code".into()));
        }
        let keys = mls::new_device_keys()?;
        let sig = mls::sign_raw(&keys, &auth::link_payload(code, keys.public()))?;
        let resp = self.http.link_device(code, keys.public(), sig).await?;
        self.adopt_identity(resp.user_id, resp.device_id, keys)?;
        self.connect().await?;
        self.join_groups_after_link(wait).await
    }

    /// Uploads KeyPackages when fewer than [`KEY_PACKAGE_LOW`] are left (and
    /// a last-resort package when the server has none).
    pub async fn maintain_key_packages(&mut self) -> Result<()> {
        let me = self.me()?;
        let count: v1::KeyPackageCountResult = self
            .ask(client_frame::Body::KeyPackageCount(v1::KeyPackageCount {}))
            .await?;
        if count.count >= KEY_PACKAGE_LOW && count.has_last_resort {
            return Ok(());
        }
        let n = if count.count >= KEY_PACKAGE_LOW {
            0
        } else {
            KEY_PACKAGE_BATCH
        };
        let (key_packages, last_resort) =
            mls::new_key_packages(&self.db, &me, n, !count.has_last_resort)?;
        let uploaded: v1::KeyPackagesUploaded = self
            .ask(client_frame::Body::UploadKeyPackages(
                v1::UploadKeyPackages {
                    key_packages,
                    last_resort: last_resort.unwrap_or_default(),
                },
            ))
            .await?;
        tracing::debug!(count = uploaded.count, "key packages uploaded");
        Ok(())
    }
}
