//! The MQTT batch protocol between Outpost agents and the hub.
//!
//! This crate will own the `[mqtt]` configuration, the topic layout under `outpost/v1/...`, the
//! versioned batch payload built from the store's encoded chunks, and the store-and-forward state
//! machine. It depends on `outpost-storage` for the batch types only and never opens redb itself.
//! Its implementation lands with the sync issue; until then it has no items.
