//! A websocket text frame of the tether.v1 protocol, read by either side.
//!
//! Checks: nothing panics, and a message that decodes encodes to text that decodes to the same
//! message (ids are normalised on the way in, so this also holds `normalize` to being idempotent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_protocol::{AgentMessage, HubMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = AgentMessage::from_json(text) {
        let again = AgentMessage::from_json(&message.to_json());
        assert_eq!(
            again.ok().as_ref(),
            Some(&message),
            "agent message round trip"
        );
    }
    if let Ok(message) = HubMessage::from_json(text) {
        let again = HubMessage::from_json(&message.to_json());
        assert_eq!(
            again.ok().as_ref(),
            Some(&message),
            "hub message round trip"
        );
    }
});
