//! Scan schedules: a cron expression read on the wall clock of an IANA time zone. Five fields
//! (minute hour day-of-month month day-of-week), or six with a leading seconds field for
//! schedules shorter than a minute (demos, tests).
//!
//! `0 0 * * *` in `Europe/Paris` is local midnight there, whatever the coordinator's own zone,
//! and follows daylight-saving changes. The schedule is a pure function of a time, so the
//! coordinator's ticker (and its tests) decide "is a scan due?" from a clock they control.

use std::str::FromStr;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::{Error, Result};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// Parses `expression` (minute hour day-of-month month day-of-week; names such as `MON`
    /// and `@daily` work) in `time_zone` (empty: UTC). Errors name `field_prefix.schedule` or
    /// `field_prefix.time_zone`.
    pub fn parse(expression: &str, time_zone: &str, field_prefix: &str) -> Result<Self> {
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(expression).map_err(|e| {
            Error::invalid_field(
                format!("{field_prefix}.schedule"),
                format!(
                    "is {expression:?}: {e}; expected 5 fields (minute hour day-of-month month \
                     day-of-week, e.g. \"0 0 * * *\" for midnight) or 6 with leading seconds"
                ),
            )
        })?;
        let zone = match time_zone {
            "" => Tz::UTC,
            name => Tz::from_str(name).map_err(|_| {
                Error::invalid_field(
                    format!("{field_prefix}.time_zone"),
                    format!("is {name:?}, not an IANA time zone (e.g. \"UTC\", \"Europe/Paris\")"),
                )
            })?,
        };
        Ok(Self { cron, zone })
    }

    /// The first scheduled time strictly after `after`.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        let local = DateTime::<Utc>::from(after).with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| SystemTime::from(t.with_timezone(&Utc)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(rfc3339: &str) -> SystemTime {
        SystemTime::from(DateTime::parse_from_rfc3339(rfc3339).unwrap())
    }

    #[test]
    fn midnight_is_the_time_zones_midnight_across_daylight_saving() {
        let paris = Schedule::parse("0 0 * * *", "Europe/Paris", "policy").unwrap();
        // Winter: Paris is UTC+1, so local midnight is 23:00 UTC.
        assert_eq!(
            paris.next_after(at("2026-01-15T12:00:00Z")),
            Some(at("2026-01-15T23:00:00Z"))
        );
        // Summer: UTC+2.
        assert_eq!(
            paris.next_after(at("2026-07-15T12:00:00Z")),
            Some(at("2026-07-15T22:00:00Z"))
        );
        // Strictly after: at the scheduled instant, the next one is a day later.
        assert_eq!(
            paris.next_after(at("2026-01-15T23:00:00Z")),
            Some(at("2026-01-16T23:00:00Z"))
        );
        let utc = Schedule::parse("*/15 * * * *", "", "policy").unwrap();
        let t = at("2026-03-01T10:07:00Z");
        assert_eq!(utc.next_after(t), Some(t + Duration::from_secs(8 * 60)));
    }

    #[test]
    fn bad_expressions_and_zones_name_their_field() {
        let err = Schedule::parse("0 0 * *", "UTC", "policy")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`policy.schedule`") && err.contains("5 fields"),
            "{err}"
        );
        let err = Schedule::parse("0 0 0 * * * *", "UTC", "policy")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`policy.schedule`"),
            "a year field is refused: {err}"
        );
        let every_3s = Schedule::parse("*/3 * * * * *", "UTC", "policy").unwrap();
        let t = at("2026-03-01T10:07:01Z");
        assert_eq!(every_3s.next_after(t), Some(at("2026-03-01T10:07:03Z")));
        let err = Schedule::parse("0 0 * * *", "Mars/Olympus", "policy")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`policy.time_zone`") && err.contains("Mars/Olympus"),
            "{err}"
        );
    }
}
