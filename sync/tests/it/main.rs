//! The protocol end to end without a network: an agent's store and outbox, a lossy,
//! duplicating, reordering channel, the hub's ingestor and store. Real stores on real files and
//! the real hour of host data.

mod clock_steps;
mod fuzz_corpus;
mod lossy;
