//! The sans-IO core: the wire protocols, the server's per-connection state machine, the
//! workloads, and the pure math and units they share. Bytes and values in, bytes and values
//! out: nothing here waits, reads a socket or calls the kernel (static files are read once,
//! at start, by the caller's choice of root).
//!
//! May import: std and the pure crates (hdrhistogram, rand, serde, thiserror). Nothing else
//! of this crate: every other layer stands on this one.

pub mod budget;
pub mod frame;
pub mod http;
pub mod session;
pub mod static_files;
pub mod stats;
pub mod units;
pub mod workload;
