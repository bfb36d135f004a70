//! Signature and token checks on a delivery's raw body: HMAC-SHA256 and shared tokens, both compared
//! in constant time.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// Whether `signature_hex` is the HMAC-SHA256 of `body` under `secret`, compared in constant time.
pub(crate) fn hmac_sha256_matches(secret: &Secret, body: &[u8], signature_hex: &str) -> bool {
    let Ok(given) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose()) else {
        return false;
    };
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    given.len() == expected.len() && bool::from(expected.as_slice().ct_eq(&given))
}

/// The HMAC-SHA256 of `body` under `secret`, as lower-case hex (for senders and tests).
pub fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; this arm is unreachable in practice.
        Err(_) => String::new(),
    }
}

/// Whether a shared token equals the secret, in constant time whatever the lengths (both are hashed).
pub(crate) fn token_matches(secret: &Secret, given: &[u8]) -> bool {
    let a = Sha256::digest(secret.expose());
    let b = Sha256::digest(given);
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare_handles_different_lengths() {
        let s = Secret::new("token");
        assert!(token_matches(&s, b"token"));
        assert!(!token_matches(&s, b"token2"));
        assert!(!token_matches(&s, b""));
    }
}
