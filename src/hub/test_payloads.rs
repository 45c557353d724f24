//! What a device, or anyone holding its login, can put on its topics, and the hub's paths for
//! those topics under it.

use proptest::prelude::*;

use super::fleet::FleetAlerts;
use super::registry::Registry;
use outpost_sync::topic::Kind;

/// The key the payloads are signed with.
pub fn key() -> outpost_sync::DeviceKey {
    outpost_sync::DeviceKey::new(vec![3; 32]).expect("a 32-byte key")
}

/// Any bytes up to `max_len`; when `signed` is drawn and they are text, that text signed with
/// [`key`]. With `signed`, as drawn.
pub fn payload(max_len: usize) -> impl Strategy<Value = (Vec<u8>, bool)> {
    (
        proptest::collection::vec(any::<u8>(), 0..max_len),
        any::<bool>(),
    )
        .prop_map(
            |(bytes, signed)| match (signed, String::from_utf8(bytes.clone())) {
                (true, Ok(text)) => (outpost_sync::sign_json(&text, &key()).into_bytes(), signed),
                _ => (bytes, signed),
            },
        )
}

proptest! {
    /// Whatever a device's alert, status and meta topics carry, signed or not: an answer from
    /// the hub's path for that topic (for status and meta: verify, then judge), never a panic.
    #[test]
    fn any_payload_on_a_devices_topics_is_taken_or_refused(
        (payload, signed) in payload(400),
        topic in 0..4u8,
    ) {
        match topic {
            0 | 1 => {
                let suffix = if topic == 0 { "events" } else { "r/_" };
                let _ = FleetAlerts::default().admit(("d", &key(), signed), suffix, &payload, 0);
            }
            _ => {
                let text = String::from_utf8_lossy(&payload);
                if let Ok(json) = outpost_sync::verify_json(&text, &key()) {
                    let kind = if topic == 2 { Kind::Status } else { Kind::Meta };
                    let _ = Registry::default().retained("d", kind, &json);
                }
            }
        }
    }
}
