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
//! | period end of an unpaid manual one | active                        | overdue     | `subscription.payment.overdue`         |
//! | grace end of an unpaid manual one  | overdue                       | deactivated | `subscription.deactivated`             |
//!
//! A manual subscription (no saved card, or `autoRenew: false`) is reminded before its date
//! (`subscription.payment.reminder`), becomes `overdue` on it, and ends [`MANUAL_GRACE_MS`]
//! later (reason `not_paid`), as FastSpring's unpaid manual renewals do. Nothing charges it.
//!
//! Repeating a transition that already happened (uncancel of an active one, cancel of a
//! deactivated one by the merchant) succeeds and emits nothing, as FastSpring's retries do.
//!
//! Every transition that changes the record also sets FastSpring's `changed` (its time, on the
//! lifecycle clock), and a charged renewal starts the next billing period (`sequence` + 1); a
//! no-op repeat changes neither. Records written before these existed get them from what they
//! hold ([`SubscriptionRecord::changed`], [`SubscriptionRecord::sequence`]).

use super::events::DomainEvent;
use super::interval::{add_interval, day_end};
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
    /// When the record last changed (ms; FastSpring's `changed`). Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<i64>,
    /// The number of the current billing period (FastSpring's `sequence`: 1 for the first, + 1
    /// per charged renewal). Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u32>,
}

impl Lifecycle {
    /// Nothing set (the record is written as before this existed).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// A subscription created at `now` (checkout): its first billing period.
    pub fn created(now: i64) -> Self {
        Self {
            changed: Some(now),
            sequence: Some(1),
            ..Self::default()
        }
    }
}

/// The most periods [`SubscriptionRecord::sequence`] counts for a record without `sequence`
/// (a daily subscription of 27 years; bounds the walk over a damaged record).
const MAX_DERIVED_SEQUENCE: u32 = 10_000;

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
/// A manual subscription's period was not paid by the end of its grace.
pub const REASON_NOT_PAID: &str = "not_paid";

/// How long an unpaid manual subscription stays `overdue` before it ends: as long as a
/// declined automatic renewal is retried (its last retry day).
pub const MANUAL_GRACE_MS: i64 =
    super::renewal::DAY_MS * super::renewal::RETRY_DAYS[super::renewal::RETRY_DAYS.len() - 1];

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
        self.touch(now);
        let mut out = vec![DomainEvent::SubscriptionCanceled(self.clone())];
        if when == CancelWhen::Now {
            out.push(self.deactivate(REASON_CANCELED, now));
        }
        Ok(out)
    }

    /// Uncancels (API and account page alike): a canceled one runs again (`overdue` if it was
    /// waiting for a retry); a running one is left as it is (a retried uncancel succeeds, as
    /// FastSpring's does, and emits nothing); a deactivated one refuses.
    pub fn uncancel(&mut self, now: i64) -> Result<Vec<DomainEvent>, Refusal> {
        match self.state {
            SubState::Canceled => {
                self.state = if self.renewal.retry_at.is_some() {
                    SubState::Overdue
                } else {
                    SubState::Active
                };
                self.canceled = None;
                self.touch(now);
                Ok(vec![DomainEvent::SubscriptionUncanceled(self.clone())])
            }
            SubState::Active | SubState::Overdue | SubState::Paused => Ok(vec![]),
            SubState::Deactivated => Err("the subscription is not canceled"),
        }
    }

    /// Schedules a pause of `periods` periods from the next charge date (replacing a pause
    /// scheduled before).
    pub fn schedule_pause(&mut self, periods: u32, now: i64) -> Result<Vec<DomainEvent>, Refusal> {
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
        self.touch(now);
        Ok(vec![DomainEvent::SubscriptionUpdated(self.clone())])
    }

    /// Resumes: removes a scheduled pause, or ends a pause early (the next charge is due now).
    pub fn resume_pause(&mut self, now: i64) -> Result<Vec<DomainEvent>, Refusal> {
        match self.state {
            SubState::Active if self.lifecycle.pause_scheduled.is_some() => {
                self.lifecycle.pause_scheduled = None;
                self.touch(now);
                Ok(vec![DomainEvent::SubscriptionUpdated(self.clone())])
            }
            SubState::Paused => {
                self.state = SubState::Active;
                self.next = self.next.min(now);
                self.touch(now);
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
                self.touch(now);
                vec![DomainEvent::SubscriptionPaused(self.clone())]
            }
            (SubState::Paused, _) => {
                self.state = SubState::Active;
                self.touch(now);
                vec![DomainEvent::SubscriptionResumed(self.clone())]
            }
            // A manual renewal nobody paid by its date.
            (SubState::Active, None) if !self.is_automatic() => {
                self.state = SubState::Overdue;
                self.touch(now);
                vec![DomainEvent::PaymentOverdue(self.clone())]
            }
            (SubState::Overdue, _) if !self.is_automatic() && self.grace_end() <= now => {
                vec![self.deactivate(REASON_NOT_PAID, now)]
            }
            _ => vec![],
        }
    }

    /// When an unpaid manual subscription ends (`overdue` since `next`).
    pub fn grace_end(&self) -> i64 {
        self.next.saturating_add(MANUAL_GRACE_MS)
    }

    /// A renewal was declined at `now` and a retry is scheduled.
    pub fn mark_overdue(&mut self, now: i64) {
        if self.state.charges() {
            self.state = SubState::Overdue;
        }
        self.touch(now);
    }

    /// The renewal of the period that began at `period` was charged at `now`: the next billing
    /// period starts (`sequence` + 1, `next` one interval after `period`), and an overdue
    /// subscription is active again.
    ///
    /// `next` is a date (midnight UTC), as FastSpring's. It stays one when `period` was one;
    /// otherwise (a record sold before dates, which kept the purchase's time of day, or a
    /// period started by an early resume) it moves forward to the next midnight: the customer
    /// is never charged earlier than the schedule they bought promised.
    pub fn charged(&mut self, period: i64, now: i64) {
        let sequence = self.sequence();
        self.next = self.period_after(period);
        self.lifecycle.sequence = Some(sequence.saturating_add(1));
        if self.state == SubState::Overdue {
            self.state = SubState::Active;
        }
        self.touch(now);
    }

    /// The start of the billing period after the one that began at `period`: one interval
    /// later, at the next midnight UTC if that is not one (see [`Self::charged`]).
    pub fn period_after(&self, period: i64) -> i64 {
        day_end(add_interval(
            period,
            self.interval_unit,
            self.interval_length,
        ))
    }

    /// Its saved payment method was removed at `now`: it renews manually from here on.
    pub fn payment_method_removed(&mut self, now: i64) {
        self.payment_method = None;
        self.auto_renew = false;
        self.touch(now);
    }

    /// When it last changed (ms, FastSpring's `changed`). A record written before that was kept
    /// answers the latest instant it holds: its creation, last charge, cancellation or end.
    pub fn changed(&self) -> i64 {
        self.lifecycle.changed.unwrap_or_else(|| {
            [
                self.canceled,
                self.lifecycle.ended,
                self.renewal.last_charged,
            ]
            .into_iter()
            .flatten()
            .fold(self.begin, i64::max)
        })
    }

    /// The number of the current billing period (FastSpring's `sequence`). A record written
    /// before that was kept derives it from its schedule: the periods from `begin` up to `next`
    /// (each one began with a charge, the first at checkout; a pause taken before then counts
    /// its periods too, which such records cannot tell apart).
    pub fn sequence(&self) -> u32 {
        if let Some(n) = self.lifecycle.sequence {
            return n;
        }
        let (mut at, mut n) = (self.begin, 0u32);
        while n < MAX_DERIVED_SEQUENCE {
            let end = add_interval(at, self.interval_unit, self.interval_length);
            if end <= at || end > self.next {
                break;
            }
            (at, n) = (end, n + 1);
        }
        n.max(1)
    }

    /// The record changed at `now`.
    fn touch(&mut self, now: i64) {
        self.lifecycle.changed = Some(now);
    }

    /// Ends the subscription (period end of a canceled one, cancel now, the last decline).
    pub fn deactivate(&mut self, reason: &str, now: i64) -> DomainEvent {
        self.state = SubState::Deactivated;
        self.lifecycle.ended = Some(now);
        self.lifecycle.pause_scheduled = None;
        self.touch(now);
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
mod tests;
