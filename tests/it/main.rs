//! Integration tests of the `outpost` binary: its commands run as a user runs them, and the
//! workspace's boundaries.

mod agent;
mod alerts;
mod boundaries;
mod cli;
mod clocks;
mod containers;
mod dashboard;
mod logs;
mod promql;
mod receivers;
mod remote;
mod sync;
mod systemd;
mod tegrastats;
