//! Anything can arrive on a broker's topics: every decoder of a payload must give a value or an
//! error, never panic. The key is the one the seeds are signed with, so mutations of valid
//! frames reach past the mac now and then (when the fuzzer only changes what the mac does not
//! cover, which is nothing: so this mostly exercises the framing and the checks before it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_sync::fuzzing::{decode_frames, FUZZ_KEY};

fuzz_target!(|data: &[u8]| {
    let _ = decode_frames(data, &FUZZ_KEY);
});
