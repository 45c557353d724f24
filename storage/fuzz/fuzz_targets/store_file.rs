//! A store file damaged anywhere (flash wear, a bad copy): opening it read-only, checking every
//! chunk and querying everything give errors or reports, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// A small real store (ten series, an hour of the host data), the file the damage is applied to.
const STORE: &[u8] = include_bytes!("../seeds/store_file.redb");

fuzz_target!(|damage: &[u8]| {
    let _ = outpost_storage::fuzzing::check_damaged_store(STORE, damage);
});
