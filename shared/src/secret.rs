//! Secret values: payment tokens and other credentials.
//!
//! Invariants: a secret never derives `Debug`/`Display` (the impls here redact), its memory is
//! zeroized on drop, comparison is constant-time, and reading the clear value is a visibly named
//! call (`expose_secret`) so that every use is a place a reviewer checks.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use zeroize::Zeroizing;

/// Longest token accepted anywhere. Processor tokens are short (`pm_…`, `tok_…`); a bound keeps a
/// hostile body from parking megabytes in a zeroizing buffer.
pub const MAX_TOKEN_LEN: usize = 512;

/// A processor payment token (or any other secret string). Clear text lives only inside the
/// vault process and in the one request that carries it there.
#[derive(Clone)]
pub struct SecretString(Zeroizing<String>);

/// The payment token a processor returned at checkout.
pub type PaymentToken = SecretString;

impl SecretString {
    /// Wraps a value that is already secret. Prefer `parse_token` for input from outside.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// Parses a payment token from outside: non-empty, bounded, printable ASCII without spaces.
    /// The error never contains the value.
    pub fn parse_token(value: String) -> Result<Self, crate::domain::FieldError> {
        let secret = Self::new(value);
        let s = secret.expose_secret();
        if s.is_empty() || s.len() > MAX_TOKEN_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(crate::domain::FieldError::new(
                "token",
                "must be 1 to 512 printable characters",
            ));
        }
        Ok(secret)
    }

    /// The clear value. Every call site is reviewed: it must not reach a log, error or response.
    pub fn expose_secret(&self) -> &str {
        self.0.as_str()
    }

    /// Constant-time equality, so comparisons do not leak a prefix match through timing.
    pub fn ct_eq(&self, other: &str) -> bool {
        use subtle::ConstantTimeEq;
        // Length is not secret (tokens have public formats); the bytes are.
        self.0.len() == other.len() && bool::from(self.0.as_bytes().ct_eq(other.as_bytes()))
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Deserialize straight into the zeroizing wrapper; the error text is fixed so a bad value
        // is never echoed back.
        let raw = Zeroizing::new(String::deserialize(d)?);
        Ok(Self::new(raw.as_str().to_owned()))
    }
}

/// Serialization exists only so the accounts-api can send the token to the vault inside the
/// store request (and the vault to its processor). No response type contains a `SecretString`.
impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose_secret())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_secret() {
        let t = SecretString::new("tok_visa_4242424242424242".into());
        let shown = format!("{t:?}");
        assert!(!shown.contains("4242"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn token_parse_rejects_empty_long_and_spaced_values_without_echoing_them() {
        for bad in ["", "has space", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            let err = SecretString::parse_token(bad.to_string()).err();
            let text = format!("{err:?}");
            assert!(err.is_some(), "{bad:?} accepted");
            if !bad.is_empty() {
                assert!(!text.contains(bad), "error echoes the value: {text}");
            }
        }
        assert!(SecretString::parse_token("pm_1Nabc".into()).is_ok());
    }

    #[test]
    fn constant_time_comparison_matches_plain_equality() {
        let t = SecretString::new("abc".into());
        assert!(t.ct_eq("abc"));
        assert!(!t.ct_eq("abd"));
        assert!(!t.ct_eq("ab"));
    }
}
