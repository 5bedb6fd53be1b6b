//! Request bodies as types: what the strict parsers read, and (through `ToSchema`) what the
//! OpenAPI document says they accept — one definition, so a field cannot be parsed without being
//! documented, or documented without being parsed.
//!
//! Each field is kept as the JSON value that was sent ([`Sent`]; absent is `None`, an explicit
//! `null` is `Some(Null)`) and the parsers judge it, naming every invalid field in one 422 with
//! fixed text, never the rejected value. The schema of each field (`value_type`, limits) is the
//! rule its parser enforces. Bodies that refuse unknown fields collect them in `unknown`.

use crate::iso;
use crate::model::{AccountInput, Address, custom_id, normalise_email};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// A body field as sent: `None` when absent, `Some(value)` when present (`null` included).
pub type Sent = Option<Value>;

/// Deserializes a present field as `Some`, keeping an explicit `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Sent, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Reads a JSON object as the body type `T`. Every field of a body type accepts any JSON value
/// and the unknown ones go to a map, so reading an object cannot fail (the default is never
/// reached; the parsers refuse non-objects before).
pub fn read_body<T: for<'de> Deserialize<'de> + Default>(obj: &Map<String, Value>) -> T {
    T::deserialize(obj).unwrap_or_default()
}

/// `contact` of an account, `customer` of a checkout. `first`, `last` and `email` are required
/// when an account is created and in a checkout's `customer`; an update may give any of them.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ContactBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, min_length = 1, max_length = 255)]
    pub first: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, min_length = 1, max_length = 255)]
    pub last: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, format = Email, max_length = 255)]
    pub email: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 255)]
    pub company: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 255)]
    pub phone: Sent,
    /// Unknown fields (refused by the checkout; ignored in an account body).
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: Map<String, Value>,
}

/// An address: every line optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 255)]
    pub address_line1: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 255)]
    pub address_line2: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 255)]
    pub city: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 255)]
    pub region: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 255)]
    pub postal_code: Sent,
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: Map<String, Value>,
}

/// `lookup` of an account.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct LookupBody {
    /// The merchant's own id for the account (unique in the store): at least 4 characters of
    /// `A-Z a-z 0-9 _ -`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 4, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    pub custom: Sent,
}

/// `POST /accounts` (all of `contact` required) and `POST /accounts/{id}` (every field
/// optional: a partial update).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AccountBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = ContactBody)]
    pub contact: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<AddressBody>)]
    pub address: Sent,
    /// ISO 3166-1 alpha-2.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z]{2}$")]
    pub country: Sent,
    /// ISO 639-1.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z]{2}$")]
    pub language: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<LookupBody>)]
    pub lookup: Sent,
}

/// An item's `subscription`: its renewal interval.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = String, pattern = "^(day|week|month|year)$")]
    pub interval_unit: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = u32, minimum = 1, maximum = 365)]
    pub interval_length: Sent,
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: Map<String, Value>,
}

/// One item of a checkout.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ItemBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = String, min_length = 1, max_length = 255)]
    pub product: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = u32, minimum = 1, maximum = 10000)]
    pub quantity: Sent,
    /// Unit price in major units (`9.99`), with at most the currency's decimals.
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = f64, minimum = 0)]
    pub price: Sent,
    /// ISO 4217; the same for every item.
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = String, pattern = "^[A-Z]{3}$")]
    pub currency: Sent,
    /// Present: a subscription item.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<SubscriptionBody>)]
    pub subscription: Sent,
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: Map<String, Value>,
}

/// The processor's payment token and its display data. The token goes to the vault only: it is
/// moved out of the parsed body into a zeroizing secret before this type reads the rest. No
/// `Debug`: it may hold the token (as may [`CheckoutBody`]; [`WebhookBody`] the HMAC secret).
#[derive(Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentBody {
    /// Processor token (secret: stored in the vault, never returned or logged). The parser
    /// takes it out at once into a zeroizing secret.
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = String, min_length = 1, max_length = 2048)]
    pub token: Sent,
    #[serde(default, deserialize_with = "present", rename = "type")]
    #[schema(required = true, value_type = String, pattern = "^(card|paypal)$")]
    pub kind: Sent,
    /// Card: the brand.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub brand: Sent,
    /// Card: the last four digits.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^[0-9]{4}$")]
    pub last4: Sent,
    /// Card.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u8>, minimum = 1, maximum = 12)]
    pub exp_month: Sent,
    /// Card.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u16>)]
    pub exp_year: Sent,
    /// PayPal: the account's email.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = Email, max_length = 254)]
    pub email: Sent,
    /// The processor's customer the token belongs to (Stripe: the `cus_…` the `pm_…` is
    /// attached to). Not secret; stored with the token in the vault and sent with its renewal
    /// charges. Omit it for processors without customer objects.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub processor_customer: Sent,
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: Map<String, Value>,
}

/// The state of the "securely save payment details for automated subscription renewal" box.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ConsentBody {
    /// Whether the box was shown.
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = bool)]
    pub presented: Sent,
    /// Whether it was checked.
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = bool)]
    pub accepted: Sent,
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: Map<String, Value>,
}

/// `POST /orders` (Strongroom extension: checkout completion). Unknown fields → 422.
#[derive(Default, Deserialize, ToSchema)]
pub struct CheckoutBody {
    /// An existing account; otherwise found or created by (store, email).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 64)]
    pub account: Sent,
    /// Required unless `account` is given.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<ContactBody>)]
    pub customer: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<AddressBody>)]
    pub address: Sent,
    /// ISO 3166-1 alpha-2.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z]{2}$")]
    pub country: Sent,
    /// ISO 639-1.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z]{2}$")]
    pub language: Sent,
    /// 1 to 100 items.
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = Vec<ItemBody>, min_items = 1, max_items = 100)]
    pub items: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = PaymentBody)]
    pub payment: Sent,
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = ConsentBody)]
    pub consent: Sent,
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: Map<String, Value>,
}

/// One subscription named in a resume or rebill body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SubscriptionRef {
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = String, min_length = 1, max_length = 64)]
    pub subscription: Sent,
    /// Resume: must be `null`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub deactivation: Sent,
}

/// `POST /subscriptions/{id}` (resume: `deactivation: null`) and `POST /subscriptions/charge`
/// (rebill, 1 to 1000 subscriptions).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SubscriptionsBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = Vec<SubscriptionRef>)]
    pub subscriptions: Sent,
}

/// `POST /subscriptions/{id}/pause`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseBody {
    /// Periods to skip from the next charge date, 1 to 12.
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = u32, minimum = 1, maximum = 12)]
    pub pause_period_count: Sent,
}

/// `POST /events/{id}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct EventBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = bool)]
    pub processed: Sent,
}

/// `POST /webhooks` (`hmacSecret` optional) and `POST /webhooks/keys` (required).
#[derive(Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookBody {
    /// An absolute http or https URL without credentials.
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = String, pattern = "^https?://")]
    pub url: Sent,
    /// Signs each delivery (`X-FS-Signature`, HMAC-SHA256, base64): 1 to 100 characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 100)]
    pub hmac_secret: Sent,
}

/// Collected validation failures: (wire field name, fixed message).
#[derive(Debug, Default)]
pub struct Problems(pub Vec<(String, &'static str)>);

impl Problems {
    pub fn add(&mut self, field: impl Into<String>, msg: &'static str) {
        self.0.push((field.into(), msg));
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An optional string field: absent or null → `None`; anything else not a string → a problem.
/// Trimmed; longer than `max` characters → a problem.
pub fn opt_str(v: &Sent, field: &str, max: usize, p: &mut Problems) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.chars().count() > max {
                p.add(field, "is too long");
                None
            } else {
                Some(t.to_owned())
            }
        }
        Some(_) => {
            p.add(field, "must be a string");
            None
        }
    }
}

/// Like [`opt_str`] but the field must be present and non-empty.
pub fn req_str(v: &Sent, field: &str, max: usize, p: &mut Problems) -> Option<String> {
    let present = matches!(v, Some(v) if !v.is_null());
    match opt_str(v, field, max, p) {
        Some(s) if !s.is_empty() => Some(s),
        Some(_) => {
            p.add(field, "is required");
            None
        }
        None => {
            if !present {
                p.add(field, "is required");
            }
            None
        }
    }
}

/// An optional object field, read as the body type `T`.
pub fn opt_body<T>(v: &Sent, field: &str, p: &mut Problems) -> Option<T>
where
    T: for<'de> Deserialize<'de> + Default,
{
    match v {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(read_body(m)),
        Some(_) => {
            p.add(field, "must be an object");
            None
        }
    }
}

/// Each unknown field of a body that refuses them is a problem, `prefix` + its name.
pub fn refuse_unknown(unknown: &Map<String, Value>, prefix: &str, p: &mut Problems) {
    for k in unknown.keys() {
        p.add(format!("{prefix}{k}"), "unknown field");
    }
}

/// An address: each line optional, empty lines dropped.
pub fn parse_address(a: &AddressBody, p: &mut Problems) -> Address {
    let mut f = |v: &Sent, k: &str| opt_str(v, k, 255, p).filter(|s| !s.is_empty());
    Address {
        address_line1: f(&a.address_line1, "addressLine1"),
        address_line2: f(&a.address_line2, "addressLine2"),
        city: f(&a.city, "city"),
        region: f(&a.region, "region"),
        postal_code: f(&a.postal_code, "postalCode"),
    }
}

/// Parses an account body. `create` makes `contact.first/last/email` required.
pub fn parse_account(body: &Map<String, Value>, create: bool) -> Result<AccountInput, Problems> {
    let body: AccountBody = read_body(body);
    let mut p = Problems::default();
    let mut input = AccountInput::default();
    match opt_body::<ContactBody>(&body.contact, "contact", &mut p) {
        Some(c) => contact(&c, create, &mut input, &mut p),
        None if create => {
            for k in ["first", "last", "email"] {
                p.add(k, "is required");
            }
        }
        None => {}
    }
    input.address = opt_body(&body.address, "address", &mut p).map(|a| parse_address(&a, &mut p));
    input.country = opt_str(&body.country, "country", 2, &mut p).and_then(|c| {
        iso::country(&c).or_else(|| {
            p.add(
                "country",
                "country invalid: must be an ISO 3166-1 alpha-2 code",
            );
            None
        })
    });
    input.language = opt_str(&body.language, "language", 2, &mut p).and_then(|l| {
        iso::language(&l).or_else(|| {
            p.add("language", "language is invalid: must be an ISO 639-1 code");
            None
        })
    });
    if let Some(lookup) = opt_body::<LookupBody>(&body.lookup, "lookup", &mut p) {
        input.custom = opt_str(&lookup.custom, "custom", 64, &mut p).and_then(|c| {
            custom_id(&c).or_else(|| {
                p.add(
                    "custom",
                    "custom invalid: at least 4 characters of A-Z a-z 0-9 _ -",
                );
                None
            })
        });
    }
    if p.is_empty() { Ok(input) } else { Err(p) }
}

/// The `contact` of an account body into `input`.
fn contact(c: &ContactBody, create: bool, input: &mut AccountInput, p: &mut Problems) {
    let get = |v: &Sent, k: &str, p: &mut Problems| {
        if create {
            req_str(v, k, 255, p)
        } else {
            opt_str(v, k, 255, p)
        }
    };
    input.first = get(&c.first, "first", p);
    input.last = get(&c.last, "last", p);
    if !create {
        for (v, k) in [(&c.first, "first"), (&c.last, "last"), (&c.email, "email")] {
            if matches!(v, Some(Value::String(s)) if s.trim().is_empty()) {
                p.add(k, "must not be empty");
            }
        }
    }
    input.email = get(&c.email, "email", p).and_then(|e| match normalise_email(&e) {
        Some(_) => Some(e),
        None => {
            p.add("email", "is not a valid email address");
            None
        }
    });
    input.company = opt_str(&c.company, "company", 255, p);
    input.phone = opt_str(&c.phone, "phone", 255, p);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn absent_null_and_unknown_fields_are_told_apart() {
        let obj = serde_json::json!({"first": null, "last": "L", "nick": 1});
        let c: ContactBody = read_body(obj.as_object().unwrap());
        assert_eq!(c.first, Some(Value::Null), "an explicit null is present");
        assert_eq!(c.last, Some(Value::from("L")));
        assert_eq!(c.email, None, "absent");
        assert_eq!(c.unknown.keys().collect::<Vec<_>>(), ["nick"]);
    }

    #[test]
    fn account_create_names_every_missing_and_invalid_field() {
        let body = serde_json::json!({"contact": {"first": "", "email": "nope"}, "country": "XX",
            "language": "english", "lookup": {"custom": "ab"}});
        let Value::Object(m) = body else {
            unreachable!()
        };
        let errs = parse_account(&m, true)
            .err()
            .map(|p| p.0)
            .unwrap_or_default();
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        for f in ["first", "last", "email", "country", "language", "custom"] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    /// The documented properties of a body type are the fields its parser reads: a body with
    /// every documented property has no unknown field, and each property is one field.
    #[test]
    fn each_body_schema_lists_exactly_the_fields_its_parser_reads() {
        fn properties<T: ToSchema>() -> Vec<String> {
            let schema = serde_json::to_value(T::schema()).unwrap();
            schema["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        }
        fn check<T: ToSchema + for<'de> Deserialize<'de> + Default>(
            unknown: impl Fn(&T) -> &Map<String, Value>,
        ) {
            let props = properties::<T>();
            assert!(!props.is_empty());
            let all: Map<String, Value> =
                props.iter().map(|k| (k.clone(), Value::from(1))).collect();
            assert!(unknown(&read_body::<T>(&all)).is_empty(), "{props:?}");
            let mut extra = all.clone();
            extra.insert("notAField".into(), Value::Null);
            assert_eq!(unknown(&read_body::<T>(&extra)).len(), 1);
        }
        check::<ContactBody>(|b| &b.unknown);
        check::<AddressBody>(|b| &b.unknown);
        check::<SubscriptionBody>(|b| &b.unknown);
        check::<ItemBody>(|b| &b.unknown);
        check::<PaymentBody>(|b| &b.unknown);
        check::<ConsentBody>(|b| &b.unknown);
        check::<CheckoutBody>(|b| &b.unknown);
        assert_eq!(
            properties::<CheckoutBody>(),
            [
                "account", "address", "consent", "country", "customer", "items", "language",
                "payment"
            ]
        );
        assert_eq!(
            properties::<PaymentBody>(),
            [
                "brand",
                "email",
                "expMonth",
                "expYear",
                "last4",
                "processorCustomer",
                "token",
                "type"
            ]
        );
    }
}
