//! The state machine's transitions, `changed` and `sequence`, one rule per test.

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
    assert!(
        s.uncancel(T).is_err(),
        "a deactivated one is not uncanceled"
    );
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
        s.uncancel(T).as_deref().map(kinds),
        Ok(vec!["subscription.uncanceled"])
    );
    assert_eq!((s.state, s.canceled), (SubState::Active, None));
    assert_eq!(
        s.uncancel(T).map(|e| e.len()),
        Ok(0),
        "again: success, no event"
    );

    let mut o = sub(SubState::Active);
    o.renewal.retry_at = Some(T + DAY);
    o.mark_overdue(T);
    assert_eq!(o.state, SubState::Overdue);
    assert!(o.cancel(By::Customer, CancelWhen::PeriodEnd, T).is_ok());
    assert!(o.uncancel(T).is_ok());
    assert_eq!(o.state, SubState::Overdue);
    o.charged(o.next, T);
    assert_eq!(o.state, SubState::Active);
}

#[test]
fn a_pause_skips_its_periods_from_the_next_charge_date_and_resumes() {
    let mut s = sub(SubState::Active);
    assert!(s.schedule_pause(0, T - DAY).is_err());
    assert!(s.schedule_pause(MAX_PAUSE_PERIODS + 1, T - DAY).is_err());
    assert_eq!(
        s.schedule_pause(2, T - DAY).as_deref().map(kinds),
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
    assert!(early.schedule_pause(3, T - DAY).is_ok());
    assert!(!early.period_end(T).is_empty());
    assert_eq!(
        early.resume_pause(T + DAY).as_deref().map(kinds),
        Ok(vec!["subscription.resumed"])
    );
    assert_eq!((early.state, early.next), (SubState::Active, T + DAY));
    assert!(early.resume_pause(T + DAY).is_err(), "not paused any more");

    let mut unscheduled = sub(SubState::Active);
    assert!(unscheduled.schedule_pause(1, T - DAY).is_ok());
    assert!(unscheduled.resume_pause(T).is_ok());
    assert_eq!(unscheduled.lifecycle.pause_scheduled, None);
    assert!(unscheduled.period_end(T).is_empty(), "no pause any more");
    assert_eq!(unscheduled.state, SubState::Active);
}

/// The time of the last change that an event of `e` carries.
fn changed_in(e: &DomainEvent) -> Option<i64> {
    match e {
        DomainEvent::SubscriptionCanceled(s)
        | DomainEvent::SubscriptionUncanceled(s)
        | DomainEvent::SubscriptionUpdated(s)
        | DomainEvent::SubscriptionPaused(s)
        | DomainEvent::SubscriptionResumed(s)
        | DomainEvent::SubscriptionDeactivated {
            subscription: s, ..
        } => Some(s.changed()),
        _ => None,
    }
}

/// The change times the events of a transition carry, in order.
fn changed_by(events: &[DomainEvent]) -> Vec<Option<i64>> {
    events.iter().map(changed_in).collect()
}

#[test]
fn changed_moves_with_every_change_and_its_event_carries_it_but_a_repeat_moves_nothing() {
    let mut s = sub(SubState::Active);
    s.lifecycle = Lifecycle::created(s.begin);
    assert_eq!(s.changed(), s.begin, "created");
    let ev = s.cancel(By::Merchant, CancelWhen::PeriodEnd, T - 5 * DAY);
    assert_eq!(ev.map(|e| changed_in(&e[0])), Ok(Some(T - 5 * DAY)));
    assert!(
        s.cancel(By::Merchant, CancelWhen::PeriodEnd, T - 4 * DAY)
            .is_err()
    );
    assert_eq!(s.changed(), T - 5 * DAY, "a refused change changes nothing");
    let ev = s.uncancel(T - 4 * DAY);
    assert_eq!(ev.map(|e| changed_in(&e[0])), Ok(Some(T - 4 * DAY)));
    assert_eq!(s.uncancel(T - 3 * DAY).map(|e| e.len()), Ok(0));
    assert_eq!(
        s.changed(),
        T - 4 * DAY,
        "a repeated uncancel changes nothing"
    );
    assert!(s.schedule_pause(1, T - 3 * DAY).is_ok());
    assert_eq!(s.changed(), T - 3 * DAY, "the schedule changed");
    assert!(s.schedule_pause(1, T - 2 * DAY).is_ok_and(|e| e.is_empty()));
    assert_eq!(s.changed(), T - 3 * DAY);
    assert!(s.resume_pause(T - 2 * DAY).is_ok());
    assert_eq!(s.changed(), T - 2 * DAY, "the scheduled pause removed");
    assert!(s.period_end(T - 1).is_empty());
    s.mark_overdue(T + 1);
    assert_eq!(
        (s.state, s.changed()),
        (SubState::Overdue, T + 1),
        "declined"
    );
    s.charged(T, T + 2);
    assert_eq!((s.state, s.changed()), (SubState::Active, T + 2), "charged");
    s.payment_method_removed(T + 3);
    assert_eq!((s.auto_renew, s.changed()), (false, T + 3), "card removed");
    let ev = s.cancel(By::Merchant, CancelWhen::Now, T + 4);
    assert_eq!(
        ev.as_deref().map(changed_by),
        Ok(vec![Some(T + 4), Some(T + 4)])
    );

    let mut p = sub(SubState::Active);
    assert!(p.schedule_pause(1, T - DAY).is_ok());
    assert_eq!(changed_by(&p.period_end(T + 5)), [Some(T + 5)]);
    let resume = p.next;
    assert_eq!(changed_by(&p.period_end(resume)), [Some(resume)]);
    let mut c = sub(SubState::Active);
    assert!(
        c.cancel(By::Customer, CancelWhen::PeriodEnd, T - DAY)
            .is_ok()
    );
    assert_eq!(changed_by(&c.period_end(T + 7)), [Some(T + 7)]);
}

#[test]
fn sequence_is_the_billing_period_number_and_only_a_charge_moves_it() {
    let mut s = sub(SubState::Active);
    s.lifecycle = Lifecycle::created(s.begin);
    assert_eq!(s.sequence(), 1, "the checkout's period");
    let first = s.next;
    s.charged(first, first + 60_000);
    assert_eq!((s.sequence(), s.next), (2, s.period_after(first)));
    // A declined retry, a pause and its end start no period; the charge on the resume date does.
    s.mark_overdue(s.next);
    assert!(
        s.schedule_pause(1, s.next).is_err(),
        "an overdue one is not paused"
    );
    s.charged(s.next, s.next + 1);
    assert_eq!(s.sequence(), 3);
    assert!(s.schedule_pause(1, s.next - DAY).is_ok());
    let _ = s.period_end(s.next);
    let _ = s.period_end(s.next);
    assert_eq!(
        (s.state, s.sequence()),
        (SubState::Active, 3),
        "paused and resumed"
    );
    s.charged(s.next, s.next + 1);
    assert_eq!(s.sequence(), 4);
}

#[test]
fn a_record_stored_before_changed_and_sequence_derives_them_from_what_it_holds() {
    // Two periods charged: the checkout's and one renewal, then a cancel.
    let mut old = sub(SubState::Active);
    old.next = add_interval(
        add_interval(old.begin, IntervalUnit::Month, 1),
        IntervalUnit::Month,
        1,
    );
    old.renewal.last_charged = Some(old.begin + 31 * DAY);
    let mut v = serde_json::to_value(&old).unwrap_or_default();
    assert!(v.get("lifecycle").is_none(), "stored as before: {v}");
    v["canceled"] = serde_json::json!(old.begin + 40 * DAY);
    v["state"] = serde_json::json!("canceled");
    let read: SubscriptionRecord = serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read.sequence(), 2, "periods from begin up to next");
    assert_eq!(
        read.changed(),
        old.begin + 40 * DAY,
        "the latest instant it holds"
    );
    let mut uncharged = sub(SubState::Active);
    assert_eq!(
        (uncharged.sequence(), uncharged.changed()),
        (1, uncharged.begin)
    );
    uncharged.next = uncharged.begin - DAY;
    assert_eq!(
        uncharged.sequence(),
        1,
        "a damaged schedule is still period 1"
    );
    // The first write after the change keeps them.
    let mut later = read.clone();
    later.charged(later.next, T + 9);
    let back: SubscriptionRecord =
        serde_json::from_value(serde_json::to_value(&later).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((back.sequence(), back.changed()), (3, T + 9));
}

#[test]
fn states_refuse_what_they_do_not_allow() {
    for st in [
        SubState::Canceled,
        SubState::Deactivated,
        SubState::Paused,
        SubState::Overdue,
    ] {
        assert!(sub(st).schedule_pause(1, T - DAY).is_err(), "{st:?}");
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

#[test]
fn next_is_a_date_and_a_record_sold_with_a_time_of_day_moves_to_the_next_midnight_never_earlier() {
    // Checkout writes dates: a period that began at a midnight ends at one.
    let midnight = T - T.rem_euclid(DAY);
    let mut s = sub(SubState::Active);
    (s.begin, s.next) = (midnight - 31 * DAY, midnight);
    s.charged(s.next, s.next + 60_000);
    assert_eq!(s.next, add_interval(midnight, IntervalUnit::Month, 1));
    assert_eq!(s.next % DAY, 0);

    // A record written before dates kept the purchase's time of day (T is 08:00 UTC): its next
    // charged renewal moves the following date to the midnight after one interval.
    let mut old = sub(SubState::Active);
    old.charged(T, T + 60_000);
    let exact = add_interval(T, IntervalUnit::Month, 1);
    assert_eq!(old.next % DAY, 0, "a date from now on");
    assert!(
        old.next > exact && old.next - exact < DAY,
        "never earlier than its schedule promised"
    );
    old.charged(old.next, old.next + 60_000);
    assert_eq!(
        old.next,
        add_interval(exact - exact % DAY + DAY, IntervalUnit::Month, 1)
    );
}

#[test]
fn an_unpaid_manual_subscription_is_overdue_at_its_date_and_ends_after_the_grace() {
    let mut s = sub(SubState::Active);
    s.auto_renew = false;
    assert!(s.period_end(T - 1).is_empty(), "not before its date");
    assert_eq!(kinds(&s.period_end(T)), ["subscription.payment.overdue"]);
    assert_eq!((s.state, s.lifecycle.changed), (SubState::Overdue, Some(T)));
    assert_eq!(s.next, T, "the unpaid period is still the one due");
    assert!(
        s.period_end(s.grace_end() - 1).is_empty(),
        "overdue until the grace ends"
    );
    assert_eq!(s.grace_end(), T + 5 * DAY);
    assert_eq!(
        kinds(&s.period_end(T + 5 * DAY)),
        ["subscription.deactivated"]
    );
    assert_eq!(s.state, SubState::Deactivated);
    assert!(s.period_end(T + 6 * DAY).is_empty(), "once");

    // A card removed from an overdue automatic one: it ends with the same grace. An automatic
    // one's date is a charge, not a transition.
    let mut a = sub(SubState::Active);
    assert!(a.period_end(T).is_empty());
    a.mark_overdue(T);
    a.payment_method_removed(T + DAY);
    assert!(a.period_end(T + 4 * DAY).is_empty());
    assert_eq!(
        kinds(&a.period_end(T + 5 * DAY)),
        ["subscription.deactivated"]
    );
}
