//! The strict parser of the checkout body (`POST /orders`): unknown fields are refused, every
//! invalid field is named in one 422 with fixed text (never the rejected value), and the token is
//! moved out of the parsed JSON into a zeroizing [`SecretString`] before anything else reads the
//! body. One function per part of the body.

use crate::domain::Consent;
use crate::domain::interval::Interval;
use crate::http::requests::{
    AddressBody, CheckoutBody, ConsentBody, ContactBody, ItemBody, PaymentBody, Problems, Sent,
    SubscriptionBody, opt_body, opt_str, parse_address, read_body, refuse_unknown, req_str,
};
use crate::model::{Contact, IntervalUnit, normalise_email, to_minor};
use crate::service::checkout::{CheckoutInput, ItemInput, PaymentInput};
use serde::Deserialize;
use serde_json::{Map, Value};
use shared::{CardBrand, Currency, Expiry, Last4, PaymentType, ProcessorCustomer, SecretString};

fn boolean(v: &Sent, field: &str, p: &mut Problems) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        None | Some(Value::Null) => {
            p.add(field, "is required");
            false
        }
        Some(_) => {
            p.add(field, "must be true or false");
            false
        }
    }
}

fn int(v: &Sent, field: &str, p: &mut Problems) -> Option<i64> {
    match v {
        Some(v) => match v.as_i64() {
            Some(i) => Some(i),
            None => {
                p.add(field, "must be an integer");
                None
            }
        },
        None => {
            p.add(field, "is required");
            None
        }
    }
}

/// Parses the checkout body. The token comes back beside the input (also when the input is
/// refused) so the caller decides when it is dropped.
#[tracing::instrument(skip_all)]
pub fn parse(obj: Map<String, Value>) -> (Option<SecretString>, Result<CheckoutInput, Problems>) {
    let mut p = Problems::default();
    // Owned all the way: the token's string is moved, never copied, into the secret.
    let mut body = CheckoutBody::deserialize(obj).unwrap_or_default();
    let mut payment_body = payment_body(body.payment.take(), &mut p);
    let token = payment_body
        .as_mut()
        .and_then(|pm| take_token(pm.token.take(), &mut p));
    refuse_unknown(&body.unknown, "", &mut p);
    let account = opt_str(&body.account, "account", 64, &mut p);
    let customer = customer(&body.customer, account.is_some(), &mut p);
    let address = opt_body::<AddressBody>(&body.address, "address", &mut p).map(|a| {
        refuse_unknown(&a.unknown, "address.", &mut p);
        parse_address(&a, &mut p)
    });
    let country = opt_str(&body.country, "country", 2, &mut p).and_then(|c| {
        crate::iso::country(&c).or_else(|| {
            p.add("country", "must be an ISO 3166-1 alpha-2 code");
            None
        })
    });
    let language = opt_str(&body.language, "language", 2, &mut p).and_then(|l| {
        crate::iso::language(&l).or_else(|| {
            p.add("language", "must be an ISO 639-1 code");
            None
        })
    });
    let (items, currency) = items(&body.items, &mut p);
    let payment = payment_body.and_then(|pm| payment(&pm, &mut p));
    let consent = consent(&body.consent, &mut p);
    match (p.is_empty(), currency, payment, token.is_some()) {
        (true, Some(currency), Some(payment), true) => {
            let input = CheckoutInput {
                account,
                customer,
                address,
                country,
                language,
                currency,
                items,
                payment,
                consent,
            };
            (token, Ok(input))
        }
        _ => {
            if p.is_empty() {
                p.add("payment", "is incomplete");
            }
            (token, Err(p))
        }
    }
}

/// `payment` (required), read owned so the token inside is moved, not copied.
fn payment_body(v: Sent, p: &mut Problems) -> Option<PaymentBody> {
    match v {
        Some(Value::Object(m)) => return Some(PaymentBody::deserialize(m).unwrap_or_default()),
        None | Some(Value::Null) => {}
        Some(_) => p.add("payment", "must be an object"),
    }
    p.add("payment", "is required");
    None
}

/// Moves `payment.token` into a zeroizing secret.
fn take_token(token: Sent, p: &mut Problems) -> Option<SecretString> {
    match token {
        Some(Value::String(s)) => match SecretString::parse_token(s) {
            Ok(t) => Some(t),
            Err(e) => {
                p.add("payment.token", e.message);
                None
            }
        },
        Some(_) => {
            p.add("payment.token", "must be a string");
            None
        }
        None => {
            p.add("payment.token", "is required");
            None
        }
    }
}

/// `customer`: required unless an existing `account` is named.
fn customer(v: &Sent, has_account: bool, p: &mut Problems) -> Option<Contact> {
    let Some(c) = opt_body::<ContactBody>(v, "customer", p) else {
        if !has_account {
            p.add("customer", "is required unless account is given");
        }
        return None;
    };
    refuse_unknown(&c.unknown, "customer.", p);
    let first = req_str(&c.first, "customer.first", 255, p);
    let last = req_str(&c.last, "customer.last", 255, p);
    let email = req_str(&c.email, "customer.email", 255, p).and_then(|e| {
        normalise_email(&e).map(|_| e).or_else(|| {
            p.add("customer.email", "is not a valid email address");
            None
        })
    });
    let company = opt_str(&c.company, "customer.company", 255, p).filter(|s| !s.is_empty());
    let phone = opt_str(&c.phone, "customer.phone", 255, p).filter(|s| !s.is_empty());
    Some(Contact {
        first: first?,
        last: last?,
        email: email?,
        company,
        phone,
    })
}

/// `items`: 1 to 100, one currency for all.
fn items(v: &Sent, p: &mut Problems) -> (Vec<ItemInput>, Option<Currency>) {
    let mut items = Vec::new();
    let mut currency: Option<Currency> = None;
    match v {
        Some(Value::Array(list)) if !list.is_empty() && list.len() <= 100 => {
            for (i, it) in list.iter().enumerate() {
                let Some(it) = it.as_object() else {
                    p.add(format!("items[{i}]"), "must be an object");
                    continue;
                };
                if let Some(item) = item(&read_body(it), i, &mut currency, p) {
                    items.push(item);
                }
            }
        }
        Some(Value::Array(list)) if list.is_empty() => p.add("items", "must not be empty"),
        Some(Value::Array(_)) => p.add("items", "at most 100 items"),
        None | Some(Value::Null) => p.add("items", "is required"),
        Some(_) => p.add("items", "must be an array"),
    }
    (items, currency)
}

/// Item `i`; `currency` is the first item's, which every later one must match.
fn item(
    it: &ItemBody,
    i: usize,
    currency: &mut Option<Currency>,
    p: &mut Problems,
) -> Option<ItemInput> {
    let f = |name: &str| format!("items[{i}].{name}");
    refuse_unknown(&it.unknown, &f(""), p);
    let product = req_str(&it.product, &f("product"), 255, p);
    let quantity = int(&it.quantity, &f("quantity"), p).and_then(|q| {
        u32::try_from(q)
            .ok()
            .filter(|q| (1..=10_000).contains(q))
            .or_else(|| {
                p.add(f("quantity"), "must be 1 to 10000");
                None
            })
    });
    let cur = req_str(&it.currency, &f("currency"), 3, p).and_then(|c| {
        Currency::parse(&c).ok().or_else(|| {
            p.add(f("currency"), "is not a supported ISO 4217 currency");
            None
        })
    });
    if let (Some(c), Some(prev)) = (cur, *currency)
        && c != prev
    {
        p.add(f("currency"), "must be the same for every item");
    }
    if currency.is_none() {
        *currency = cur;
    }
    let price = match (it.price.as_ref().and_then(Value::as_f64), cur) {
        (Some(v), Some(c)) => to_minor(v, c.exponent()).or_else(|| {
            p.add(
                f("price"),
                "must be a non-negative amount with the currency's decimals",
            );
            None
        }),
        (None, _) => {
            p.add(f("price"), "is required and must be a number");
            None
        }
        _ => None,
    };
    let interval = opt_body::<SubscriptionBody>(&it.subscription, &f("subscription"), p)
        .map(|s| interval(&s, &f, p));
    // A subscription is renewed by charging price × quantity each period: one the vault could
    // never charge (nothing, or above its limit) would fail every renewal, so it is refused here.
    if let (Some(_), Some(price), Some(quantity)) = (&interval, price, quantity) {
        let per_period = price.saturating_mul(i64::from(quantity));
        if per_period == 0 {
            p.add(
                f("price"),
                "a subscription must cost more than 0 per period",
            );
        } else if per_period > shared::vault_api::MAX_CHARGE_MINOR {
            p.add(
                f("price"),
                "a subscription's price × quantity per period is above the largest amount \
                 that can be charged",
            );
        }
    }
    Some(ItemInput {
        product: product?,
        quantity: quantity?,
        price: price?,
        interval,
    })
}

/// An item's `subscription`: its interval.
fn interval(s: &SubscriptionBody, f: &dyn Fn(&str) -> String, p: &mut Problems) -> Interval {
    refuse_unknown(&s.unknown, &f("subscription."), p);
    let unit_field = f("subscription.intervalUnit");
    let unit = req_str(&s.interval_unit, &unit_field, 8, p).and_then(|u| {
        IntervalUnit::parse(&u).or_else(|| {
            p.add(unit_field.clone(), "must be day, week, month or year");
            None
        })
    });
    let len_field = f("subscription.intervalLength");
    let len = int(&s.interval_length, &len_field, p).and_then(|l| {
        u32::try_from(l)
            .ok()
            .filter(|l| (1..=365).contains(l))
            .or_else(|| {
                p.add(len_field.clone(), "must be 1 to 365");
                None
            })
    });
    match (unit, len) {
        (Some(unit), Some(length)) => Interval { unit, length },
        // Keep the item a subscription item so consent is judged right even though the request
        // is refused anyway.
        _ => Interval {
            unit: IntervalUnit::Month,
            length: 1,
        },
    }
}

/// `payment`: a card's display data or a PayPal email (the token was taken out before).
fn payment(pm: &PaymentBody, p: &mut Problems) -> Option<PaymentInput> {
    refuse_unknown(&pm.unknown, "payment.", p);
    let kind = req_str(&pm.kind, "payment.type", 32, p).and_then(|t| {
        PaymentType::parse(&t)
            .map_err(|e| p.add("payment.type", e.message))
            .ok()
    });
    match kind? {
        PaymentType::Card => Some(card(pm, p)),
        PaymentType::Paypal => {
            let email = req_str(&pm.email, "payment.email", 254, p).and_then(|e| {
                normalise_email(&e).or_else(|| {
                    p.add("payment.email", "is not a valid email address");
                    None
                })
            });
            Some(PaymentInput {
                kind: PaymentType::Paypal,
                brand: None,
                last4: None,
                expiry: None,
                email,
                processor_customer: processor_customer(pm, p),
            })
        }
    }
}

/// `payment.processorCustomer` (optional): the processor's customer id, e.g. Stripe's `cus_…`.
fn processor_customer(pm: &PaymentBody, p: &mut Problems) -> Option<ProcessorCustomer> {
    const FIELD: &str = "payment.processorCustomer";
    match &pm.processor_customer {
        None | Some(Value::Null) => None,
        // Not trimmed: an id with spaces around it is not the processor's id.
        Some(Value::String(s)) => ProcessorCustomer::parse(s)
            .map_err(|e| p.add(FIELD, e.message))
            .ok(),
        Some(_) => {
            p.add(FIELD, "must be a string");
            None
        }
    }
}

/// A card's brand, last four and (unexpired) expiry.
fn card(pm: &PaymentBody, p: &mut Problems) -> PaymentInput {
    let brand = req_str(&pm.brand, "payment.brand", 32, p).and_then(|b| {
        CardBrand::parse(&b)
            .map_err(|e| p.add("payment.brand", e.message))
            .ok()
    });
    let last4 = req_str(&pm.last4, "payment.last4", 4, p).and_then(|l| {
        Last4::parse(&l)
            .map_err(|e| p.add("payment.last4", e.message))
            .ok()
    });
    let m = int(&pm.exp_month, "payment.expMonth", p);
    let y = int(&pm.exp_year, "payment.expYear", p);
    let expiry = match (m, y) {
        (Some(m), Some(y)) => match Expiry::parse(m, y) {
            Ok(e) => {
                let now = time::OffsetDateTime::now_utc();
                if e.is_expired_at(now.year(), u8::from(now.month())) {
                    p.add("payment.expYear", "the card is expired");
                    None
                } else {
                    Some(e)
                }
            }
            Err(e) => {
                p.add(format!("payment.{}", e.field), e.message);
                None
            }
        },
        _ => None,
    };
    PaymentInput {
        kind: PaymentType::Card,
        brand,
        last4,
        expiry,
        email: None,
        processor_customer: processor_customer(pm, p),
    }
}

/// `consent`: whether the "save payment details" box was presented and accepted.
fn consent(v: &Sent, p: &mut Problems) -> Consent {
    match opt_body::<ConsentBody>(v, "consent", p) {
        Some(c) => {
            refuse_unknown(&c.unknown, "consent.", p);
            Consent {
                presented: boolean(&c.presented, "consent.presented", p),
                accepted: boolean(&c.accepted, "consent.accepted", p),
            }
        }
        None => {
            p.add("consent", "is required");
            Consent {
                presented: false,
                accepted: false,
            }
        }
    }
}
