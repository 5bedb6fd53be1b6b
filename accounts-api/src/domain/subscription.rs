//! Subscription states and the transitions between them. Each transition checks its rule and
//! changes the record, or refuses with fixed text; the caller runs it inside the storage
//! transaction, on the freshly read record.

use crate::model::SubscriptionRecord;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SubState {
    Active,
    Canceled,
    /// Renewal failed on every retry of the schedule; no more charges.
    Deactivated,
}

impl SubState {
    /// The wire name (`active`, `canceled`, `deactivated`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Canceled => "canceled",
            Self::Deactivated => "deactivated",
        }
    }
}

/// Why a transition was refused (fixed text, shown to the merchant).
pub type Refusal = &'static str;

impl SubscriptionRecord {
    /// The merchant cancels (API): anything not canceled yet, a deactivated one included.
    pub fn cancel(&mut self, now: i64) -> Result<(), Refusal> {
        if self.state == SubState::Canceled {
            return Err("the subscription is already canceled");
        }
        self.state = SubState::Canceled;
        self.canceled = Some(now);
        Ok(())
    }

    /// The customer cancels on the account page: only an active subscription.
    pub fn cancel_by_customer(&mut self, now: i64) -> Result<(), Refusal> {
        if self.state != SubState::Active {
            return Err("the subscription is not active");
        }
        self.cancel(now)
    }

    /// Uncancels a subscription (API and account page alike): a canceled one becomes active
    /// again (`Ok(true)`); an active one is left as it is (`Ok(false)`: a retried uncancel
    /// succeeds, as FastSpring's does, and changes nothing); any other state refuses.
    pub fn resume(&mut self) -> Result<bool, Refusal> {
        match self.state {
            SubState::Canceled => {
                self.state = SubState::Active;
                self.canceled = None;
                Ok(true)
            }
            SubState::Active => Ok(false),
            _ => Err("the subscription is not canceled"),
        }
    }

    /// The last decline of the retry schedule ends the subscription.
    pub fn deactivate(&mut self) {
        self.state = SubState::Deactivated;
    }

    /// Renews automatically: a saved payment method and the flag on.
    pub fn is_automatic(&self) -> bool {
        self.auto_renew && self.payment_method.is_some()
    }

    /// The saved card expires before the next charge date.
    pub fn card_expires_before_next_charge(&self) -> bool {
        self.is_automatic()
            && self.payment_kind == "card"
            && self
                .expiry
                .as_deref()
                .and_then(super::card::valid_until)
                .is_some_and(|until| until <= self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::interval::IntervalUnit;

    fn sub(state: SubState) -> SubscriptionRecord {
        SubscriptionRecord {
            id: crate::model::test_id("s"),
            store: crate::model::test_id("st"),
            account: crate::model::test_id("a"),
            order: crate::model::test_id("o"),
            product: "p".into(),
            quantity: 1,
            price: 100,
            currency: "USD".into(),
            interval_unit: IntervalUnit::Month,
            interval_length: 1,
            state,
            auto_renew: true,
            payment_method: Some("pm".into()),
            payment_kind: "card".into(),
            brand: None,
            last4: None,
            expiry: None,
            begin: 0,
            next: 0,
            canceled: None,
            renewal: Default::default(),
            live: false,
        }
    }

    #[test]
    fn cancel_and_resume_follow_the_state_rules() {
        let mut s = sub(SubState::Active);
        s.cancel(7).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.state, s.canceled), (SubState::Canceled, Some(7)));
        assert!(s.cancel(8).is_err(), "already canceled");
        assert_eq!(s.resume(), Ok(true));
        assert_eq!((s.state, s.canceled), (SubState::Active, None));
        assert_eq!(s.resume(), Ok(false), "uncancel again: success, no change");
        assert_eq!((s.state, s.canceled), (SubState::Active, None));
        assert!(
            sub(SubState::Deactivated).resume().is_err(),
            "a deactivated one is not uncanceled"
        );

        let mut d = sub(SubState::Deactivated);
        assert!(
            d.cancel_by_customer(1).is_err(),
            "customers cancel active ones only"
        );
        assert!(
            d.cancel(1).is_ok(),
            "the merchant may cancel a deactivated one"
        );
    }
}
