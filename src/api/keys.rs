//! The API keys a client may put in the URL (`server.keys`, Tango's `KEYS`).

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::status::ApiError;

/// The configured keys, kept as SHA-256 digests so that checking one takes the same time
/// whatever the key sent, its length, or which configured key it is closest to.
pub(crate) struct Keys {
    digests: Vec<[u8; 32]>,
}

impl Keys {
    pub fn new(keys: &[String]) -> Keys {
        Keys {
            digests: keys
                .iter()
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
        }
    }

    /// `Ok` with the key's SHA-256 (which names its tenant, see [`Labs::courselab_of`])
    /// when `key` is one of the configured keys; Tango's "Key not recognized" if not.
    ///
    /// [`Labs::courselab_of`]: crate::labs::Labs::courselab_of
    pub fn check(&self, key: &str) -> Result<[u8; 32], ApiError> {
        let sent: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Compare with every key, without stopping at the first match.
        let mut known = Choice::from(0);
        for digest in &self.digests {
            known |= digest.ct_eq(&sent);
        }
        if bool::from(known) {
            Ok(sent)
        } else {
            Err(ApiError::WrongKey)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_keys_pass() {
        let keys = Keys::new(&["test".to_string(), "other".to_string()]);
        assert_eq!(
            keys.check("test").ok(),
            Some(Sha256::digest(b"test").into())
        );
        assert!(keys.check("other").is_ok());
        assert!(keys.check("tes").is_err());
        assert!(keys.check("test ").is_err());
        assert!(keys.check("").is_err());
    }
}
