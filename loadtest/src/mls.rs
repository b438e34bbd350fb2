//! Real MLS for the generator, in memory (`OpenMlsRustCrypto`), with exactly
//! the group configuration the SDK uses (`hush_client::mls`: ciphersuite,
//! PURE_PLAINTEXT handshakes, no ratchet-tree extension, leaf capabilities).
//! The SDK's own functions work over its SQLite state; a generator with
//! thousands of members keeps its state in memory instead.

use hush_client::mls::{capabilities, create_config, join_config, CIPHERSUITE};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

use crate::payload::{Header, HEADER_LEN};

/// An MLS failure in the generator (always a bug or a server rejection).
#[derive(Debug, thiserror::Error)]
#[error("mls {op}: {detail}")]
pub struct MlsError {
    op: &'static str,
    detail: String,
}

fn err(op: &'static str, e: impl std::fmt::Debug) -> MlsError {
    MlsError {
        op,
        detail: format!("{e:?}"),
    }
}

type Result<T> = std::result::Result<T, MlsError>;

/// One device's MLS side: its provider (keys, group state) and identity.
pub struct Member {
    provider: OpenMlsRustCrypto,
    keys: SignatureKeyPair,
    identity: String,
    group: Option<MlsGroup>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The wire pieces of a commit (`SendCommit`).
#[derive(Debug)]
pub struct CommitOut {
    pub commit: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
    pub group_info: Vec<u8>,
    pub ratchet_tree: Vec<u8>,
}

/// A ciphertext sealed once, with the byte offset of its header in the
/// authenticated data.
#[derive(Debug, Clone)]
pub struct Presealed {
    pub bytes: Vec<u8>,
    pub header_at: usize,
}

impl Presealed {
    /// A copy with `h` written over the placeholder header.
    pub fn stamp(&self, h: &Header) -> Vec<u8> {
        let mut b = self.bytes.clone();
        b[self.header_at..self.header_at + HEADER_LEN].copy_from_slice(&h.encode());
        b
    }
}

fn ser(op: &'static str, m: &MlsMessageOut) -> Result<Vec<u8>> {
    m.to_bytes().map_err(|e| err(op, e))
}

impl Member {
    /// A device with its Ed25519 key and identity "<user>/<device>".
    pub fn new(keys: SignatureKeyPair, identity: String) -> Self {
        Self {
            provider: OpenMlsRustCrypto::default(),
            keys,
            identity,
            group: None,
        }
    }

    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.identity.clone().into_bytes()).into(),
            signature_key: self.keys.public().into(),
        }
    }

    /// The epoch of its group (0 before it has one).
    pub fn epoch(&self) -> u64 {
        self.group.as_ref().map_or(0, |g| g.epoch().as_u64())
    }

    /// A fresh KeyPackage as an MLSMessage (what `UploadKeyPackages` takes).
    pub fn key_package(&self) -> Result<Vec<u8>> {
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .build(CIPHERSUITE, &self.provider, &self.keys, self.credential())
            .map_err(|e| err("build key package", e))?;
        ser(
            "encode key package",
            &MlsMessageOut::from(bundle.key_package().clone()),
        )
    }

    /// Creates a group (epoch 0); returns (group id, GroupInfo, tree).
    pub fn create_group(&mut self) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        let group = MlsGroup::new(
            &self.provider,
            &self.keys,
            &create_config(),
            self.credential(),
        )
        .map_err(|e| err("create group", e))?;
        let gi = group
            .export_group_info(self.provider.crypto(), &self.keys, false)
            .map_err(|e| err("export group info", e))?;
        let tree = group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(|e| err("encode tree", e))?;
        let out = (
            group.group_id().to_vec(),
            ser("encode group info", &gi)?,
            tree,
        );
        self.group = Some(group);
        Ok(out)
    }

    /// The provider, the signature key and the group, borrowed apart (the
    /// openmls calls want them together).
    fn parts(&mut self) -> Result<(&OpenMlsRustCrypto, &SignatureKeyPair, &mut MlsGroup)> {
        let group = self
            .group
            .as_mut()
            .ok_or_else(|| err("group", "no group"))?;
        Ok((&self.provider, &self.keys, group))
    }

    /// Stages a commit adding these KeyPackages (as the server handed them
    /// out); [`Member::merge`] applies it once accepted.
    pub fn add(&mut self, key_packages: &[Vec<u8>]) -> Result<CommitOut> {
        let mut kps = Vec::with_capacity(key_packages.len());
        for b in key_packages {
            let kp_in = match MlsMessageIn::tls_deserialize_exact(b) {
                Ok(m) => match m.extract() {
                    MlsMessageBodyIn::KeyPackage(kp) => kp,
                    _ => return Err(err("claimed key package", "not a KeyPackage")),
                },
                Err(_) => KeyPackageIn::tls_deserialize_exact(b.as_slice())
                    .map_err(|e| err("decode key package", e))?,
            };
            kps.push(
                kp_in
                    .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                    .map_err(|e| err("validate key package", e))?,
            );
        }
        let (provider, keys, group) = self.parts()?;
        let bundle = group
            .commit_builder()
            .propose_adds(kps)
            .load_psks(provider.storage())
            .map_err(|e| err("commit", e))?
            .create_group_info(true)
            .build(provider.rand(), provider.crypto(), keys, |_| true)
            .map_err(|e| err("commit", e))?
            .stage_commit(provider)
            .map_err(|e| err("stage commit", e))?;
        let (commit, welcome, group_info) = bundle.into_messages();
        let group_info = group_info.ok_or_else(|| err("commit", "no GroupInfo"))?;
        let staged = group
            .pending_commit()
            .ok_or_else(|| err("commit", "not staged"))?;
        let tree = staged
            .export_ratchet_tree(provider.crypto(), group.export_ratchet_tree())
            .map_err(|e| err("export tree", e))?
            .ok_or_else(|| err("export tree", "none"))?;
        Ok(CommitOut {
            commit: ser("encode commit", &commit)?,
            welcome: welcome.map(|w| ser("encode welcome", &w)).transpose()?,
            group_info: ser("encode group info", &group_info)?,
            ratchet_tree: tree
                .tls_serialize_detached()
                .map_err(|e| err("encode tree", e))?,
        })
    }

    /// Applies the staged commit (the server accepted it).
    pub fn merge(&mut self) -> Result<()> {
        let (provider, _, group) = self.parts()?;
        group
            .merge_pending_commit(provider)
            .map_err(|e| err("merge commit", e))
    }

    /// Joins from a Welcome and the ratchet tree served with it.
    pub fn join(&mut self, welcome: &[u8], ratchet_tree: &[u8]) -> Result<()> {
        let welcome = match MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|e| err("decode welcome", e))?
            .extract()
        {
            MlsMessageBodyIn::Welcome(w) => w,
            _ => return Err(err("welcome", "not a Welcome")),
        };
        let mut b = StagedWelcome::build_from_welcome(&self.provider, &join_config(), welcome)
            .map_err(|e| err("process welcome", e))?;
        if !ratchet_tree.is_empty() {
            let tree = RatchetTreeIn::tls_deserialize_exact(ratchet_tree)
                .map_err(|e| err("decode tree", e))?;
            b = b.with_ratchet_tree(tree);
        }
        let group = b
            .build()
            .map_err(|e| err("stage welcome", e))?
            .into_group(&self.provider)
            .map_err(|e| err("join", e))?;
        self.group = Some(group);
        Ok(())
    }

    /// Encrypts an application message (a PrivateMessage).
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let (provider, keys, group) = self.parts()?;
        let m = group
            .create_message(provider, keys, plaintext)
            .map_err(|e| err("encrypt", e))?;
        ser("encode message", &m)
    }

    /// Seals one ciphertext whose authenticated data is a placeholder header
    /// (random bytes, found again in the output).
    pub fn preseal(&mut self, payload_bytes: usize) -> Result<Presealed> {
        let mut marker = [0u8; HEADER_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut marker)
            .map_err(|e| err("random", e))?;
        self.parts()?.2.set_aad(marker.to_vec());
        let plaintext = vec![b'.'; payload_bytes];
        let bytes = self.encrypt(&plaintext)?;
        let header_at = bytes
            .windows(HEADER_LEN)
            .position(|w| w == marker)
            .ok_or_else(|| err("preseal", "authenticated data not found in the message"))?;
        Ok(Presealed { bytes, header_at })
    }

    /// Decrypts a timeline message; returns the plaintext of an application
    /// message, `None` for anything else (a commit is merged).
    pub fn process(&mut self, message: &[u8]) -> Result<Option<Vec<u8>>> {
        let (provider, _, group) = self.parts()?;
        let protocol = MlsMessageIn::tls_deserialize_exact(message)
            .map_err(|e| err("decode message", e))?
            .try_into_protocol_message()
            .map_err(|e| err("protocol message", e))?;
        let processed = group
            .process_message(provider, protocol)
            .map_err(|e| err("process message", e))?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => Ok(Some(app.into_bytes())),
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                group
                    .merge_staged_commit(provider, *staged)
                    .map_err(|e| err("merge commit", e))?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

/// The authenticated data of a PrivateMessage, without decrypting (what a
/// presealed receiver reads). `None` if it is not a PrivateMessage.
pub fn private_message_aad(message: &[u8]) -> Option<Vec<u8>> {
    match MlsMessageIn::tls_deserialize_exact(message).ok()?.extract() {
        MlsMessageBodyIn::PrivateMessage(pm) => Some(pm.aad().to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str) -> Member {
        let keys = hush_client::mls::new_device_keys().unwrap();
        Member::new(keys, format!("{name}/d1"))
    }

    #[test]
    fn live_and_presealed_round_trip() {
        let mut a = member("alice");
        let mut b = member("bob");
        a.create_group().unwrap();
        let kp = b.key_package().unwrap();
        let c = a.add(&[kp]).unwrap();
        a.merge().unwrap();
        b.join(c.welcome.as_deref().unwrap(), &c.ratchet_tree)
            .unwrap();

        let h = Header {
            sent_ns: 5,
            group: 1,
            counter: 2,
        };
        let m = a.encrypt(&h.plaintext(64)).unwrap();
        let p = b.process(&m).unwrap().unwrap();
        assert_eq!(Header::decode(&p), Some(h));

        let sealed = a.preseal(64).unwrap();
        let stamped = sealed.stamp(&h);
        assert_eq!(stamped.len(), sealed.bytes.len());
        let aad = private_message_aad(&stamped).unwrap();
        assert_eq!(Header::decode(&aad), Some(h));
    }
}
