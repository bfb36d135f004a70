//! A repository URL, as a `GitRepository`'s `spec.url`, a webhook payload or an agent's watch
//! list gives it: split, normalised to a repository id, and shown without its password.
//!
//! Checks: nothing panics; an id normalises to itself and holds no user info, whitespace or
//! control characters; a URL shown with its password masked, or without its user info, still
//! splits with the user info masked, or with none.
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
    if let Some((user, _)) = parts.userinfo.and_then(|u| u.split_once(':')) {
        assert_eq!(
            Url::split(&masked).userinfo,
            Some(format!("{user}:***").as_str()),
            "masked {masked:?}"
        );
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
