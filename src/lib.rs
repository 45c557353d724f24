//! The parts of the `outpost` binary that are worth testing, fuzzing and benchmarking on their
//! own: the tegrastats parser, the alert engine and the remote_write wire format. The command line lives in `main.rs`.

pub mod alert;
pub mod prompb;
pub mod tegrastats;
pub mod timearg;
