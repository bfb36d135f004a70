//! A `spec.interval` or `spec.timeout` as a tenant writes it.
//!
//! Checks: nothing panics (no overflow on any number or sum of parts), a parsed duration is at
//! most `duration::MAX`, written back as seconds it parses to itself, and `parse_within` accepts
//! exactly the parsed durations inside its bounds.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tether_operator::duration::{MAX, parse, parse_within};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse(text);
    let bounds = (Duration::from_secs(1), Duration::from_secs(3600));
    let within = parse_within(text, bounds);
    if let Ok(d) = parsed {
        assert!(d <= MAX, "{text:?} parsed to {d:?}, beyond the maximum");
        let written = format!("{}.{:09}s", d.as_secs(), d.subsec_nanos());
        assert_eq!(parse(&written), Ok(d), "{written:?} does not read back");
        assert_eq!(within.is_ok(), d >= bounds.0 && d <= bounds.1, "{text:?}");
    } else {
        assert!(
            within.is_err(),
            "{text:?}: parse_within accepts what parse refuses"
        );
    }
});
