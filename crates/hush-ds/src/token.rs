//! Session tokens, login challenges and Ed25519 checks (ring).
//!
//! A token is `base64url_nopad(payload || tag)` where
//! `payload = 0x01 || generation u64 || expires_at_ms u64 || u16 len || user_id || u16 len || device_id`
//! (big endian) and `tag = HMAC-SHA256(key, "hush/token/v1\0" || payload)`.
//! The base64url alphabet is a subset of the HTTP `token` characters, so a
//! token travels unescaped as a header value (a bearer token, or inside
//! `Sec-WebSocket-Protocol`). Never in a URL: URLs end up in logs.
//!
//! A login challenge is `0x01 || nonce[16] || expires_at_ms u64 || tag[32]`
//! with `tag = HMAC-SHA256(key, "hush/challenge/v1\0" || u16 len || device_id || nonce || expires_at_ms)`:
//! stateless, bound to one device and an expiry. [`TokenKey::verify_challenge`]
//! returns its [`ChallengeId`]; a [`ChallengeLedger`] remembers the ones
//! already used until they expire, so a captured challenge and signature
//! log in once, not for the whole ttl.
//!
//! The two domain labels keep a token from ever verifying as a challenge and
//! the other way round.
//!
//! [`TokenKeys`] is the node's set of token keys: the current one signs, the
//! previous one (after a rotation) still verifies until a deadline, and a
//! token whose expiry lies further ahead than the node's configured lifetime
//! is refused even with a good tag ([`TokenError::ExpiryTooFar`]). It also
//! reads and writes the key file's text ([`TokenKeys::parse`],
//! [`TokenKeys::encode`]); the file itself is the node's business.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

const TOKEN_DOMAIN: &[u8] = b"hush/token/v1\0";
const CHALLENGE_DOMAIN: &[u8] = b"hush/challenge/v1\0";
const NONCE_DOMAIN: &[u8] = b"hush/nonce-fallback/v1\0";
const FORMAT_V1: u8 = 1;
const TAG_LEN: usize = 32;
const NONCE_LEN: usize = 16;
const CHALLENGE_LEN: usize = 1 + NONCE_LEN + 8 + TAG_LEN;
/// Longest token string accepted; anything longer is rejected before decoding.
pub const MAX_TOKEN_LEN: usize = 2048;

/// What a token asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub user_id: String,
    pub device_id: String,
    /// Bumped by the server to revoke every older token of the device.
    pub generation: u64,
    pub expires_at_ms: u64,
}

/// Why a token or challenge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    /// The token's expiry is further ahead than any token this node issues
    /// (its tag verified: only a holder of the key could have made it).
    #[error("token expiry exceeds the configured lifetime")]
    ExpiryTooFar,
}

/// The server's HMAC key for tokens and challenges.
pub struct TokenKey {
    key: hmac::Key,
    rng: SystemRandom,
    /// Only used if the system RNG fails; keeps fallback nonces distinct.
    fallback_counter: AtomicU64,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(***)")
    }
}

impl TokenKey {
    /// A key from the server secret (use at least 32 random bytes).
    pub fn new(secret: &[u8]) -> Self {
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            rng: SystemRandom::new(),
            fallback_counter: AtomicU64::new(0),
        }
    }

    fn tag(&self, domain: &[u8], parts: &[&[u8]]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(domain);
        for p in parts {
            ctx.update(p);
        }
        ctx.sign()
    }

    fn verify_tag(&self, domain: &[u8], msg: &[u8], tag: &[u8]) -> Result<(), TokenError> {
        let mut data = Vec::with_capacity(domain.len() + msg.len());
        data.extend_from_slice(domain);
        data.extend_from_slice(msg);
        // Constant-time comparison.
        hmac::verify(&self.key, &data, tag).map_err(|_| TokenError::BadSignature)
    }

    /// Issues a token for `claims`. Ids longer than 65535 bytes are cut to
    /// that length (ids are validated long before they reach a token).
    pub fn issue(&self, claims: &TokenClaims) -> String {
        let mut payload =
            Vec::with_capacity(1 + 16 + 4 + claims.user_id.len() + claims.device_id.len());
        payload.push(FORMAT_V1);
        payload.extend_from_slice(&claims.generation.to_be_bytes());
        payload.extend_from_slice(&claims.expires_at_ms.to_be_bytes());
        put_str16(&mut payload, claims.user_id.as_bytes());
        put_str16(&mut payload, claims.device_id.as_bytes());
        let tag = self.tag(TOKEN_DOMAIN, &[&payload]);
        payload.extend_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(payload)
    }

    /// Checks a token's tag and expiry at `now_ms` and returns its claims.
    /// A token is expired from `expires_at_ms` on.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<TokenClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() < 1 + 8 + 8 + 2 + 2 + TAG_LEN {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = raw.split_at(raw.len() - TAG_LEN);
        // Authenticate before parsing anything.
        self.verify_tag(TOKEN_DOMAIN, payload, tag)?;
        let claims = parse_claims(payload).ok_or(TokenError::Malformed)?;
        if now_ms >= claims.expires_at_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// A stateless login challenge for `device_id`, valid until
    /// `now_ms + ttl_ms`. The client signs it with its device key.
    pub fn issue_challenge(&self, device_id: &str, now_ms: u64, ttl_ms: u64) -> Vec<u8> {
        let expires = now_ms.saturating_add(ttl_ms);
        let mut nonce = [0u8; NONCE_LEN];
        if self.rng.fill(&mut nonce).is_err() {
            // The OS RNG failed (should not happen). Fall back to a unique,
            // unpredictable-to-outsiders nonce: the HMAC of a counter.
            let n = self.fallback_counter.fetch_add(1, Ordering::Relaxed);
            let t = self.tag(NONCE_DOMAIN, &[&n.to_be_bytes(), &now_ms.to_be_bytes()]);
            nonce.copy_from_slice(&t.as_ref()[..NONCE_LEN]);
        }
        let mut out = Vec::with_capacity(CHALLENGE_LEN);
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&expires.to_be_bytes());
        let tag = self.challenge_tag(device_id, &nonce, &expires.to_be_bytes());
        out.extend_from_slice(tag.as_ref());
        out
    }

    fn challenge_tag(&self, device_id: &str, nonce: &[u8], expires: &[u8]) -> hmac::Tag {
        let mut dev = Vec::with_capacity(2 + device_id.len());
        put_str16(&mut dev, device_id.as_bytes());
        self.tag(CHALLENGE_DOMAIN, &[&dev, nonce, expires])
    }

    /// Checks that `challenge` was issued by this key for `device_id` and
    /// has not expired at `now_ms`; returns what identifies it (to spend it
    /// once in a [`ChallengeLedger`]).
    pub fn verify_challenge(
        &self,
        device_id: &str,
        challenge: &[u8],
        now_ms: u64,
    ) -> Result<ChallengeId, TokenError> {
        if challenge.len() != CHALLENGE_LEN || challenge[0] != FORMAT_V1 {
            return Err(TokenError::Malformed);
        }
        let nonce = &challenge[1..1 + NONCE_LEN];
        let expires_bytes = &challenge[1 + NONCE_LEN..1 + NONCE_LEN + 8];
        let tag = &challenge[1 + NONCE_LEN + 8..];
        let mut msg = Vec::with_capacity(2 + device_id.len() + NONCE_LEN + 8);
        put_str16(&mut msg, device_id.as_bytes());
        msg.extend_from_slice(nonce);
        msg.extend_from_slice(expires_bytes);
        self.verify_tag(CHALLENGE_DOMAIN, &msg, tag)?;
        let expires = u64::from_be_bytes(to_array8(expires_bytes));
        if now_ms >= expires {
            return Err(TokenError::Expired);
        }
        let mut id = [0u8; NONCE_LEN];
        id.copy_from_slice(nonce);
        Ok(ChallengeId {
            nonce: id,
            expires_at_ms: expires,
        })
    }
}

/// A verified login challenge: its nonce and expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChallengeId {
    pub nonce: [u8; NONCE_LEN],
    pub expires_at_ms: u64,
}

/// Why a challenge could not be spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpendError {
    /// It was used before: a replay.
    #[error("challenge already used")]
    Replayed,
    /// The ledger holds its maximum of unexpired challenges.
    #[error("too many challenges in flight")]
    Full,
}

/// The challenges already used, each until it expires (then it could not
/// verify anyway, so it is forgotten). Bounded: at most `max` entries; a
/// full ledger refuses new spends rather than forgetting a live one.
#[derive(Debug)]
pub struct ChallengeLedger {
    used: std::collections::HashMap<[u8; NONCE_LEN], u64>,
    max: usize,
}

impl ChallengeLedger {
    pub fn new(max: usize) -> Self {
        Self {
            used: std::collections::HashMap::new(),
            max,
        }
    }

    /// Spends `id` at `now_ms`: once per challenge.
    pub fn spend(&mut self, id: &ChallengeId, now_ms: u64) -> Result<(), SpendError> {
        if self.used.contains_key(&id.nonce) {
            return Err(SpendError::Replayed);
        }
        if self.used.len() >= self.max {
            self.sweep(now_ms);
            if self.used.len() >= self.max {
                return Err(SpendError::Full);
            }
        }
        self.used.insert(id.nonce, id.expires_at_ms);
        Ok(())
    }

    /// Forgets the challenges expired at `now_ms`; returns how many.
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        let before = self.used.len();
        self.used.retain(|_, expires| now_ms < *expires);
        before - self.used.len()
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// The shortest token key accepted (bytes).
pub const MIN_TOKEN_KEY_LEN: usize = 32;

/// A token key's raw bytes; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(Vec<u8>);

impl TokenSecret {
    /// Wraps raw key bytes (at least [`MIN_TOKEN_KEY_LEN`]).
    pub fn new(bytes: Vec<u8>) -> Result<Self, KeyFileError> {
        if bytes.len() < MIN_TOKEN_KEY_LEN {
            return Err(KeyFileError(format!(
                "a token key must be at least {MIN_TOKEN_KEY_LEN} bytes"
            )));
        }
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(***)")
    }
}

/// A token key file that does not parse; the message says why (never the
/// key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token key file: {0}")]
pub struct KeyFileError(String);

/// The node's token keys: `current` signs and verifies; `previous`, the
/// key before the last rotation, only verifies, and only while
/// `now_ms < accept_until_ms` (one token lifetime after the rotation, so
/// every token it signed has expired by then).
#[derive(Debug)]
pub struct TokenKeys {
    current: (TokenSecret, TokenKey),
    previous: Option<(TokenSecret, TokenKey, u64)>,
}

const KEY_FILE_HEADER: &str = "\
# Hush token keys. SECRET: whoever reads this file can sign tokens for any
# user; keep it mode 0600. `current` signs new tokens; `previous` (the key
# before the last rotation) still verifies tokens until the time given, in
# ms since the Unix epoch. Rotate with `hush-node rotate-token-key`.
";

impl TokenKeys {
    /// One key, no previous one.
    pub fn new(current: TokenSecret) -> Self {
        let key = TokenKey::new(current.as_bytes());
        Self {
            current: (current, key),
            previous: None,
        }
    }

    /// The keys after a rotation at `now_ms`: `next` signs from now on and
    /// the current key still verifies for `lifetime_ms` (the longest a
    /// token it signed can still be valid).
    pub fn rotated(&self, next: TokenSecret, now_ms: u64, lifetime_ms: u64) -> Self {
        let old = self.current.0.clone();
        let key = TokenKey::new(next.as_bytes());
        let old_key = TokenKey::new(old.as_bytes());
        Self {
            current: (next, key),
            previous: Some((old, old_key, now_ms.saturating_add(lifetime_ms))),
        }
    }

    /// The signing key.
    pub fn current(&self) -> &TokenKey {
        &self.current.1
    }

    /// Until when the previous key verifies, if there is one.
    pub fn previous_until_ms(&self) -> Option<u64> {
        self.previous.as_ref().map(|p| p.2)
    }

    /// Issues a token with the current key.
    pub fn issue(&self, claims: &TokenClaims) -> String {
        self.current.1.issue(claims)
    }

    /// Verifies with the current key, then (until its deadline) the
    /// previous one, and refuses an expiry more than `max_lifetime_ms`
    /// ahead of `now_ms`: this node never issues one, so such a token was
    /// made with a stolen key or by a node configured differently.
    pub fn verify(
        &self,
        token: &str,
        now_ms: u64,
        max_lifetime_ms: u64,
    ) -> Result<TokenClaims, TokenError> {
        let claims = match self.current.1.verify(token, now_ms) {
            Err(TokenError::BadSignature) => match &self.previous {
                Some((_, key, until)) if now_ms < *until => key.verify(token, now_ms)?,
                _ => return Err(TokenError::BadSignature),
            },
            other => other?,
        };
        if claims.expires_at_ms > now_ms.saturating_add(max_lifetime_ms) {
            return Err(TokenError::ExpiryTooFar);
        }
        Ok(claims)
    }

    /// The key file's text: a comment header, `current <key>` and, after a
    /// rotation, `previous <key> <accept_until_ms>` (keys in base64url).
    pub fn encode(&self) -> String {
        let mut s = String::from(KEY_FILE_HEADER);
        s.push_str(&format!(
            "current {}\n",
            URL_SAFE_NO_PAD.encode(self.current.0.as_bytes())
        ));
        if let Some((secret, _, until)) = &self.previous {
            s.push_str(&format!(
                "previous {} {until}\n",
                URL_SAFE_NO_PAD.encode(secret.as_bytes())
            ));
        }
        s
    }

    /// Parses a key file's text (see [`TokenKeys::encode`]). Blank lines and
    /// `#` comments are ignored; exactly one `current` line is required.
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let bad = |n: usize, why: &str| KeyFileError(format!("line {n}: {why}"));
        let key = |n: usize, b64: &str| {
            let bytes = URL_SAFE_NO_PAD
                .decode(b64)
                .map_err(|_| bad(n, "the key is not base64url"))?;
            TokenSecret::new(bytes).map_err(|e| bad(n, &e.0))
        };
        let mut current = None;
        let mut previous = None;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["current", k] if current.is_none() => current = Some(key(n, k)?),
                ["previous", k, until] if previous.is_none() => {
                    let until = until
                        .parse::<u64>()
                        .map_err(|_| bad(n, "the deadline is not a number of ms"))?;
                    previous = Some((key(n, k)?, until));
                }
                ["current", ..] | ["previous", ..] => {
                    return Err(bad(n, "repeated or malformed key line"))
                }
                _ => return Err(bad(n, "expected `current KEY` or `previous KEY UNTIL_MS`")),
            }
        }
        let current = current.ok_or_else(|| KeyFileError("no `current` key".into()))?;
        let mut keys = Self::new(current);
        keys.previous = previous.map(|(secret, until)| {
            let key = TokenKey::new(secret.as_bytes());
            (secret, key, until)
        });
        Ok(keys)
    }
}

/// Verifies an Ed25519 `signature` of `message` under the raw 32-byte
/// `public_key`. Any malformed key or signature is simply `false`.
pub fn verify_ed25519(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

fn put_str16(out: &mut Vec<u8>, s: &[u8]) {
    let len = s.len().min(u16::MAX as usize);
    // `len` fits in u16 by the line above.
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&s[..len]);
}

fn to_array8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

/// A small cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_be_bytes(to_array8(b)))
    }
    fn str16(&mut self) -> Option<String> {
        let len = self.u16()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

fn parse_claims(payload: &[u8]) -> Option<TokenClaims> {
    let mut r = Reader(payload);
    if r.u8()? != FORMAT_V1 {
        return None;
    }
    let generation = r.u64()?;
    let expires_at_ms = r.u64()?;
    let user_id = r.str16()?;
    let device_id = r.str16()?;
    if !r.0.is_empty() {
        return None;
    }
    Some(TokenClaims {
        user_id,
        device_id,
        generation,
        expires_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair as _;

    fn claims() -> TokenClaims {
        TokenClaims {
            user_id: "alice".into(),
            device_id: "phone-1".into(),
            generation: 7,
            expires_at_ms: 10_000,
        }
    }

    fn is_http_token_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
    }

    #[test]
    fn token_round_trip() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let t = key.issue(&claims());
        assert!(t.chars().all(is_http_token_char), "{t}");
        assert_eq!(key.verify(&t, 9_999), Ok(claims()));
    }

    #[test]
    fn token_expired_at_and_after_expiry() {
        let key = TokenKey::new(b"k");
        let t = key.issue(&claims());
        assert_eq!(key.verify(&t, 10_000), Err(TokenError::Expired));
        assert_eq!(key.verify(&t, u64::MAX), Err(TokenError::Expired));
    }

    #[test]
    fn token_tampered_or_wrong_key() {
        let key = TokenKey::new(b"key-one");
        let other = TokenKey::new(b"key-two");
        let t = key.issue(&claims());
        assert_eq!(other.verify(&t, 0), Err(TokenError::BadSignature));

        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..raw.len() {
            raw[i] ^= 0x01;
            let bad = URL_SAFE_NO_PAD.encode(&raw);
            assert_eq!(
                key.verify(&bad, 0),
                Err(TokenError::BadSignature),
                "byte {i}"
            );
            raw[i] ^= 0x01;
        }
        // Extending the expiry without the key does not work either.
        let mut forged = claims();
        forged.expires_at_ms = u64::MAX;
        let forged = other.issue(&forged);
        assert_eq!(key.verify(&forged, 20_000), Err(TokenError::BadSignature));
    }

    #[test]
    fn token_garbage_is_malformed_never_panics() {
        let key = TokenKey::new(b"k");
        let t = key.issue(&claims());
        for s in ["", "a", "!!!!", "====", "é", &"A".repeat(MAX_TOKEN_LEN + 1)] {
            assert_eq!(key.verify(s, 0), Err(TokenError::Malformed), "{s:?}");
        }
        for n in 0..t.len() {
            assert!(key.verify(&t[..n], 0).is_err());
        }
        // A well-tagged payload that does not parse is still Malformed.
        let mut payload = vec![0x02u8];
        payload.resize(40, 0);
        let mut raw = payload.clone();
        raw.extend_from_slice(key.tag(TOKEN_DOMAIN, &[&payload]).as_ref());
        assert_eq!(
            key.verify(&URL_SAFE_NO_PAD.encode(&raw), 0),
            Err(TokenError::Malformed)
        );
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len).map(|_| next(&mut seed) as u8).collect();
            let s = URL_SAFE_NO_PAD.encode(&bytes);
            assert!(key.verify(&s, 0).is_err());
            assert!(key.verify_challenge("d", &bytes, 0).is_err());
        }
    }

    #[test]
    fn token_debug_is_redacted() {
        assert_eq!(format!("{:?}", TokenKey::new(b"secret")), "TokenKey(***)");
    }

    #[test]
    fn challenge_bound_to_device_and_expiry() {
        let key = TokenKey::new(b"k");
        let c = key.issue_challenge("dev-a", 1_000, 500);
        assert_eq!(c.len(), CHALLENGE_LEN);
        let id = key.verify_challenge("dev-a", &c, 1_000).unwrap();
        assert_eq!(id.expires_at_ms, 1_500);
        assert_eq!(key.verify_challenge("dev-a", &c, 1_499), Ok(id));
        assert_eq!(
            key.verify_challenge("dev-a", &c, 1_500),
            Err(TokenError::Expired)
        );
        assert_eq!(
            key.verify_challenge("dev-b", &c, 1_000),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            TokenKey::new(b"other").verify_challenge("dev-a", &c, 1_000),
            Err(TokenError::BadSignature)
        );
        // Two challenges differ (random nonce).
        assert_ne!(c, key.issue_challenge("dev-a", 1_000, 500));
        // Moving the expiry breaks the tag.
        let mut later = c.clone();
        later[1 + NONCE_LEN] ^= 0x80;
        assert_eq!(
            key.verify_challenge("dev-a", &later, 1_000),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            key.verify_challenge("dev-a", &c[..c.len() - 1], 1_000),
            Err(TokenError::Malformed)
        );
        // A token is not a challenge and vice versa.
        let t = key.issue(&claims());
        assert!(key.verify_challenge("phone-1", t.as_bytes(), 0).is_err());
        assert!(key.verify(&URL_SAFE_NO_PAD.encode(&c), 0).is_err());
    }

    #[test]
    fn ed25519_verify() {
        let rng = SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let pk = kp.public_key().as_ref().to_vec();
        let sig = kp.sign(b"challenge").as_ref().to_vec();
        assert!(verify_ed25519(&pk, b"challenge", &sig));
        assert!(!verify_ed25519(&pk, b"challengf", &sig));
        let mut bad = sig.clone();
        bad[0] ^= 1;
        assert!(!verify_ed25519(&pk, b"challenge", &bad));
        assert!(!verify_ed25519(&pk[..31], b"challenge", &sig));
        assert!(!verify_ed25519(&pk, b"challenge", &sig[..63]));
        assert!(!verify_ed25519(&[], b"", &[]));
    }

    #[test]
    fn a_challenge_is_spent_once_and_the_ledger_is_bounded() {
        let key = TokenKey::new(b"k");
        let mut ledger = ChallengeLedger::new(2);
        let c1 = key.issue_challenge("d", 0, 100);
        let id1 = key.verify_challenge("d", &c1, 10).unwrap();
        assert_eq!(ledger.spend(&id1, 10), Ok(()));
        // The same challenge (a captured login) again: refused.
        assert_eq!(ledger.spend(&id1, 20), Err(SpendError::Replayed));
        let id2 = key
            .verify_challenge("d", &key.issue_challenge("d", 50, 100), 50)
            .unwrap();
        assert_eq!(ledger.spend(&id2, 50), Ok(()));
        let id3 = key
            .verify_challenge("d", &key.issue_challenge("d", 60, 100), 60)
            .unwrap();
        // Two live entries: full, and nothing has expired.
        assert_eq!(ledger.spend(&id3, 60), Err(SpendError::Full));
        // At 100 the first has expired: room again.
        assert_eq!(ledger.spend(&id3, 100), Ok(()));
        assert_eq!(ledger.len(), 2);
        assert_eq!(ledger.sweep(1_000), 2);
        assert!(ledger.is_empty());
    }

    fn secret(byte: u8) -> TokenSecret {
        TokenSecret::new(vec![byte; 32]).unwrap()
    }

    #[test]
    fn keys_refuse_an_expiry_beyond_the_lifetime() {
        let keys = TokenKeys::new(secret(1));
        let mut c = claims();
        c.expires_at_ms = 1_000 + 500;
        let t = keys.issue(&c);
        assert_eq!(keys.verify(&t, 1_000, 500), Ok(c.clone()));
        assert_eq!(keys.verify(&t, 1_000, 499), Err(TokenError::ExpiryTooFar));
        // Validly signed, but for (almost) ever: refused whatever the key.
        c.expires_at_ms = u64::MAX;
        let forever = keys.issue(&c);
        assert_eq!(
            keys.verify(&forever, 1_000, 86_400_000),
            Err(TokenError::ExpiryTooFar)
        );
    }

    #[test]
    fn rotation_keeps_the_previous_key_for_one_lifetime() {
        let old = TokenKeys::new(secret(1));
        let mut c = claims();
        c.expires_at_ms = 10_000;
        let old_token = old.issue(&c);
        let keys = old.rotated(secret(2), 5_000, 5_000);
        assert_eq!(keys.previous_until_ms(), Some(10_000));
        // New tokens are signed with the new key only.
        let new_token = keys.issue(&c);
        assert_ne!(new_token, old_token);
        assert_eq!(
            old.verify(&new_token, 5_000, 5_000),
            Err(TokenError::BadSignature)
        );
        // Both verify until the deadline; the old one not after it.
        assert_eq!(keys.verify(&old_token, 9_999, 5_000), Ok(c.clone()));
        assert_eq!(keys.verify(&new_token, 9_999, 5_000), Ok(c.clone()));
        c.expires_at_ms = 20_000;
        let late = old.issue(&c);
        assert_eq!(
            keys.verify(&late, 10_000, 15_000),
            Err(TokenError::BadSignature)
        );
        // A second rotation forgets the first key.
        let again = keys.rotated(secret(3), 10_000, 5_000);
        assert_eq!(
            again.verify(&old_token, 9_999, 5_000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn key_file_round_trips_and_rejects_junk() {
        let keys = TokenKeys::new(secret(7)).rotated(secret(8), 1_000, 2_000);
        let text = keys.encode();
        assert!(text.starts_with('#'));
        let back = TokenKeys::parse(&text).unwrap();
        assert_eq!(back.encode(), text);
        assert_eq!(back.previous_until_ms(), Some(3_000));
        let t = back.issue(&claims());
        assert_eq!(keys.verify(&t, 0, u64::MAX), Ok(claims()));
        for junk in [
            "",
            "# only a comment\n",
            "current !!!\n",
            "current AAAA\n",
            "previous AAAA 1\n",
            &format!("{}current x\n", text),
            "current a b c\n",
            "hello\n",
        ] {
            assert!(TokenKeys::parse(junk).is_err(), "{junk:?}");
        }
        // The error never echoes the key.
        let err = TokenKeys::parse("current c2VjcmV0\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("c2VjcmV0"), "{err}");
        assert_eq!(format!("{:?}", secret(1)), "TokenSecret(***)");
        assert!(!format!("{keys:?}").contains(&URL_SAFE_NO_PAD.encode([8u8; 32])));
    }

    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }
}
