//! Accounts over the real HTTP API, through the SDK's HTTP client
//! (`hush_client::http`): register a user with an Ed25519 device key, then
//! challenge-response login for a bearer token.

use hush_client::http::{Http, Token};
use openmls_basic_credential::SignatureKeyPair;

/// A registered, logged-in device.
pub struct Device {
    pub handle: String,
    pub user_id: String,
    pub device_id: String,
    pub token: Token,
    pub keys: SignatureKeyPair,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// The MLS identity "<user>/<device>".
    pub fn identity(&self) -> String {
        hush_proto::auth::identity(&self.user_id, &self.device_id)
    }
}

/// Registers `handle` with a fresh device key and logs it in.
pub async fn register(http: &Http, handle: &str) -> anyhow::Result<Device> {
    use hush_client::mls::{new_device_keys, sign_raw};
    let keys = new_device_keys()?;
    let public = keys.public().to_vec();
    let sig = sign_raw(&keys, &hush_proto::auth::register_payload(handle, &public))?;
    let reg = http.register(handle, &public, sig).await?;
    let challenge = http.login_challenge(&reg.device_id).await?;
    let sig = sign_raw(&keys, &hush_proto::auth::login_payload(&challenge))?;
    let (token, login) = http.login(&reg.device_id, challenge, sig).await?;
    Ok(Device {
        handle: handle.to_string(),
        user_id: login.user_id,
        device_id: reg.device_id,
        token,
        keys,
    })
}

/// A handle unique to this run: `lt<run>_<kind><a>_<b>` ([a-z0-9_]{3,32}).
pub fn handle(run: &str, kind: char, a: usize, b: usize) -> String {
    format!("lt{run}_{kind}{a}_{b}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn handles_fit_the_server_rule() {
        let h = super::handle("a1b2c3", 'g', 99_999, 1_999);
        assert!(h.len() <= 32 && h.len() >= 3, "{h}");
        assert!(h
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }
}
