//! The subscription state machine. Every transition is a method here: it checks its rule on the
//! freshly read record (the caller runs it inside the storage transaction), changes the record,
//! and returns the events it emits — or refuses with fixed text and changes nothing.
//!
//! States (FastSpring's words): `active`; `overdue` (a renewal was declined, retries are
//! pending); `canceled` (ends at the end of the paid period); `paused` (no charges until the
//! resume date, `next`); `deactivated` (ended: no charges, `active: false`). A scheduled pause
//! keeps the subscription `active` (`isPauseScheduled`) until its next charge date.
//!
//! | transition                         | from                          | to          | event(s)                               |
//! |------------------------------------|-------------------------------|-------------|----------------------------------------|
//! | checkout                           | —                             | active      | `subscription.activated`               |
//! | renewal charged                    | active, overdue               | active      | `subscription.charge.completed`        |
//! | renewal declined, retries left     | active, overdue               | overdue     | `subscription.charge.failed`           |
//! | renewal declined, last (or final)  | active, overdue               | deactivated | `…charge.failed`, `…deactivated`       |
//! | cancel at period end               | active, overdue, paused       | canceled    | `subscription.canceled`                |
//! | cancel now (`billingPeriod=0`)     | active, overdue, paused       | deactivated | `…canceled`, `…deactivated`            |
//! | cancel now                         | canceled                      | deactivated | `subscription.deactivated`             |
//! | uncancel                           | canceled                      | active/overdue | `subscription.uncanceled`           |
//! | pause N periods (scheduled)        | active                        | active      | `subscription.updated`                 |
//! | remove a scheduled pause           | active                        | active      | `subscription.updated`                 |
//! | period end with a pause scheduled  | active                        | paused      | `subscription.paused`                  |
//! | resume early / resume date reached | paused                        | active      | `subscription.resumed`                 |
//! | period end of a canceled one       | canceled                      | deactivated | `subscription.deactivated`             |
//!
//! Repeating a transition that already happened (uncancel of an active one, cancel of a
//! deactivated one by the merchant) succeeds and emits nothing, as FastSpring's retries do.

use super::events::DomainEvent;
use super::interval::add_interval;
use crate::model::SubscriptionRecord;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SubState {
    Active,
    /// A renewal was declined; retries are scheduled (`renewal.retry_at`).
    Overdue,
    /// Canceled by the merchant or the customer: runs until the end of the paid period (`next`).
    Canceled,
    /// Paused: no charges until `next`, the resume date.
    Paused,
    /// Ended: no more charges, `active: false`.
    Deactivated,
}

impl SubState {
    /// The wire name (`active`, `overdue`, `canceled`, `paused`, `deactivated`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Overdue => "overdue",
            Self::Canceled => "canceled",
            Self::Paused => "paused",
            Self::Deactivated => "deactivated",
        }
    }

    /// FastSpring's `active` flag: everything but a deactivated subscription.
    pub fn is_live(self) -> bool {
        self != Self::Deactivated
    }

    /// Whether a renewal charge may start in this state.
    pub fn charges(self) -> bool {
        matches!(self, Self::Active | Self::Overdue)
    }
}

/// Lifecycle bookkeeping beside the state (absent in records written before it existed).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// A pause of this many periods takes effect at the next charge date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_scheduled: Option<u32>,
    /// When the subscription was deactivated (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<i64>,
}

impl Lifecycle {
    /// Nothing set (the record is written as before this existed).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Why a transition was refused (fixed text, shown to the merchant).
pub type Refusal = &'static str;

/// Who asks for a change: the rules differ (a customer cancels only a running subscription).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Merchant,
    Customer,
}

/// When a cancellation takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelWhen {
    /// At the end of the paid period (`next`): FastSpring's default.
    PeriodEnd,
    /// At once (`billingPeriod=0`).
    Now,
}

/// The most periods one pause may skip.
pub const MAX_PAUSE_PERIODS: u32 = 12;

/// Why a subscription was deactivated (`reason` of `subscription.deactivated`).
pub const REASON_CANCELED: &str = "canceled";

impl SubscriptionRecord {
    /// Cancels (API or account page), at period end or now.
    pub fn cancel(
        &mut self,
        by: By,
        when: CancelWhen,
        now: i64,
    ) -> Result<Vec<DomainEvent>, Refusal> {
        match (self.state, by) {
            (SubState::Deactivated, By::Merchant) => return Ok(vec![]),
            (SubState::Deactivated, By::Customer) => return Err("the subscription is not active"),
            (SubState::Canceled, By::Customer) => return Err("the subscription is not active"),
            (SubState::Canceled, By::Merchant) if when == CancelWhen::PeriodEnd => {
                return Err("the subscription is already canceled");
            }
            (SubState::Canceled, By::Merchant) => {
                return Ok(vec![self.deactivate(REASON_CANCELED, now)]);
            }
            _ => {}
        }
        self.state = SubState::Canceled;
        self.canceled = Some(now);
        self.lifecycle.pause_scheduled = None;
        let mut out = vec![DomainEvent::SubscriptionCanceled(self.clone())];
        if when == CancelWhen::Now {
            out.push(self.deactivate(REASON_CANCELED, now));
        }
        Ok(out)
    }

    /// Uncancels (API and account page alike): a canceled one runs again (`overdue` if it was
    /// waiting for a retry); a running one is left as it is (a retried uncancel succeeds, as
    /// FastSpring's does, and emits nothing); a deactivated one refuses.
    pub fn uncancel(&mut self) -> Result<Vec<DomainEvent>, Refusal> {
        match self.state {
            SubState::Canceled => {
                self.state = if self.renewal.retry_at.is_some() {
                    SubState::Overdue
                } else {
                    SubState::Active
                };
                self.canceled = None;
                Ok(vec![DomainEvent::SubscriptionUncanceled(self.clone())])
            }
            SubState::Active | SubState::Overdue | SubState::Paused => Ok(vec![]),
            SubState::Deactivated => Err("the subscription is not canceled"),
        }
    }

    /// Schedules a pause of `periods` periods from the next charge date (replacing a pause
    /// scheduled before).
    pub fn schedule_pause(&mut self, periods: u32) -> Result<Vec<DomainEvent>, Refusal> {
        if !(1..=MAX_PAUSE_PERIODS).contains(&periods) {
            return Err("pausePeriodCount must be 1 to 12");
        }
        match self.state {
            SubState::Active => {}
            SubState::Paused => return Err("the subscription is already paused"),
            SubState::Overdue => return Err("the subscription is overdue"),
            SubState::Canceled | SubState::Deactivated => {
                return Err("the subscription is not active");
            }
        }
        if self.lifecycle.pause_scheduled == Some(periods) {
            return Ok(vec![]);
        }
        self.lifecycle.pause_scheduled = Some(periods);
        Ok(vec![DomainEvent::SubscriptionUpdated(self.clone())])
    }

    /// Resumes: removes a scheduled pause, or ends a pause early (the next charge is due now).
    pub fn resume_pause(&mut self, now: i64) -> Result<Vec<DomainEvent>, Refusal> {
        match self.state {
            SubState::Active if self.lifecycle.pause_scheduled.is_some() => {
                self.lifecycle.pause_scheduled = None;
                Ok(vec![DomainEvent::SubscriptionUpdated(self.clone())])
            }
            SubState::Paused => {
                self.state = SubState::Active;
                self.next = self.next.min(now);
                Ok(vec![DomainEvent::SubscriptionResumed(self.clone())])
            }
            _ => Err("the subscription is not paused"),
        }
    }

    /// The time-driven transitions at the end of a period (`next <= now`), run by the renewal
    /// job before any charge: a canceled subscription ends, a scheduled pause begins (the next
    /// charge moves by its periods), a pause that reached its resume date ends.
    pub fn period_end(&mut self, now: i64) -> Vec<DomainEvent> {
        if self.next > now {
            return vec![];
        }
        match (self.state, self.lifecycle.pause_scheduled) {
            (SubState::Canceled, _) => vec![self.deactivate(REASON_CANCELED, now)],
            (SubState::Active, Some(periods)) => {
                self.state = SubState::Paused;
                self.lifecycle.pause_scheduled = None;
                for _ in 0..periods {
                    self.next = add_interval(self.next, self.interval_unit, self.interval_length);
                }
                self.renewal.reminded = None;
                vec![DomainEvent::SubscriptionPaused(self.clone())]
            }
            (SubState::Paused, _) => {
                self.state = SubState::Active;
                vec![DomainEvent::SubscriptionResumed(self.clone())]
            }
            _ => vec![],
        }
    }

    /// A renewal was declined and a retry is scheduled.
    pub fn mark_overdue(&mut self) {
        if self.state.charges() {
            self.state = SubState::Overdue;
        }
    }

    /// A renewal succeeded: an overdue subscription is active again.
    pub fn mark_paid(&mut self) {
        if self.state == SubState::Overdue {
            self.state = SubState::Active;
        }
    }

    /// Ends the subscription (period end of a canceled one, cancel now, the last decline).
    pub fn deactivate(&mut self, reason: &str, now: i64) -> DomainEvent {
        self.state = SubState::Deactivated;
        self.lifecycle.ended = Some(now);
        self.lifecycle.pause_scheduled = None;
        DomainEvent::SubscriptionDeactivated {
            subscription: self.clone(),
            reason: reason.to_owned(),
        }
    }

    /// When a canceled or ended subscription ends or ended (`deactivationDate`).
    pub fn deactivation_date(&self) -> Option<i64> {
        match self.state {
            SubState::Deactivated => self.lifecycle.ended.or(self.canceled.map(|_| self.next)),
            SubState::Canceled => Some(self.next),
            _ => None,
        }
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

    const T: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;

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
            begin: T - 30 * DAY,
            next: T,
            canceled: None,
            renewal: Default::default(),
            live: false,
            lifecycle: Lifecycle::default(),
            rebills: Vec::new(),
        }
    }

    fn kinds(events: &[DomainEvent]) -> Vec<&'static str> {
        events.iter().map(DomainEvent::kind).collect()
    }

    #[test]
    fn cancel_at_period_end_runs_until_next_then_deactivates_once() {
        let mut s = sub(SubState::Active);
        let ev = s.cancel(By::Merchant, CancelWhen::PeriodEnd, T - DAY);
        assert_eq!(ev.as_deref().map(kinds), Ok(vec!["subscription.canceled"]));
        assert_eq!((s.state, s.canceled), (SubState::Canceled, Some(T - DAY)));
        assert!(s.state.is_live(), "active until the period ends");
        assert_eq!(s.deactivation_date(), Some(T));
        assert!(s.period_end(T - 1).is_empty(), "not before the end");
        assert_eq!(kinds(&s.period_end(T)), vec!["subscription.deactivated"]);
        assert_eq!(s.state, SubState::Deactivated);
        assert!(!s.state.is_live());
        assert_eq!(s.deactivation_date(), Some(T));
        assert!(s.period_end(T + 1).is_empty(), "deactivated once");
        assert!(
            s.cancel(By::Merchant, CancelWhen::PeriodEnd, T)
                .is_ok_and(|e| e.is_empty()),
            "the merchant's cancel of an ended one: success, nothing changes"
        );
        assert_eq!(s.state, SubState::Deactivated);
        assert!(s.cancel(By::Customer, CancelWhen::PeriodEnd, T).is_err());
        assert!(s.uncancel().is_err(), "a deactivated one is not uncanceled");
    }

    #[test]
    fn cancel_now_deactivates_at_once_with_both_events() {
        let mut s = sub(SubState::Active);
        let ev = s.cancel(By::Merchant, CancelWhen::Now, T - 5 * DAY);
        assert_eq!(
            ev.as_deref().map(kinds),
            Ok(vec!["subscription.canceled", "subscription.deactivated"])
        );
        assert_eq!(s.state, SubState::Deactivated);
        assert_eq!(s.deactivation_date(), Some(T - 5 * DAY));

        let mut c = sub(SubState::Active);
        assert!(
            c.cancel(By::Merchant, CancelWhen::PeriodEnd, T - 5 * DAY)
                .is_ok()
        );
        assert!(
            c.cancel(By::Merchant, CancelWhen::PeriodEnd, T - 4 * DAY)
                .is_err()
        );
        let ev = c.cancel(By::Merchant, CancelWhen::Now, T - 4 * DAY);
        assert_eq!(
            ev.as_deref().map(kinds),
            Ok(vec!["subscription.deactivated"])
        );
        assert_eq!(c.deactivation_date(), Some(T - 4 * DAY));
    }

    #[test]
    fn uncancel_is_idempotent_and_returns_to_overdue_when_a_retry_is_pending() {
        let mut s = sub(SubState::Active);
        assert!(s.cancel(By::Customer, CancelWhen::PeriodEnd, 7).is_ok());
        assert_eq!(
            s.uncancel().as_deref().map(kinds),
            Ok(vec!["subscription.uncanceled"])
        );
        assert_eq!((s.state, s.canceled), (SubState::Active, None));
        assert_eq!(
            s.uncancel().map(|e| e.len()),
            Ok(0),
            "again: success, no event"
        );

        let mut o = sub(SubState::Active);
        o.renewal.retry_at = Some(T + DAY);
        o.mark_overdue();
        assert_eq!(o.state, SubState::Overdue);
        assert!(o.cancel(By::Customer, CancelWhen::PeriodEnd, T).is_ok());
        assert!(o.uncancel().is_ok());
        assert_eq!(o.state, SubState::Overdue);
        o.mark_paid();
        assert_eq!(o.state, SubState::Active);
    }

    #[test]
    fn a_pause_skips_its_periods_from_the_next_charge_date_and_resumes() {
        let mut s = sub(SubState::Active);
        assert!(s.schedule_pause(0).is_err());
        assert!(s.schedule_pause(MAX_PAUSE_PERIODS + 1).is_err());
        assert_eq!(
            s.schedule_pause(2).as_deref().map(kinds),
            Ok(vec!["subscription.updated"])
        );
        assert_eq!(s.state, SubState::Active, "scheduled: still active");
        assert!(s.period_end(T - 1).is_empty());
        assert_eq!(kinds(&s.period_end(T)), vec!["subscription.paused"]);
        assert_eq!(s.state, SubState::Paused);
        assert!(!s.state.charges());
        let resume = add_interval(
            add_interval(T, IntervalUnit::Month, 1),
            IntervalUnit::Month,
            1,
        );
        assert_eq!(s.next, resume, "two periods later");
        assert!(s.period_end(resume - 1).is_empty());
        assert_eq!(kinds(&s.period_end(resume)), vec!["subscription.resumed"]);
        assert_eq!((s.state, s.next), (SubState::Active, resume));

        let mut early = sub(SubState::Active);
        assert!(early.schedule_pause(3).is_ok());
        assert!(!early.period_end(T).is_empty());
        assert_eq!(
            early.resume_pause(T + DAY).as_deref().map(kinds),
            Ok(vec!["subscription.resumed"])
        );
        assert_eq!((early.state, early.next), (SubState::Active, T + DAY));
        assert!(early.resume_pause(T + DAY).is_err(), "not paused any more");

        let mut unscheduled = sub(SubState::Active);
        assert!(unscheduled.schedule_pause(1).is_ok());
        assert!(unscheduled.resume_pause(T).is_ok());
        assert_eq!(unscheduled.lifecycle.pause_scheduled, None);
        assert!(unscheduled.period_end(T).is_empty(), "no pause any more");
        assert_eq!(unscheduled.state, SubState::Active);
    }

    #[test]
    fn states_refuse_what_they_do_not_allow() {
        for st in [
            SubState::Canceled,
            SubState::Deactivated,
            SubState::Paused,
            SubState::Overdue,
        ] {
            assert!(sub(st).schedule_pause(1).is_err(), "{st:?}");
        }
        for st in [SubState::Active, SubState::Overdue] {
            assert!(st.charges() && st.is_live());
        }
        for st in [SubState::Canceled, SubState::Paused, SubState::Deactivated] {
            assert!(!st.charges(), "{st:?}");
        }
        let mut p = sub(SubState::Paused);
        assert!(p.cancel(By::Customer, CancelWhen::PeriodEnd, T).is_ok());
        assert_eq!(p.state, SubState::Canceled);
    }
}
