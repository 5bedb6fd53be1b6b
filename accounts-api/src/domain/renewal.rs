//! The renewal schedule, as rules on a subscription and the time (`now`, ms): when a
//! subscription has work, the retry days after a decline, the reminder lead for manual
//! renewals, and the idempotency key of each charge attempt. The protocol that acts on them is
//! `service::renewals`.

use super::events::DomainEvent;
use super::money::Money;
use super::subscription::SubState;
use crate::model::SubscriptionRecord;

pub const DAY_MS: i64 = 86_400_000;
/// Retries after a decline, in days after the due date. The decline after the last one
/// deactivates the subscription.
pub const RETRY_DAYS: [i64; 3] = [1, 3, 5];
/// Manual-renewal reminders go out this long before the due date.
pub const REMIND_AHEAD_MS: i64 = 3 * DAY_MS;
pub(crate) fn automatic(s: &SubscriptionRecord) -> bool {
    s.is_automatic()
}

/// Whether the saved card expires before the next charge date (`domain::card`'s rule).
pub(crate) fn card_expiring(s: &SubscriptionRecord) -> bool {
    s.card_expires_before_next_charge()
}

pub(crate) fn expiry_needs_update(s: &SubscriptionRecord) -> bool {
    let expiring = card_expiring(s);
    expiring != s.renewal.card_expiring || (expiring && s.renewal.expiring_notified != Some(s.next))
}

impl SubscriptionRecord {
    /// The earliest time (ms) the renewal job has work for this subscription, `None` if it has
    /// none until the record changes. The storage port's `due_subscriptions(now, …)` selects
    /// `work_at <= now` (a SQL backend keeps it as an indexed column).
    pub fn work_at(&self) -> Option<i64> {
        // An interrupted charge is finished (or, if it never reached the vault and the
        // subscription stopped running, dropped) whatever happened to the subscription meanwhile:
        // the processor may have taken it.
        if self.renewal.pending.is_some() {
            return Some(i64::MIN);
        }
        match self.state {
            SubState::Deactivated => return None,
            // The period end ends a canceled subscription and a pause.
            SubState::Canceled | SubState::Paused => return Some(self.next),
            SubState::Active | SubState::Overdue => {}
        }
        if expiry_needs_update(self) {
            return Some(i64::MIN);
        }
        if self.lifecycle.pause_scheduled.is_some() {
            // The pause begins at the next charge date, instead of a charge or a reminder.
            return Some(self.next);
        }
        if automatic(self) {
            Some(self.next.max(self.renewal.retry_at.unwrap_or(i64::MIN)))
        } else if self.renewal.reminded != Some(self.next) {
            Some(self.next.saturating_sub(REMIND_AHEAD_MS))
        } else if self.state == SubState::Active {
            // Reminded: unpaid at its date, it becomes overdue.
            Some(self.next)
        } else {
            Some(self.grace_end())
        }
    }

    /// Whether the period end (`next <= now`) changes the state: a canceled subscription ends,
    /// a scheduled pause begins, a pause ends ([`SubscriptionRecord::period_end`]).
    pub fn has_period_transition(&self, now: i64) -> bool {
        self.next <= now
            && self.renewal.pending.is_none()
            && match self.state {
                SubState::Canceled | SubState::Paused => true,
                // A pause begins, or an unpaid manual renewal becomes overdue.
                SubState::Active => self.lifecycle.pause_scheduled.is_some() || !automatic(self),
                // An unpaid manual renewal ends after its grace.
                SubState::Overdue => !automatic(self) && self.grace_end() <= now,
                SubState::Deactivated => false,
            }
    }

    /// Drops the pending renewal intent if no attempt of it can have reached the vault, no
    /// worker holds it, and the subscription no longer runs (canceled, paused, deactivated):
    /// such a charge must never start. Returns the event that says so. An intent that may
    /// have reached the processor stays, to be finished with its key.
    pub fn drop_unsent_charge(&mut self) -> Option<DomainEvent> {
        let p = self.renewal.pending.as_ref()?;
        if self.state.charges() || !p.unsent || self.renewal.lease.is_some() {
            return None;
        }
        let p = self.renewal.pending.take()?;
        Some(DomainEvent::ChargeCanceled {
            subscription: self.id.clone(),
            account: self.account.clone(),
            amount: Money::of(p.amount, &p.currency),
            period: p.period,
            reason: format!("subscription_{}", self.state.as_str()),
        })
    }
}

/// Whether a run at `now` has work for this subscription.
pub fn has_work(s: &SubscriptionRecord, now: i64) -> bool {
    s.work_at().is_some_and(|t| t <= now)
}

pub(crate) fn charge_key(s: &SubscriptionRecord) -> String {
    match s.renewal.failed_attempts {
        0 => format!("{}:{}", s.id, s.next),
        n => format!("{}:{}:{n}", s.id, s.next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IntervalUnit;
    use crate::model::{PendingCharge, RenewalState};

    const T: i64 = 1_800_000_000_000;

    fn sub(auto: bool) -> SubscriptionRecord {
        SubscriptionRecord {
            id: crate::model::test_id("sub1"),
            store: crate::model::test_id("s"),
            account: crate::model::test_id("a"),
            order: crate::model::test_id("o"),
            product: "p".into(),
            quantity: 1,
            price: 1495,
            currency: "USD".into(),
            interval_unit: IntervalUnit::Month,
            interval_length: 1,
            state: SubState::Active,
            auto_renew: auto,
            payment_method: auto.then(|| "pm_1".into()),
            payment_kind: "card".into(),
            brand: Some("visa".into()),
            last4: Some("4242".into()),
            expiry: Some("12/40".into()),
            begin: T - 30 * DAY_MS,
            next: T,
            canceled: None,
            renewal: RenewalState::default(),
            live: false,
            lifecycle: Default::default(),
            rebills: Vec::new(),
        }
    }

    #[test]
    fn an_automatic_subscription_is_due_at_its_next_charge_date_and_not_before() {
        let s = sub(true);
        assert!(!has_work(&s, T - 1));
        assert!(has_work(&s, T));
        assert_eq!(charge_key(&s), format!("sub1:{T}"));
    }

    #[test]
    fn after_a_decline_the_retry_waits_for_its_day_and_uses_a_new_key() {
        let mut s = sub(true);
        // As `settle_decline` leaves it after declines 1, 2 and 3.
        for (n, days) in RETRY_DAYS.iter().enumerate() {
            s.renewal.failed_attempts = n as u32 + 1;
            s.renewal.retry_at = Some(T + days * DAY_MS);
            assert!(!has_work(&s, T + days * DAY_MS - 1), "retry {n} too early");
            assert!(has_work(&s, T + days * DAY_MS), "retry {n} on its day");
            assert_eq!(charge_key(&s), format!("sub1:{T}:{}", n + 1));
        }
        s.state = SubState::Deactivated;
        assert!(!has_work(&s, T + 100 * DAY_MS), "deactivated: never again");
        s.renewal.pending = Some(PendingCharge {
            key: charge_key(&s),
            period: T,
            amount: 1495,
            currency: "USD".into(),
            started: T,
            unsent: false,
        });
        assert!(
            has_work(&s, T),
            "an interrupted charge is finished even on an inactive subscription"
        );
    }

    #[test]
    fn a_pending_intent_is_always_resumed() {
        let mut s = sub(true);
        s.renewal.pending = Some(PendingCharge {
            key: charge_key(&s),
            period: T,
            amount: 1495,
            currency: "USD".into(),
            started: T,
            unsent: false,
        });
        assert!(has_work(&s, T - 10 * DAY_MS));
    }

    #[test]
    fn manual_subscriptions_are_reminded_three_days_ahead_once_per_period() {
        let mut s = sub(false);
        assert!(!has_work(&s, T - REMIND_AHEAD_MS - 1));
        assert!(has_work(&s, T - REMIND_AHEAD_MS));
        s.renewal.reminded = Some(T);
        assert!(!has_work(&s, T - 1), "reminded: nothing until its date");
        // Unpaid at its date it becomes overdue, and ends after the grace.
        assert!(has_work(&s, T) && s.has_period_transition(T));
        s.state = SubState::Overdue;
        assert!(!has_work(&s, T + 5 * DAY_MS - 1) && !s.has_period_transition(T + DAY_MS));
        assert!(has_work(&s, T + 5 * DAY_MS) && s.has_period_transition(T + 5 * DAY_MS));
    }

    #[test]
    fn a_card_expiring_before_the_next_charge_is_flagged_once_per_period() {
        let mut s = sub(true);
        assert!(!card_expiring(&s));
        s.expiry = Some("01/27".into()); // valid until 2027-02-01, T is 2027-01-15
        s.next = T + 30 * DAY_MS;
        assert!(card_expiring(&s));
        assert!(has_work(&s, T), "flag and event due well before the charge");
        s.renewal.card_expiring = true;
        s.renewal.expiring_notified = Some(s.next);
        assert!(!has_work(&s, T));
    }
}
