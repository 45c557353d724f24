//! What the hub decodes after a batch authenticates: a device holds its own key, so a
//! compromised device can sign any body. Decompression, postcard, and every sample run and
//! chunk in it must give values or errors, never panic or allocate past the caps.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outpost_sync::fuzzing::decode_body(data);
});
