//! The parts of the `outpost` binary that are worth testing and fuzzing on their own: the
//! collectors' parsers. The command line itself lives in `main.rs`.

pub mod tegrastats;
