//! iolab: a laboratory for Linux network I/O models.
//!
//! One server runs the same application logic on many I/O engines; one open-loop load
//! generator drives any of them with Poisson arrivals and measures latency without
//! coordinated omission. The folders are the layers, each resting only on those below it
//! (`tests/layers.rs` reads every `crate::` path and fails on one that breaks the rule):
//!
//! - [`sansio`]: the sans-IO core. The wire protocol ([`sansio::frame`]: an incremental
//!   decoder for any split of the byte stream, an encoder that hands out borrowed slices),
//!   HTTP/1.1 ([`sansio::http`]), the server's per-connection state machine
//!   ([`sansio::session`], which also decides how a connection ends), the workloads, static
//!   files, units and the statistics. No I/O.
//! - [`os`]: thin, checked wrappers of the kernel: system calls, the clock, io_uring set-up
//!   and buffer rings, TAP devices, network namespaces.
//! - [`engine`]: one I/O model per file, every one driving the same session and showing the
//!   registry one face with its own typed options; shared plumbing (listeners, shutdown and
//!   its drain, counters, the non-blocking and blocking loops) beside them.
//! - [`shm`] and [`queue`]: the transports. Shared-memory rings, and the LibOS queue API over
//!   kernel TCP, shared memory and a user-space TCP/IP stack.
//! - [`loadgen`]: the open- and closed-loop generator: arrivals, an absolute send schedule,
//!   event-driven drivers, histograms and its own accuracy checks. It measures engines and
//!   never imports them.
//! - [`lab`]: sweeps into results folders, the folder format and the knee rule, the report,
//!   the demo and the HTTP corpus. The report reads files only.
//! - The command line (`src/cli/`: `args.rs` the options, `mod.rs` the commands; `main.rs`
//!   only runs it) is the only place that knows everything.

// `println!`, `print!` and `eprintln!` that never panic, for the whole crate (these definitions shadow
// std's in every module below) and for the command line (`use iolab::{eprintln, print, println}`):
// a log or a pipe whose reader has gone (a pager, `| head`, a restarted supervisor) must not
// take down the thread that writes to it, least of all the one that handles SIGTERM. What
// cannot be written is dropped.
#[doc(hidden)]
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[doc(hidden)]
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

#[doc(hidden)]
#[macro_export]
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod engine;
pub mod lab;
pub mod loadgen;
pub mod os;
pub mod queue;
pub mod sansio;
pub mod shm;
#[cfg(test)]
mod test_alloc;
