//! Kubernetes-style durations (`30s`, `5m`, `1h30m`, `500ms`, `1.5h`), as written in
//! `spec.interval` and `spec.timeout`.
//!
//! The accepted language is exactly that of [`crate::crd::DURATION_PATTERN`]: one or more
//! `<number><unit>` parts, the number a decimal without sign or exponent, the unit one of `ms`,
//! `s`, `m`, `h`. Go's `time.ParseDuration` accepts more (`us`, `ns`, signs); the schema keeps
//! those out, so this parser does too.

use std::time::Duration;

/// A duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{field}invalid duration {input:?}: {problem}; use a number and a unit such as 30s, 5m, 1h or 1h30m"
)]
pub struct DurationError {
    field: String,
    input: String,
    problem: String,
}

impl DurationError {
    /// Names the field the duration came from, for the message (`spec.interval: ...`).
    pub fn in_field(mut self, field: &str) -> Self {
        self.field = format!("{field}: ");
        self
    }
}

/// The longest duration anything here accepts: ten years. Longer ones are typing mistakes, and
/// refusing them keeps every sum with an `Instant` far from overflow.
pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses a duration and checks it lies within `(min, max)`, both included.
pub fn parse_within(
    input: &str,
    (min, max): (Duration, Duration),
) -> Result<Duration, DurationError> {
    let d = parse(input)?;
    if d < min || d > max {
        return Err(DurationError {
            field: String::new(),
            input: input.to_owned(),
            problem: format!("it must lie from {} to {}", humantime(min), humantime(max)),
        });
    }
    Ok(d)
}

/// `1s`, `720h`, `250ms`: a bound as a person writes it.
fn humantime(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs, d.subsec_millis()) {
        (0, ms) => format!("{ms}ms"),
        (s, 0) if s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

/// Parses a Kubernetes-style duration.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |problem: &str| DurationError {
        field: String::new(),
        input: input.to_owned(),
        problem: problem.to_owned(),
    };
    if input.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total_nanos: u128 = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if int_len == 0 {
            return Err(err("expected a number"));
        }
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let len = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
                if len == 0 {
                    return Err(err("expected digits after the decimal point"));
                }
                f.split_at(len)
            }
            None => ("", after),
        };
        let (unit_nanos, after): (u128, &str) = if let Some(a) = after.strip_prefix("ms") {
            (1_000_000, a)
        } else if let Some(a) = after.strip_prefix('s') {
            (1_000_000_000, a)
        } else if let Some(a) = after.strip_prefix('m') {
            (60 * 1_000_000_000, a)
        } else if let Some(a) = after.strip_prefix('h') {
            (3_600 * 1_000_000_000, a)
        } else if after.is_empty() {
            return Err(err("a number is missing its unit"));
        } else {
            return Err(err("unknown unit (expected ms, s, m or h)"));
        };
        let int: u128 = int_part.parse().map_err(|_| err("number too large"))?;
        let mut part = int
            .checked_mul(unit_nanos)
            .ok_or_else(|| err("duration too large"))?;
        // Fractions beyond nanosecond precision are dropped, as in Go.
        let mut scale = unit_nanos;
        for digit in frac_part.bytes() {
            scale /= 10;
            part = part
                .checked_add(u128::from(digit - b'0') * scale)
                .ok_or_else(|| err("duration too large"))?;
        }
        total_nanos = total_nanos
            .checked_add(part)
            .ok_or_else(|| err("duration too large"))?;
        rest = after;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("duration too large"))?;
    // The remainder is below 1e9 and so fits a u32.
    let nanos = u32::try_from(total_nanos % 1_000_000_000).unwrap_or(0);
    let d = Duration::new(secs, nanos);
    if d > MAX {
        return Err(err("duration too large (at most 87600h, ten years)"));
    }
    Ok(d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_style_durations() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1m0.25s").unwrap(), Duration::from_millis(60_250));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn refuses_malformed_durations_with_a_clear_message() {
        let e = parse("5").unwrap_err().in_field("spec.interval");
        assert_eq!(
            e.to_string(),
            "spec.interval: invalid duration \"5\": a number is missing its unit; \
             use a number and a unit such as 30s, 5m, 1h or 1h30m"
        );
        assert!(
            parse("1d")
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
        assert!(parse("").is_err());
        assert!(parse("h").is_err());
        assert!(parse("1.h").is_err());
        assert!(parse("-1s").is_err());
        assert!(parse("99999999999999999999999999999999999999h").is_err());
    }

    #[test]
    fn a_huge_duration_is_refused_not_carried_into_arithmetic() {
        // Fits a u64 of seconds, but any Instant plus it overflows.
        let e = parse("5124095576030431h").unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        assert_eq!(parse("87600h").unwrap(), MAX);
        assert!(parse("87600h1s").is_err());
    }

    #[test]
    fn a_fraction_that_overflows_the_sum_is_refused() {
        // The whole milliseconds fit a u128 of nanoseconds; adding the half millisecond did not,
        // and wrapped to a tiny duration where overflow is not checked.
        let e = parse("340282366920938463463374607431768.5ms").unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
    }

    #[test]
    fn a_duration_out_of_its_fields_range_names_the_range() {
        let range = (Duration::from_secs(1), Duration::from_secs(720 * 3600));
        assert_eq!(parse_within("5m", range).unwrap(), Duration::from_secs(300));
        let e = parse_within("0s", range)
            .unwrap_err()
            .in_field("spec.interval");
        assert_eq!(
            e.to_string(),
            "spec.interval: invalid duration \"0s\": it must lie from 1s to 720h; \
             use a number and a unit such as 30s, 5m, 1h or 1h30m"
        );
        assert!(parse_within("721h", range).is_err());
        assert!(
            parse_within(
                "500ms",
                (Duration::from_millis(250), Duration::from_secs(1))
            )
            .is_ok()
        );
    }
}
