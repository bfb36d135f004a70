//! The refs a remote advertises (names and object ids from any server a tenant names) and the
//! `spec.ref` a tenant writes, resolved as the operator resolves them.
//!
//! The input: the first line is the semver range (and, as written, a branch and a tag name), the
//! others `<object id> <ref name>` as `git ls-remote` prints them.
//!
//! Checks: nothing panics; the tag a semver range picks is a version that matches the range, and
//! no advertised tag matches with a higher version.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_operator::crd::RefTarget;
use tether_operator::git::{highest_matching, pick};

fn version(tag: &str) -> Option<semver::Version> {
    semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let range = lines.next().unwrap_or_default();
    let heads: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(' '))
        .map(|(oid, name)| (name.to_owned(), oid.to_owned()))
        .collect();

    for target in [
        RefTarget::Branch(range.to_owned()),
        RefTarget::Tag(range.to_owned()),
        RefTarget::Semver(range.to_owned()),
    ] {
        let _ = pick("https://user:pw@git.example/a/b.git", &target, &heads);
    }

    let tags: Vec<&str> = heads
        .iter()
        .filter_map(|(n, _)| n.strip_prefix("refs/tags/"))
        .collect();
    let Ok(req) = semver::VersionReq::parse(range) else {
        assert!(highest_matching(range, tags.iter().copied()).is_err());
        return;
    };
    let best = highest_matching(range, tags.iter().copied()).ok().flatten();
    let matching = tags
        .iter()
        .filter_map(|t| version(t))
        .filter(|v| req.matches(v));
    match best {
        Some(tag) => {
            let v = version(&tag).expect("the picked tag is a version");
            assert!(req.matches(&v), "{tag} does not match {range}");
            assert!(
                matching.into_iter().all(|m| m <= v),
                "a higher tag than {tag} matches"
            );
        }
        None => assert_eq!(
            matching.count(),
            0,
            "a tag matches {range} but none was picked"
        ),
    }
});
