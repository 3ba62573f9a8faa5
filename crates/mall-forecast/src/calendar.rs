//! China-time calendar arithmetic: the sale opens at local midnight
//! (UTC+8, no daylight saving), days and hours of the history are local.
//! Civil-date conversion after Howard Hinnant's `days_from_civil`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;
/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;
/// China Standard Time is UTC+8 all year.
pub const CHINA_OFFSET_MS: i64 = 8 * HOUR_MS;

/// A calendar date (proleptic Gregorian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Date {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

impl Date {
    /// `None` unless the date exists.
    pub fn new(year: i32, month: u32, day: u32) -> Option<Date> {
        let date = Date { year, month, day };
        let ok = (1..=12).contains(&month)
            && day >= 1
            && Date::from_days(date.days()) == date
            && (1970..=9999).contains(&year);
        ok.then_some(date)
    }

    /// Days since 1970-01-01.
    pub fn days(self) -> i64 {
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    pub fn from_days(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Date { year, month, day }
    }

    pub fn plus_days(self, n: i64) -> Date {
        Date::from_days(self.days() + n)
    }

    /// 0 = Monday ... 6 = Sunday.
    pub fn weekday(self) -> u32 {
        // 1970-01-01 was a Thursday (3).
        (self.days() + 3).rem_euclid(7) as u32
    }

    pub fn is_weekend(self) -> bool {
        self.weekday() >= 5
    }

    /// Epoch milliseconds of this date's midnight, China time.
    pub fn china_midnight_ms(self) -> i64 {
        self.days() * DAY_MS - CHINA_OFFSET_MS
    }

    /// `YYYYMMDD`, as in the day files' names.
    pub fn compact(self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<Date> {
        let mut parts = s.split('-');
        let year = parts.next()?.parse().ok()?;
        let month = parts.next()?.parse().ok()?;
        let day = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Date::new(year, month, day)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// The China-local day (days since 1970-01-01) an instant falls on.
pub fn china_day(t_ms: i64) -> i64 {
    (t_ms + CHINA_OFFSET_MS).div_euclid(DAY_MS)
}

/// The China-local hour of day (0..24) of an instant.
pub fn china_hour(t_ms: i64) -> usize {
    ((t_ms + CHINA_OFFSET_MS).rem_euclid(DAY_MS) / HOUR_MS) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip_and_know_their_weekday() {
        let d = Date::new(2025, 11, 11).unwrap();
        assert_eq!(Date::from_days(d.days()), d);
        assert_eq!(d.weekday(), 1, "11.11.2025 is a Tuesday");
        assert_eq!(Date::new(1970, 1, 1).unwrap().days(), 0);
        assert_eq!(
            Date::new(2024, 2, 29).unwrap().plus_days(1),
            Date::new(2024, 3, 1).unwrap()
        );
        assert!(Date::new(2025, 2, 29).is_none());
        assert_eq!(Date::parse("2025-11-11"), Some(d));
        assert_eq!(d.compact(), "20251111");
        // 2025-11-11 00:00 +08:00 is 2025-11-10 16:00 UTC.
        assert_eq!(d.china_midnight_ms(), 1_762_790_400_000);
        assert_eq!(china_day(d.china_midnight_ms()), d.days());
        assert_eq!(china_day(d.china_midnight_ms() - 1), d.days() - 1);
        assert_eq!(china_hour(d.china_midnight_ms() + 3 * HOUR_MS + 5), 3);
    }
}
