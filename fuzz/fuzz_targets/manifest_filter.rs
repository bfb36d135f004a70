//! A `spec.path` and `spec.ignore` as a tenant writes them, and the file paths of a commit.
//!
//! The input: the first line is `spec.path`, the lines up to a blank one the ignore patterns, the
//! lines after it the paths to test.
//!
//! Checks: nothing panics; an accepted path lies under `spec.path` and names a manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_operator::plan::ManifestFilter;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let path = lines.next().unwrap_or_default();
    let ignore: Vec<String> = lines
        .by_ref()
        .take_while(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let Ok(filter) = ManifestFilter::new(path, &ignore) else {
        return;
    };
    let prefix = path.trim_matches('/');
    for candidate in lines {
        if filter.accepts(candidate) {
            let lower = candidate.to_ascii_lowercase();
            assert!(
                prefix.is_empty() || candidate.starts_with(&format!("{prefix}/")),
                "{candidate:?} is outside {path:?}"
            );
            assert!(
                [".yaml", ".yml", ".json"]
                    .iter()
                    .any(|e| lower.ends_with(e)),
                "{candidate:?} is not a manifest"
            );
        }
    }
});
