//! The node's secrets on disk: an owner-only data directory, owner-only
//! files, and the token key file.
//!
//! *Modes.* The data directory is 0700 and every file the node keeps there
//! (the SQLite file and its WAL/SHM, `node.lock`, `lease-owner`) is 0600, as
//! is the token key file wherever it lives. Files are created with that mode
//! (never briefly wider), and at every start a directory or file that is
//! group- or world-accessible is **fixed**, with a warning that names the old
//! mode and says to rotate the token key (whoever could read it could sign
//! tokens). A mode the node cannot change (someone else owns the path) is a
//! start-up error naming the path. SQLite creates `-wal` and `-shm` with the
//! mode of the database file, so a 0600 database gives 0600 companions.
//!
//! *Token keys* live in their own file (`auth.token_key_file`; default
//! `token.key` next to the embedded store's file, so that the nodes of a
//! local cluster sharing one store share it, or in the data directory with
//! ScyllaDB). Its text is [`TokenKeys::encode`]: the current key signs, the
//! previous one (after a rotation) verifies for one token lifetime. Every
//! node of a cluster must read the same key file. A key still held by the
//! store (`secrets` row `token-hmac-v1`, where earlier releases kept it) is
//! moved into the file on first start and deleted from the store.
//!
//! *Rotation*: [`rotate_token_key`] (the `hush-node rotate-token-key`
//! command) writes a new current key and keeps the old one as previous for
//! `auth.token_ttl_ms + auth.max_clock_skew_ms`; running nodes pick it up on
//! SIGHUP or when they notice the file changed (`node.watch_ms`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use hush_ds::{TokenKeys, TokenSecret};
use hush_store::{Store, StoreError};
use ring::rand::SecureRandom as _;

use crate::config::Config;

/// Where earlier releases kept the token key, in the store's `secrets`.
pub const LEGACY_STORE_SECRET: &str = "token-hmac-v1";
/// Bytes of a new token key.
const NEW_KEY_BYTES: usize = 32;

/// Why the node's secrets could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is readable by other users (mode {mode:o}) and cannot be made private: {source}; \
         fix its owner or mode (0700 for directories, 0600 for files)"
    )]
    Insecure {
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error("store: {0}")]
    Store(#[from] hush_store::StoreError),
    #[error("no randomness")]
    Random,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretsError + '_ {
    move |source| SecretsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Makes `path` owner-only (`mode` 0700 or 0600) if other users may use
/// it, warning that it was not. Missing paths are left alone.
#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> Result<(), SecretsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    };
    let old = meta.permissions().mode() & 0o777;
    if old & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        SecretsError::Insecure {
            path: path.to_owned(),
            mode: old,
            source,
        }
    })?;
    tracing::warn!(
        path = %path.display(),
        old_mode = format!("{old:o}"),
        new_mode = format!("{mode:o}"),
        "made a secret path private; other local users could read it, so rotate the token key \
         (hush-node rotate-token-key)"
    );
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> Result<(), SecretsError> {
    Ok(())
}

/// Creates `dir` (and missing parents) owner-only, or makes an existing one
/// owner-only.
pub fn private_dir(dir: &Path) -> Result<(), SecretsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io(dir))?;
    restrict(dir, 0o700)
}

/// Makes an existing file owner-only (missing files are left alone).
pub fn private_file(path: &Path) -> Result<(), SecretsError> {
    restrict(path, 0o600)
}

/// Open options that create a file owner-only.
pub fn private_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Before SQLite opens `path`: its file exists owner-only (an empty file is
/// an empty database), and existing `-wal`/`-shm` files are owner-only.
pub fn prepare_sqlite_file(path: &Path) -> Result<(), SecretsError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            private_dir(parent)?;
        }
    }
    private_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    sqlite_files_private(path)
}

/// The database file and its `-wal`/`-shm` companions, owner-only.
pub fn sqlite_files_private(path: &Path) -> Result<(), SecretsError> {
    private_file(path)?;
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        private_file(Path::new(&p))?;
    }
    Ok(())
}

/// Writes `bytes` to a new owner-only file at `path` (which must not exist)
/// and syncs it.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), SecretsError> {
    let mut f = private_options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// A temporary name next to `path`, unique to this process and moment.
fn temp_name(path: &Path) -> Result<PathBuf, SecretsError> {
    let mut nonce = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SecretsError::Random)?;
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.tmp", hex::encode(nonce)));
    Ok(PathBuf::from(name))
}

fn new_secret() -> Result<TokenSecret, SecretsError> {
    let mut bytes = vec![0u8; NEW_KEY_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SecretsError::Random)?;
    TokenSecret::new(bytes).map_err(|e| SecretsError::KeyFile {
        path: PathBuf::new(),
        message: e.to_string(),
    })
}

/// Reads and parses the key file; fixes its mode first.
pub fn read_token_keys(path: &Path) -> Result<TokenKeys, SecretsError> {
    private_file(path)?;
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    TokenKeys::parse(&text).map_err(|e| SecretsError::KeyFile {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// The node's token keys at start: read from the key file; without one,
/// the key earlier releases kept in the store (moved out of it), else a new
/// random key, written to a new file. Several nodes starting at once on one
/// shared path all end up with the same file (it is created by a link that
/// only the first can make). A key left in the store next to an existing
/// file is deleted.
pub async fn token_keys_at_start(
    config: &Config,
    store: &dyn Store,
) -> Result<TokenKeys, SecretsError> {
    let path = config.token_key_file();
    if path.exists() {
        let keys = read_token_keys(&path)?;
        match store.take_secret(LEGACY_STORE_SECRET).await {
            Ok(Some(_)) => tracing::warn!(
                path = %path.display(),
                "deleted a token key the store still held (the key file is the one in use)"
            ),
            Ok(None) => {}
            // A store that does not answer yet (a CQL cluster that is down)
            // never blocks the start; the stale copy goes at a later start.
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!(error = %why, "store not answering: a store-held token key, if any, stays for now");
            }
            Err(e) => return Err(e.into()),
        }
        return Ok(keys);
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            private_dir(parent)?;
        }
    }
    let legacy = match store.take_secret(LEGACY_STORE_SECRET).await {
        Ok(found) => found,
        // A fresh node whose CQL cluster is down at start: a new key (tokens
        // an older store-held key signed need a new login).
        Err(StoreError::Unavailable(why)) => {
            tracing::warn!(error = %why, "store not answering: a new token key, no store-held key migrated");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let (secret, moved) = match legacy {
        Some(bytes) => match TokenSecret::new(bytes) {
            Ok(s) => (s, true),
            Err(_) => (new_secret()?, false),
        },
        None => (new_secret()?, false),
    };
    let keys = TokenKeys::new(secret);
    let tmp = temp_name(&path)?;
    write_new_private(&tmp, keys.encode().as_bytes())?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if moved {
                tracing::info!(path = %path.display(), "moved the token key out of the store into its own file");
            } else {
                tracing::info!(path = %path.display(), "created a new token key file");
            }
            Ok(keys)
        }
        // Another node on the same path was first: use its file.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token_keys(&path),
        Err(e) => Err(io(&path)(e)),
    }
}

/// The longest a token this node accepts may still be valid: its TTL plus
/// the clock skew allowed between nodes.
pub fn token_lifetime_ms(config: &Config) -> u64 {
    config
        .auth
        .token_ttl_ms
        .saturating_add(config.auth.max_clock_skew_ms)
}

/// Rotates the key file at `now_ms`: a new current key; the old one verifies
/// for one token lifetime. Returns the new keys. Nodes reading the file
/// pick them up on SIGHUP or when they notice the change.
pub fn rotate_token_key(config: &Config, now_ms: u64) -> Result<TokenKeys, SecretsError> {
    let path = config.token_key_file();
    let keys = read_token_keys(&path)?;
    let rotated = keys.rotated(new_secret()?, now_ms, token_lifetime_ms(config));
    let tmp = temp_name(&path)?;
    write_new_private(&tmp, rotated.encode().as_bytes())?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(&path)(e)
    })?;
    Ok(rotated)
}

/// The token keys in use, swapped whole on reload.
#[derive(Clone)]
pub struct TokenKeyHandle(Arc<RwLock<Arc<TokenKeys>>>);

impl TokenKeyHandle {
    pub fn new(keys: TokenKeys) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(keys))))
    }

    /// The keys now.
    pub fn get(&self) -> Arc<TokenKeys> {
        // A poisoned lock only means a writer panicked mid-swap of one Arc.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, keys: TokenKeys) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }
}

/// The length and modification time of a file (to notice changes).
pub fn file_stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}
