//! A repository URL, as a `GitRepository`'s `spec.url`, a webhook payload or an agent's watch
//! list gives it: split, normalised to a repository id, and shown without its password.
//!
//! Checks: nothing panics; an id normalises to itself and holds no user info, whitespace or
//! control characters; a `scheme://` URL shown with its password masked splits to the same host
//! and path with `user:***` as its user info, other forms are shown as they are; a URL without its
//! user info has none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_protocol::normalize;
use tether_protocol::url::{Syntax, Url, mask_password, split_host_port, without_userinfo};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = normalize(text) {
        assert_eq!(
            normalize(id.as_str()).as_ref(),
            Ok(&id),
            "normalize is not idempotent"
        );
        let host = id.as_str().split('/').next().unwrap_or_default();
        assert!(!host.contains('@'), "user info in the id {id}");
        assert!(
            !id.as_str()
                .chars()
                .any(|c| c.is_whitespace() || c.is_control()),
            "whitespace in the id {id:?}"
        );
    }

    let parts = Url::split(text);
    let _ = parts.host_port();
    let _ = split_host_port(text);

    let masked = mask_password(text);
    match parts.userinfo.and_then(|u| u.split_once(':')) {
        Some((user, _)) if parts.syntax == Syntax::Url => {
            let again = Url::split(&masked);
            assert_eq!(
                again.userinfo,
                Some(format!("{user}:***").as_str()),
                "masked {masked:?}"
            );
            assert_eq!(again.authority, parts.authority, "masked {masked:?}");
            assert_eq!(again.path, parts.path, "masked {masked:?}");
        }
        _ => assert_eq!(masked, text, "only a scheme URL's password is masked"),
    }
    let bare = without_userinfo(text);
    if parts.syntax == Syntax::Url {
        assert_eq!(
            Url::split(&bare).userinfo,
            None,
            "without user info: {bare:?}"
        );
    }
});
