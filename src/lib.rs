//! iolab: a laboratory for Linux network I/O models.
//!
//! One server runs the same application logic on many I/O engines; one open-loop load
//! generator drives any of them with Poisson arrivals and measures latency without
//! coordinated omission. The crate is layered so that each idea lives in one place:
//!
//! - [`frame`]: the wire protocol, no I/O. An incremental decoder that accepts any split of
//!   the byte stream, and an encoder that hands frames out as borrowed, chunk-sized slices.
//! - [`session`]: the server's per-connection state machine, no I/O. Bytes in, slices out,
//!   protocol errors as values. Every engine drives it.
//! - [`http`]: HTTP/1.1 requests and response heads, no I/O: the web protocol beside `frame`.
//! - [`workload`]: pure request-to-reply functions (echo, sized payload, CPU spin);
//!   [`static_files`] is the HTTP workload, files read once at start and served from memory.
//! - [`engine`]: one I/O model per file. Engines decide how to wait, read, write, accept and
//!   schedule, and nothing else; shared plumbing (listener, shutdown, pinning, counters)
//!   sits in `engine/mod.rs`.
//! - [`loadgen`]: the open-loop generator: arrival processes, an absolute send schedule,
//!   event-driven connection drivers, histograms and its own accuracy checks.
//! - [`uring`]: io_uring plumbing the `uring` engine and the generator's io_uring driver
//!   share (ring set-up and its failures, the provided-buffer ring, gathered sends).
//! - [`shm`]: the shared-memory transport: a segment of connection slots, each a pair of
//!   lock-free single-producer/single-consumer byte rings.
//! - [`tap`] and [`netns`]: a multi-queue TAP device as smoltcp's Ethernet device, and the
//!   network namespace the `userspace` engine and its clients live in.
//! - [`stats`]: latency histograms and the Poisson check, pure math shared by the generator
//!   and the report.
//! - [`sweep`]: engines × rates, each engine its own pinned server process, into a results
//!   folder; [`results`] is that folder's format and the knee rule, which the report reads.
//! - [`report`]: a results folder into an HTML page and a notebook.
//! - [`corpus`]: a reproducible set of web pages sized like real ones, for the HTTP workload.
//! - [`demo`]: the main job: a short sweep of every engine, then the report.
//!
//! Dependency rule: `frame`, `session` and `workload` import no syscall crate and no other
//! subsystem; engines import the core, never each other; the report imports only `results`
//! and `stats` (it reads files, never runs anything); only the CLI knows everything.

pub mod clock;
pub mod corpus;
pub mod demo;
pub mod engine;
pub mod frame;
pub mod http;
pub mod loadgen;
pub mod netns;
pub mod queue;
pub mod report;
pub mod results;
pub mod session;
pub mod shm;
pub mod static_files;
pub mod stats;
pub mod sweep;
pub mod sys;
pub mod tap;
#[cfg(test)]
mod test_alloc;
pub mod units;
pub mod uring;
pub mod workload;
