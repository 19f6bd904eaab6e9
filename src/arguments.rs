//! Checks of the arguments the public calls take, made before anything is
//! sent: what PostgreSQL would refuse with an error that names no argument
//! (a NUL character in text or JSON, a timestamp outside its range), and
//! conversions to the SQL functions' integer arguments that must neither
//! wrap nor panic.

use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveDateTime};
use serde_json::Value;

use crate::error::Refusal;

/// The most ids one call takes in an id list (task ids to claim from or to
/// read, step ids to read, reports of one batch). Each id costs at most one
/// index probe, so a list of this length costs tens of milliseconds; a
/// longer one is refused rather than left to grow a statement without bound.
pub const MAX_IDS_PER_CALL: usize = 100_000;

/// The longest lease or delay the SQL functions take: `i32::MAX` seconds
/// (about 68 years), their `integer` seconds.
pub const MAX_DURATION: Duration = Duration::from_secs(i32::MAX as u64);

/// PostgreSQL's earliest `timestamp`: 4714-11-24 BC (Julian), which is
/// 4713-11-24 BC proleptic Gregorian, chrono's year -4713. Its latest,
/// 294276 AD, is beyond chrono's range.
fn earliest_timestamp() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(-4713, 11, 24)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .expect("a valid date")
}

/// An argument refused, naming it.
pub(crate) fn refuse(argument: &str, message: String) -> Refusal {
    Refusal::InvalidArgument {
        argument: argument.to_owned(),
        message,
    }
}

/// Whole seconds of `duration`, rounded up so that a lease or a delay is
/// never shorter than asked, and at least `min` seconds; refused outside
/// `min ..= i32::MAX` seconds.
pub(crate) fn seconds(argument: &str, duration: Duration, min: u64) -> Result<i32, Refusal> {
    let rounded_up = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    match i32::try_from(rounded_up) {
        Ok(seconds) if rounded_up >= min => Ok(seconds),
        _ => Err(refuse(
            argument,
            format!(
                "{argument} must be between {min} s and {} s (whole seconds, rounded up), got {duration:?}",
                i32::MAX
            ),
        )),
    }
}

/// A count as the SQL functions take it (`integer`), at least `min`:
/// refused below, and above `i32::MAX`.
pub(crate) fn count(argument: &str, value: u32, min: u32) -> Result<i32, Refusal> {
    match i32::try_from(value) {
        Ok(count) if value >= min => Ok(count),
        _ => Err(refuse(
            argument,
            format!(
                "{argument} must be between {min} and {}, got {value}",
                i32::MAX
            ),
        )),
    }
}

/// An id list no longer than [`MAX_IDS_PER_CALL`].
pub(crate) fn ids(argument: &str, length: usize) -> Result<(), Refusal> {
    if length > MAX_IDS_PER_CALL {
        return Err(refuse(
            argument,
            format!(
                "{argument} holds {length} ids, at most {MAX_IDS_PER_CALL} fit in one call: split the list"
            ),
        ));
    }
    Ok(())
}

/// Why PostgreSQL cannot store the text (a NUL character), naming where the first NUL
/// is, for a message; `None` when it can.
pub(crate) fn text_problem(value: &str) -> Option<String> {
    value.find('\0').map(|at| {
        format!("contains a NUL character (at byte {at}), which PostgreSQL text cannot hold")
    })
}

/// JSON PostgreSQL's jsonb can store: no NUL (`\u0000`) in any string or
/// key. Names the path of the first one, for a message.
pub(crate) fn json_problem(value: &Value) -> Option<String> {
    fn walk(value: &Value, path: &mut String) -> bool {
        match value {
            Value::String(text) => text.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(index, item)| {
                let length = path.len();
                path.push_str(&format!("[{index}]"));
                let found = walk(item, path);
                if !found {
                    path.truncate(length);
                }
                found
            }),
            Value::Object(fields) => fields.iter().any(|(key, item)| {
                let length = path.len();
                path.push_str(&format!(".{key:?}"));
                let found = key.contains('\0') || walk(item, path);
                if !found {
                    path.truncate(length);
                }
                found
            }),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
    let mut path = String::from("$");
    walk(value, &mut path).then(|| {
        format!("holds a NUL character (\\u0000) at {path}, which PostgreSQL jsonb cannot hold")
    })
}

/// Refuses JSON that jsonb cannot hold, naming the argument.
pub(crate) fn json(argument: &str, value: &Value) -> Result<(), Refusal> {
    match json_problem(value) {
        Some(problem) => Err(refuse(argument, format!("{argument} {problem}"))),
        None => Ok(()),
    }
}

/// Transition metadata: a JSON object (the Rails engine reads it as a Hash)
/// that jsonb can hold; `None` stores `{}`.
pub(crate) fn metadata(argument: &str, value: Option<&Value>) -> Result<(), Refusal> {
    match value {
        None => Ok(()),
        Some(value) if !value.is_object() => Err(refuse(
            argument,
            format!("{argument} must be a JSON object, got {value}"),
        )),
        Some(value) => json(argument, value),
    }
}

/// A timestamp PostgreSQL can store; names the range otherwise.
pub(crate) fn timestamp_problem(value: NaiveDateTime) -> Option<String> {
    (value < earliest_timestamp()).then(|| {
        format!(
            "{value} is before {}, PostgreSQL's earliest timestamp",
            earliest_timestamp()
        )
    })
}

/// `Instant::now() + duration`, saturating at a century from now where the
/// clock cannot hold the sum (`Duration::MAX`) instead of panicking: a wait
/// that long is a wait for ever.
pub(crate) fn deadline_after(duration: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    let now = Instant::now();
    now.checked_add(duration.min(CENTURY)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seconds_round_up_and_never_wrap() {
        assert_eq!(seconds("lease", Duration::from_millis(1), 1), Ok(1));
        assert_eq!(seconds("lease", Duration::from_secs(60), 1), Ok(60));
        assert_eq!(seconds("lease", MAX_DURATION, 1), Ok(i32::MAX));
        assert!(seconds("lease", Duration::ZERO, 1).is_err());
        assert_eq!(seconds("retry_after", Duration::ZERO, 0), Ok(0));
        for too_long in [MAX_DURATION + Duration::from_nanos(1), Duration::MAX] {
            let Err(Refusal::InvalidArgument { argument, message }) = seconds("lease", too_long, 1)
            else {
                panic!("{too_long:?} was taken");
            };
            assert_eq!(argument, "lease");
            assert!(message.contains("2147483647 s"), "{message}");
        }
    }

    #[test]
    fn json_paths_name_the_nul() {
        assert_eq!(json_problem(&json!({"a": [1, "ok"]})), None);
        let problem = json_problem(&json!({"a": [1, {"b": "x\u{0}"}]})).unwrap();
        assert!(problem.contains("$.\"a\"[1].\"b\""), "{problem}");
        let in_key = json_problem(&json!({"k\u{0}": 1})).unwrap();
        assert!(in_key.contains("$.\"k\\0\""), "{in_key}");
    }

    #[test]
    fn timestamps_before_postgres_range_are_named() {
        let earliest = earliest_timestamp();
        assert_eq!(timestamp_problem(earliest), None);
        assert!(timestamp_problem(earliest - chrono::Duration::seconds(1)).is_some());
        assert_eq!(timestamp_problem(NaiveDateTime::MAX), None);
    }

    #[test]
    fn a_deadline_never_overflows() {
        assert!(deadline_after(Duration::MAX) > Instant::now() + Duration::from_secs(3600));
    }
}
