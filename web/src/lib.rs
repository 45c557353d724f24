//! The hub's fleet dashboard and HTTP API.
//!
//! This crate will serve the fleet, device and alert pages and the `/api/...` endpoints from the
//! hub's store. It depends on `outpost-storage` only, reads the store and never writes to it, and
//! reaches the hub's device registry through traits that the binary implements. Its
//! implementation lands with the dashboard issue; until then it has no items.
