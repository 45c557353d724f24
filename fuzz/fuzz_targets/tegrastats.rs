//! tegrastats output comes from another program, on devices of every release: any bytes must
//! parse (into fields and unknown tokens) and render as JSON, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let parsed = outpost::tegrastats::parse(&line);
    let _ = parsed.to_json();
    // Whatever was not understood is a token of the input.
    for token in &parsed.unknown {
        assert!(line.contains(token));
    }
});
