//! A CI request's bearer token, as anyone who reaches the hub can send it, and the templates of
//! the access file's OIDC rules filled from a token's claims.
//!
//! Checks: nothing panics; a token that peeks as a JWT has three parts and at most the size
//! bound; a rendered name is printable ASCII within bounds, and never a `system:` name the
//! template's own text does not start with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_operator::ci::config::Template;
use tether_operator::ci::oidc::{MAX_TOKEN_BYTES, peek, render};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if peek(text).is_some() {
        assert!(text.len() <= MAX_TOKEN_BYTES);
        assert_eq!(text.split('.').count(), 3, "{text:?}");
    }
    // The first line is a template, the rest a claim's value.
    let (template, value) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(template) = Template::parse(template) {
        let mut claims = serde_json::Map::new();
        for part in &template.parts {
            if let tether_operator::ci::config::TemplatePart::Claim(name) = part {
                claims.insert(name.clone(), value.into());
            }
        }
        if let Ok(name) = render(&template, &claims) {
            assert!(name.chars().all(|c| (' '..='~').contains(&c)), "{name:?}");
            assert!(
                !name.starts_with("system:") || template.text.starts_with("system:"),
                "{name:?} from {:?}",
                template.text
            );
        }
    }
});
