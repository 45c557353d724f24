//! The parts of the `outpost` binary that are worth testing, fuzzing and benchmarking on their
//! own: the tegrastats parser and the alert engine. The command line lives in `main.rs`.

pub mod alert;
pub mod tegrastats;
pub mod timearg;
