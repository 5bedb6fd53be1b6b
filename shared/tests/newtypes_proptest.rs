//! Property tests for the shared newtypes (issue 6): every valid value round-trips through
//! parse, `as_str`, `Display` and serde unchanged; any input either parses to a valid value or is
//! refused with an error that never contains the input; nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use shared::domain::{
    AccountId, CardBrand, Currency, Expiry, Last4, PaymentMethodId, PaymentType, StoreId,
};
use shared::secret::SecretString;

proptest! {
    #[test]
    fn valid_ids_round_trip_through_parse_display_and_serde(s in "[A-Za-z0-9_-]{1,64}") {
        let store = StoreId::parse(&s).unwrap();
        prop_assert_eq!(store.as_str(), s.as_str());
        prop_assert_eq!(store.to_string(), s.clone());
        let json = serde_json::to_string(&store).unwrap();
        prop_assert_eq!(serde_json::from_str::<StoreId>(&json).unwrap(), store);
        let account = AccountId::parse(&s).unwrap();
        prop_assert_eq!(AccountId::parse(account.as_str()).unwrap(), account);
    }

    #[test]
    fn any_string_is_a_valid_id_or_an_error_that_does_not_echo_it(s in any::<String>()) {
        match StoreId::parse(&s) {
            Ok(id) => {
                prop_assert!(!s.is_empty() && s.len() <= 64);
                prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
                prop_assert_eq!(id.as_str(), s.as_str());
            }
            Err(e) => {
                prop_assert_eq!(e.field, "store");
                if s.len() > 3 {
                    prop_assert!(!e.to_string().contains(&s));
                }
            }
        }
        // Serde goes through the same parser: no way around validation.
        let json = serde_json::to_string(&s).unwrap();
        prop_assert_eq!(serde_json::from_str::<StoreId>(&json).is_ok(), StoreId::parse(&s).is_ok());
    }

    #[test]
    fn payment_method_ids_round_trip_and_nothing_else_parses(hex in "[0-9a-f]{32}", junk in any::<String>()) {
        let id = format!("pm_{hex}");
        let parsed = PaymentMethodId::parse(&id).unwrap();
        prop_assert_eq!(parsed.as_str(), id.as_str());
        prop_assert_eq!(parsed.to_string(), id);
        if let Ok(p) = PaymentMethodId::parse(&junk) {
            prop_assert_eq!(PaymentMethodId::parse(p.as_str()).unwrap(), p);
            prop_assert!(junk.starts_with("pm_") && junk.len() == 35);
        }
        prop_assert_eq!(PaymentMethodId::generate().as_str().len(), 35);
    }

    #[test]
    fn last4_expiry_brand_type_and_currency_never_panic_and_round_trip(
        s in any::<String>(), digits in "[0-9]{4}", month in any::<i64>(), year in any::<i64>()
    ) {
        let l4 = Last4::parse(&digits).unwrap();
        prop_assert_eq!(l4.as_str(), digits.as_str());
        if let Ok(l) = Last4::parse(&s) {
            let again = Last4::parse(l.as_str()).unwrap();
            prop_assert_eq!(again.as_str(), l.as_str());
        }
        match Expiry::parse(month, year) {
            Ok(e) => {
                prop_assert_eq!((i64::from(e.month()), i64::from(e.year())), (month, year));
                prop_assert_eq!(e.mm_yy().len(), 5);
            }
            Err(_) => prop_assert!(!(1..=12).contains(&month) || !(2000..=2099).contains(&year)),
        }
        if let Ok(b) = CardBrand::parse(&s) {
            prop_assert_eq!(CardBrand::parse(b.as_str()).unwrap().as_str(), b.as_str());
        }
        if let Ok(t) = PaymentType::parse(&s) {
            prop_assert_eq!(PaymentType::parse(t.as_str()).unwrap().as_str(), t.as_str());
        }
        if let Ok(c) = Currency::parse(&s) {
            let again = Currency::parse(c.as_str()).unwrap();
            prop_assert_eq!(again.as_str(), c.as_str());
        }
    }

    #[test]
    fn a_token_parses_exactly_when_it_is_1_to_512_printable_characters(s in any::<String>()) {
        let ok = !s.is_empty() && s.len() <= 512 && s.bytes().all(|b| b.is_ascii_graphic());
        match SecretString::parse_token(s.clone()) {
            Ok(t) => {
                prop_assert!(ok);
                prop_assert_eq!(t.expose_secret(), s.as_str());
            }
            Err(e) => {
                prop_assert!(!ok);
                if s.len() > 3 {
                    prop_assert!(!e.to_string().contains(&s));
                }
            }
        }
    }
}
