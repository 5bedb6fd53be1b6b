//! Card expiry, one rule for every place that asks: a card is valid through the end of its
//! expiry month (UTC).

/// `MM/YY` of an expiry month and year.
pub fn display(month: u8, year: u16) -> String {
    format!("{month:02}/{:02}", year % 100)
}

/// Whether a card expiring in `month`/`year` can still be charged in `now_month`/`now_year`.
pub fn is_current(month: u8, year: u16, now_year: i32, now_month: u8) -> bool {
    (i32::from(year), month) >= (now_year, now_month)
}

/// End of the card's validity (first instant of the month after `MM/YY`), ms.
pub fn valid_until(expiry: &str) -> Option<i64> {
    let (m, y) = expiry.split_once('/')?;
    let month: u8 = m.parse().ok()?;
    let year: i32 = 2000 + y.parse::<i32>().ok()?;
    let (ny, nm) = if month >= 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let d = time::Date::from_calendar_date(ny, time::Month::try_from(nm).ok()?, 1).ok()?;
    Some(d.midnight().assume_utc().unix_timestamp() * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_is_valid_through_the_end_of_its_expiry_month() {
        // 12/30 → valid until 2031-01-01T00:00Z.
        assert_eq!(valid_until("12/30"), Some(1_924_992_000_000));
        assert_eq!(valid_until("02/27"), Some(1_803_859_200_000));
        assert_eq!(valid_until("garbage"), None);
        assert!(is_current(3, 2027, 2027, 3));
        assert!(!is_current(2, 2027, 2027, 3));
        assert_eq!(display(3, 2027), "03/27");
    }
}
