//! The operating system, thinly: checked system calls, the clock, io_uring set-up and its
//! buffer rings, TAP devices and network namespaces. Each wrapper turns a failure into an
//! error that says what to do; none holds policy.
//!
//! May import: std, the syscall crates (libc, rustix, io-uring, socket2, smoltcp's device
//! types) and `sansio`. Engines, transports and the generator stand on it.

pub mod clock;
pub mod cpu;
pub mod netns;
pub mod sys;
pub mod tap;
pub mod uring;
