//! Billing intervals: a unit and a length, and the calendar arithmetic of "the next period".

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IntervalUnit {
    Day,
    Week,
    Month,
    Year,
}

impl IntervalUnit {
    pub fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "day" => Self::Day,
            "week" => Self::Week,
            "month" => Self::Month,
            "year" => Self::Year,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

/// Adds `length` units to a millisecond timestamp (calendar months/years clamp the day).
pub fn add_interval(ms: i64, unit: IntervalUnit, length: u32) -> i64 {
    use time::{Duration, OffsetDateTime};
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms;
    };
    let n = i64::from(length);
    let out = match unit {
        IntervalUnit::Day => t.checked_add(Duration::days(n)),
        IntervalUnit::Week => t.checked_add(Duration::weeks(n)),
        IntervalUnit::Month | IntervalUnit::Year => {
            let months = if unit == IntervalUnit::Year {
                n * 12
            } else {
                n
            };
            let total = i64::from(t.year()) * 12 + i64::from(u8::from(t.month())) - 1 + months;
            let year = (total / 12) as i32;
            let month =
                time::Month::try_from((total % 12 + 1) as u8).unwrap_or(time::Month::January);
            let day = t.day().min(month.length(year));
            time::Date::from_calendar_date(year, month, day)
                .ok()
                .map(|d| t.replace_date(d))
        }
    };
    out.map(|o| (o.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(ms)
}

/// Midnight UTC at or before `ms`: the date FastSpring's `begin` and `next` are.
pub fn day_start(ms: i64) -> i64 {
    ms - ms.rem_euclid(DAY_MS)
}

/// Midnight UTC at or after `ms` (`ms` itself when it is a midnight).
pub fn day_end(ms: i64) -> i64 {
    match ms.rem_euclid(DAY_MS) {
        0 => ms,
        r => ms.saturating_add(DAY_MS - r),
    }
}

const DAY_MS: i64 = 86_400_000;

/// A billing interval (`intervalUnit` × `intervalLength`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub unit: IntervalUnit,
    pub length: u32,
}

impl Interval {
    /// The start of the period after the one starting at `ms`.
    pub fn after(self, ms: i64) -> i64 {
        add_interval(ms, self.unit, self.length)
    }

    /// The first billing period of a subscription bought at `now`: it begins on the day of the
    /// purchase and the next one on the date one interval later, both at midnight UTC, as
    /// FastSpring's `begin` and `next` (dates). `(begin, next)`.
    pub fn first_period(self, now: i64) -> (i64, i64) {
        let begin = day_start(now);
        (begin, self.after(begin))
    }
}

/// `MM/DD/YY`, FastSpring's `*Display` date form.
pub fn display_date(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(|t| format!("{}/{}/{:02}", u8::from(t.month()), t.day(), t.year() % 100))
        .unwrap_or_default()
}

/// `YYYY-MM-DD` (UTC), FastSpring's `*DisplayISO8601` date form.
pub fn display_date_iso(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(|t| format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monthly_intervals_clamp_to_the_end_of_shorter_months() {
        // 2027-01-31T00:00Z + 1 month = 2027-02-28
        let jan31 = 1_801_353_600_000;
        assert_eq!(display_date(jan31), "1/31/27");
        assert_eq!(display_date_iso(jan31), "2027-01-31");
        assert_eq!(
            display_date(add_interval(jan31, IntervalUnit::Month, 1)),
            "2/28/27"
        );
        assert_eq!(
            display_date(add_interval(jan31, IntervalUnit::Year, 1)),
            "1/31/28"
        );
        let weekly = Interval {
            unit: IntervalUnit::Week,
            length: 1,
        };
        assert_eq!(display_date(weekly.after(jan31)), "2/7/27");
    }

    #[test]
    fn a_first_period_runs_from_the_purchase_date_to_the_date_one_interval_later() {
        // 2027-01-31T23:59:59.999Z, the last instant of the day.
        let jan31 = 1_801_353_600_000;
        let late = jan31 + DAY_MS - 1;
        let monthly = Interval {
            unit: IntervalUnit::Month,
            length: 1,
        };
        let (begin, next) = monthly.first_period(late);
        assert_eq!(
            (begin, display_date_iso(next)),
            (jan31, "2027-02-28".into())
        );
        assert_eq!(next % DAY_MS, 0, "next is a midnight");
        assert_eq!(
            monthly.first_period(jan31).0,
            jan31,
            "a midnight is its own day"
        );
        assert_eq!((day_start(late), day_end(late)), (jan31, jan31 + DAY_MS));
        assert_eq!((day_start(jan31), day_end(jan31)), (jan31, jan31));
        // Before 1970 too (rem_euclid, not %).
        assert_eq!((day_start(-1), day_end(-1)), (-DAY_MS, 0));
    }
}
