//! Stored chunks are read back from flash that may have rotted: any bytes must decode to samples
//! or to a `DecodeError`, never a panic, and what decodes must encode back to the same samples.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_storage::codec::{decode_chunk, decode_rollup_chunk, encode_chunk};

fuzz_target!(|data: &[u8]| {
    if let Ok((timestamps, values)) = decode_chunk(data) {
        assert_eq!(timestamps.len(), values.len());
        let again = decode_chunk(&encode_chunk(&timestamps, &values, 1)).expect("round trip");
        assert_eq!(again.0, timestamps);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&again.1), bits(&values));
    }
    if let Ok((buckets, rollups)) = decode_rollup_chunk(data) {
        assert_eq!(buckets.len(), rollups.len());
    }
    let _ = outpost_storage::fuzzing::decode_chunk_body(data);
});
