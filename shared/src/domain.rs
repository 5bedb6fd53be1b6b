//! Domain newtypes shared by the vault and accounts-api.
//!
//! Parse, don't validate: every type here has private fields and is built only through `parse`
//! (or `TryFrom`), so a value that exists is valid. Parse errors name the wire field and carry a
//! fixed message, never the rejected input (which might be a secret pasted into the wrong field).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A validation failure for one wire field: `field` is the camelCase wire name, `message` a fixed
/// text safe to return to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: &'static str,
}

impl FieldError {
    pub const fn new(field: &'static str, message: &'static str) -> Self {
        Self { field, message }
    }
}

fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $field:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// 1 to 64 characters of `A-Za-z0-9_-`: safe in paths, keys and log lines.
            pub fn parse(value: &str) -> Result<Self, FieldError> {
                if value.is_empty() || value.len() > 64 || !value.bytes().all(is_id_char) {
                    return Err(FieldError::new($field, "must be 1 to 64 characters of A-Z a-z 0-9 _ -"));
                }
                Ok(Self(value.to_owned()))
            }
            /// A fresh id: the 16 bytes of a UUIDv7 in URL-safe base64 without padding (22
            /// characters, always valid). The leading time bits keep consecutive ids near each
            /// other in an ordered store; the 74 random bits keep them unguessable.
            pub fn generate() -> Self {
                Self(base64url(uuid::Uuid::now_v7().as_bytes()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl TryFrom<String> for $name {
            type Error = FieldError;
            fn try_from(value: String) -> Result<Self, FieldError> {
                Self::parse(&value)
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// A merchant's store (tenant). Every record in both services is scoped by it.
    StoreId, "store"
);
id_type!(
    /// A customer account inside one store.
    AccountId, "account"
);
id_type!(
    /// An order (a completed checkout) inside one store.
    OrderId, "order"
);
id_type!(
    /// A subscription inside one store.
    SubscriptionId, "subscription"
);
id_type!(
    /// An event (what changed, for the events API and webhooks) inside one store.
    EventId, "event"
);
id_type!(
    /// A webhook endpoint of one store.
    WebhookId, "webhook"
);
id_type!(
    /// The payment processor's own reference for the customer a saved payment method belongs to
    /// (Stripe: the `cus_…` the `pm_…` is attached to). Not a secret: an id at the processor,
    /// useless without the merchant's secret key. Optional everywhere: processors without
    /// customer objects never need it. Its error names the vault's wire field; accounts-api
    /// renames it `payment.processorCustomer`.
    ProcessorCustomer, "processorCustomer"
);

impl EventId {
    /// A fresh event id: a UUIDv7 as 32 lower-case hex digits, so the byte order of event ids
    /// is their time order (a `begin` filter is a range scan).
    pub fn generate_ordered() -> Self {
        Self(uuid::Uuid::now_v7().simple().to_string())
    }
}

/// URL-safe base64 without padding (RFC 4648 §5) of `bytes`.
fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

/// The vault's id for a stored payment method: `pm_` followed by 32 lowercase hex digits of a
/// random UUID, so ids are unguessable and reveal nothing about the token.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PaymentMethodId(String);

impl PaymentMethodId {
    pub fn generate() -> Self {
        Self(format!("pm_{}", uuid::Uuid::new_v4().simple()))
    }
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let ok = value.len() == 35
            && value.starts_with("pm_")
            && value[3..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(FieldError::new("id", "is not a payment method id"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for PaymentMethodId {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, FieldError> {
        Self::parse(&value)
    }
}
impl From<PaymentMethodId> for String {
    fn from(value: PaymentMethodId) -> String {
        value.0
    }
}
impl fmt::Display for PaymentMethodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for PaymentMethodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PaymentMethodId({})", self.0)
    }
}

/// The last four digits of a card: exactly four ASCII digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Last4([u8; 4]);

impl Last4 {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let b = value.as_bytes();
        if b.len() == 4 && b.iter().all(u8::is_ascii_digit) {
            Ok(Self([b[0], b[1], b[2], b[3]]))
        } else {
            Err(FieldError::new("last4", "must be exactly 4 digits"))
        }
    }
    pub fn as_str(&self) -> &str {
        // Built only from ASCII digits, so this never fails; fall back defensively anyway.
        std::str::from_utf8(&self.0).unwrap_or("????")
    }
}
impl TryFrom<String> for Last4 {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, FieldError> {
        Self::parse(&value)
    }
}
impl From<Last4> for String {
    fn from(value: Last4) -> String {
        value.as_str().to_owned()
    }
}
impl fmt::Display for Last4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for Last4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Last4({})", self.as_str())
    }
}

/// Card networks the system knows how to display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardBrand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Jcb,
    Diners,
    Unionpay,
    Maestro,
}

impl CardBrand {
    pub const ALL: [CardBrand; 8] = [
        Self::Visa,
        Self::Mastercard,
        Self::Amex,
        Self::Discover,
        Self::Jcb,
        Self::Diners,
        Self::Unionpay,
        Self::Maestro,
    ];

    /// Case-insensitive; accepts the common long spellings processors use.
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let v = value
            .trim()
            .to_ascii_lowercase()
            .replace([' ', '_', '-'], "");
        Ok(match v.as_str() {
            "visa" => Self::Visa,
            "mastercard" | "mc" => Self::Mastercard,
            "amex" | "americanexpress" => Self::Amex,
            "discover" => Self::Discover,
            "jcb" => Self::Jcb,
            "diners" | "dinersclub" => Self::Diners,
            "unionpay" | "cup" => Self::Unionpay,
            "maestro" => Self::Maestro,
            _ => return Err(FieldError::new("brand", "is not a known card brand")),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Visa => "visa",
            Self::Mastercard => "mastercard",
            Self::Amex => "amex",
            Self::Discover => "discover",
            Self::Jcb => "jcb",
            Self::Diners => "diners",
            Self::Unionpay => "unionpay",
            Self::Maestro => "maestro",
        }
    }

    /// The name FastSpring shows in `payment.creditCard` / `cardType`.
    pub fn display_name(self) -> &'static str {
        match self {
            Self::Visa => "Visa",
            Self::Mastercard => "Mastercard",
            Self::Amex => "American Express",
            Self::Discover => "Discover",
            Self::Jcb => "JCB",
            Self::Diners => "Diners Club",
            Self::Unionpay => "UnionPay",
            Self::Maestro => "Maestro",
        }
    }
}

/// How the customer paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentType {
    Card,
    Paypal,
}

impl PaymentType {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "card" | "creditcard" => Ok(Self::Card),
            "paypal" => Ok(Self::Paypal),
            _ => Err(FieldError::new("type", "must be card or paypal")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::Paypal => "paypal",
        }
    }
}

/// A card's expiry month and four-digit year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Expiry {
    month: u8,
    year: u16,
}

impl Expiry {
    pub fn parse(month: i64, year: i64) -> Result<Self, FieldError> {
        if !(1..=12).contains(&month) {
            return Err(FieldError::new("expMonth", "must be 1 to 12"));
        }
        if !(2000..=2099).contains(&year) {
            return Err(FieldError::new(
                "expYear",
                "must be a four-digit year 2000 to 2099",
            ));
        }
        Ok(Self {
            month: month as u8,
            year: year as u16,
        })
    }
    pub fn month(self) -> u8 {
        self.month
    }
    pub fn year(self) -> u16 {
        self.year
    }
    /// `MM/YY`, as FastSpring shows `expiry`.
    pub fn mm_yy(self) -> String {
        format!("{:02}/{:02}", self.month, self.year % 100)
    }
    /// The card still works during its expiry month: expired means strictly after it.
    pub fn is_expired_at(self, year: i32, month: u8) -> bool {
        (year, month) > (i32::from(self.year), self.month)
    }
}

/// A PayPal payer email shown only masked (`j***@example.com`); built by masking, never parsed
/// from a clear address that could then be displayed.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MaskedEmail(String);

impl MaskedEmail {
    /// Masks a clear address: first character of the local part, `***`, then the domain.
    pub fn mask(email: &str) -> Result<Self, FieldError> {
        let err = FieldError::new("email", "must be an email address");
        let (local, domain) = email.trim().rsplit_once('@').ok_or(err.clone())?;
        let first = local.chars().next().ok_or(err.clone())?;
        if domain.is_empty()
            || !domain.contains('.')
            || email.len() > 254
            || domain.contains(char::is_whitespace)
        {
            return Err(err);
        }
        Ok(Self(format!("{first}***@{}", domain.to_ascii_lowercase())))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for MaskedEmail {
    type Error = FieldError;
    /// Accepts only an already-masked value (as the vault returns it).
    fn try_from(value: String) -> Result<Self, FieldError> {
        match value.split_once("***@") {
            Some((first, domain)) if first.chars().count() == 1 && !domain.is_empty() => {
                Ok(Self(value))
            }
            _ => Err(FieldError::new("maskedEmail", "must be a masked email")),
        }
    }
}
impl From<MaskedEmail> for String {
    fn from(value: MaskedEmail) -> String {
        value.0
    }
}
impl fmt::Debug for MaskedEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MaskedEmail({})", self.0)
    }
}

/// An ISO 4217 currency code this system charges in, with its minor-unit exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

/// Currencies accepted for charges. Deliberately a closed list: an unknown code is a client error,
/// not something to forward to a processor.
const CURRENCIES: &[(&str, u8)] = &[
    ("USD", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("CAD", 2),
    ("AUD", 2),
    ("NZD", 2),
    ("CHF", 2),
    ("SEK", 2),
    ("NOK", 2),
    ("DKK", 2),
    ("PLN", 2),
    ("CZK", 2),
    ("HUF", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("CNY", 2),
    ("HKD", 2),
    ("SGD", 2),
    ("INR", 2),
    ("BRL", 2),
    ("MXN", 2),
    ("ZAR", 2),
    ("ILS", 2),
    ("TRY", 2),
    ("AED", 2),
    ("SAR", 2),
    ("RUB", 2),
    ("TWD", 2),
];

impl Currency {
    /// Every accepted code (for API descriptions).
    pub fn codes() -> impl Iterator<Item = &'static str> {
        CURRENCIES.iter().map(|(c, _)| *c)
    }

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let upper = value.trim().to_ascii_uppercase();
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == upper)
            .map(|(c, e)| {
                let b = c.as_bytes();
                Self {
                    code: [b[0], b[1], b[2]],
                    exponent: *e,
                }
            })
            .ok_or(FieldError::new(
                "currency",
                "is not a supported ISO 4217 currency",
            ))
    }
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.code).unwrap_or("XXX")
    }
    /// Digits after the decimal point (2 for USD, 0 for JPY).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}
impl TryFrom<String> for Currency {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, FieldError> {
        Self::parse(&value)
    }
}
impl From<Currency> for String {
    fn from(value: Currency) -> String {
        value.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        for (input, want) in [
            (&b""[..], ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"\xfb\xff\xfe", "-__-"),
        ] {
            assert_eq!(base64url(input), want);
        }
    }

    #[test]
    fn generated_ids_parse_and_event_ids_sort_by_time() {
        let a = AccountId::generate();
        assert_eq!(a.as_str().len(), 22);
        assert_eq!(AccountId::parse(a.as_str()), Ok(a));
        let (e1, e2) = (EventId::generate_ordered(), EventId::generate_ordered());
        assert_eq!(e1.as_str().len(), 32);
        assert!(e1 < e2 || e1.as_str()[..12] == e2.as_str()[..12]);
        assert_eq!(EventId::parse(e1.as_str()), Ok(e1));
    }

    #[test]
    fn last4_accepts_only_four_digits() {
        assert_eq!(
            Last4::parse("4242").map(|l| l.to_string()),
            Ok("4242".to_string())
        );
        for bad in ["424", "42424", "42a2", "", "４２４２"] {
            assert_eq!(
                Last4::parse(bad).map_err(|e| e.field),
                Err("last4"),
                "{bad}"
            );
        }
    }

    #[test]
    fn expiry_rejects_impossible_months_and_two_digit_years() {
        assert!(Expiry::parse(12, 2030).is_ok());
        assert_eq!(
            Expiry::parse(13, 2030).map_err(|e| e.field),
            Err("expMonth")
        );
        assert_eq!(Expiry::parse(0, 2030).map_err(|e| e.field), Err("expMonth"));
        assert_eq!(Expiry::parse(1, 30).map_err(|e| e.field), Err("expYear"));
        assert_eq!(
            Expiry::parse(3, 2031).map(Expiry::mm_yy),
            Ok("03/31".to_string())
        );
    }

    #[test]
    fn expiry_counts_the_expiry_month_as_still_valid() {
        let e = Expiry::parse(5, 2027).unwrap_or_else(|_| unreachable!());
        assert!(!e.is_expired_at(2027, 5));
        assert!(e.is_expired_at(2027, 6));
        assert!(!e.is_expired_at(2026, 12));
    }

    #[test]
    fn ids_reject_path_and_control_characters() {
        assert!(StoreId::parse("acme-store_1").is_ok());
        for bad in ["", "a/b", "a b", "../x", "x\n", &"a".repeat(65)] {
            assert!(StoreId::parse(bad).is_err(), "{bad:?}");
        }
        let id = PaymentMethodId::generate();
        assert_eq!(PaymentMethodId::parse(id.as_str()), Ok(id));
        assert!(PaymentMethodId::parse("pm_XYZ").is_err());
    }

    #[test]
    fn brands_parse_case_insensitively_and_unknown_brands_are_refused() {
        assert_eq!(CardBrand::parse("VISA"), Ok(CardBrand::Visa));
        assert_eq!(CardBrand::parse("American Express"), Ok(CardBrand::Amex));
        assert_eq!(
            CardBrand::parse("bitcoin").map_err(|e| e.field),
            Err("brand")
        );
        for b in CardBrand::ALL {
            assert_eq!(CardBrand::parse(b.as_str()), Ok(b));
        }
    }

    #[test]
    fn paypal_email_is_masked_and_clear_addresses_do_not_deserialize_as_masked() {
        let m = MaskedEmail::mask("Jane.Doe@Example.com").map(|m| m.as_str().to_owned());
        assert_eq!(m, Ok("J***@example.com".to_string()));
        assert!(MaskedEmail::try_from("jane@example.com".to_string()).is_err());
        assert!(MaskedEmail::mask("no-at-sign").is_err());
    }

    #[test]
    fn currencies_are_a_closed_list_with_exponents() {
        assert_eq!(Currency::parse("usd").map(|c| c.exponent()), Ok(2));
        assert_eq!(Currency::parse("JPY").map(|c| c.exponent()), Ok(0));
        assert!(Currency::parse("XXX").is_err());
        assert!(Currency::parse("US").is_err());
    }
}
