//! Who an account or order belongs to. Emails are compared in their normalised form: it is the
//! uniqueness key of an account within a store.

use serde::{Deserialize, Serialize};

/// Lower-cased, trimmed email if it looks like an address (one `@`, a dotted domain, no spaces).
/// The normalised form is the uniqueness key within a store.
pub fn normalise_email(value: &str) -> Option<String> {
    let v = value.trim().to_lowercase();
    let (local, domain) = v.split_once('@')?;
    let ok = !local.is_empty()
        && v.len() <= 254
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/');
    ok.then_some(v)
}

/// `lookup.custom`: at least 4 (at most 64) characters of `A-Za-z0-9_-`.
pub fn custom_id(value: &str) -> Option<String> {
    let ok = (4..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| value.to_owned())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    pub first: String,
    pub last: String,
    pub email: String,
    pub company: Option<String>,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub address_line1: Option<String>,
    pub address_line2: Option<String>,
    pub city: Option<String>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_obvious_garbage_is_refused() {
        assert_eq!(
            normalise_email(" Jane@Example.COM ").as_deref(),
            Some("jane@example.com")
        );
        for bad in [
            "",
            "jane",
            "jane@",
            "@x.com",
            "a b@x.com",
            "a@x",
            "a@@x.com",
            "a/b@x.com",
        ] {
            assert_eq!(normalise_email(bad), None, "{bad}");
        }
    }
}
