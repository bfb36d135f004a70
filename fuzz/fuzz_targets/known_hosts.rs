//! `known_hosts` text from a tenant's Secret, checked against the host key a server presents.
//!
//! The input: the first line is the host name as the operator looks it up (`host` or
//! `[host]:port`), the second the presented key (raw bytes), the rest the `known_hosts` text.
//!
//! Checks: nothing panics; a key listed by an entry that matches the name is a match; a name that
//! no entry matches is unknown.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_operator::git::known_hosts::{HostKeyCheck, check, host_entry_name, parse};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let name = lines.next().unwrap_or_default();
    let key = lines.next().unwrap_or_default().as_bytes();
    let entries = parse(lines.next().unwrap_or_default());

    let _ = host_entry_name(name, Some(2222));
    let result = check(&entries, name, key);
    let matching: Vec<_> = entries.iter().filter(|e| e.matches(name)).collect();
    if matching.is_empty() {
        assert_eq!(result, HostKeyCheck::Unknown);
    } else if matching.iter().any(|e| e.key == key) {
        assert_eq!(result, HostKeyCheck::Match);
    } else {
        assert_eq!(result, HostKeyCheck::Mismatch);
    }
    for entry in matching {
        assert_eq!(check(&entries, name, &entry.key), HostKeyCheck::Match);
    }
});
