//! A write-ahead log is read after a crash, torn tail and all: any bytes must give the records of
//! its valid frames or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outpost_storage::fuzzing::decode_log(data);
    let _ = outpost_storage::fuzzing::decode_log_record(data);
});
