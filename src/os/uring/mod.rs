//! io_uring plumbing shared by the `uring` engine and the generator's io_uring driver.
//!
//! Neither side hides the ring behind a runtime; what they share is only what would otherwise
//! be written twice: building a ring and explaining why it failed ([`setup`]), the
//! provided-buffer ring that multishot receives draw from ([`bufring`]), and [`Gather`], a
//! send of an [`OutQueue`]'s slices that stays valid while the kernel holds it.

pub mod bufring;
pub mod setup;

use std::io::IoSlice;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, IoUring};

use crate::sansio::frame::OutQueue;

/// Slices gathered into one sendmsg.
pub const GATHER_SLICES: usize = 64;

/// How operations name a socket: its descriptor, or its slot in the ring's registered file
/// table (which spares the kernel a file lookup and reference count per operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Fd(RawFd),
    Fixed(u32),
}

/// Builds `opcode::$op::new(target, args..)` for either kind of [`Target`].
#[macro_export]
macro_rules! uring_op {
    ($target:expr, $op:ident ( $($arg:expr),* ) $(. $m:ident ( $($a:expr),* ))* ) => {
        match $target {
            $crate::os::uring::Target::Fd(fd) => ::io_uring::opcode::$op::new(
                ::io_uring::types::Fd(fd) $(, $arg)*) $(. $m($($a),*))* .build(),
            $crate::os::uring::Target::Fixed(i) => ::io_uring::opcode::$op::new(
                ::io_uring::types::Fixed(i) $(, $arg)*) $(. $m($($a),*))* .build(),
        }
    };
}

/// One send in flight: the iovecs and the msghdr the kernel reads. Keep it boxed, so its
/// address holds while the connection that owns it moves, and hold the queue it points into
/// ([`OutQueue::hold`]) until the send completes.
pub struct Gather {
    iov: [libc::iovec; GATHER_SLICES],
    msg: libc::msghdr,
}

impl Gather {
    pub fn new() -> Box<Self> {
        // SAFETY: iovec and msghdr are plain C structs for which all-zero is valid.
        Box::new(unsafe { std::mem::zeroed() })
    }

    /// A send of the slices `queue` offers now (the caller has held it): one `send` for one
    /// slice, one `sendmsg` for several; SEND_ZC / SENDMSG_ZC with `zero_copy_from` bytes or
    /// more. Returns the entry, the bytes it carries and whether it is zero-copy.
    pub fn send(
        &mut self,
        queue: &OutQueue,
        target: Target,
        zero_copy_from: Option<usize>,
    ) -> (squeue::Entry, usize, bool) {
        let mut slices = [IoSlice::new(&[]); GATHER_SLICES];
        let n = queue.fill(&mut slices);
        let mut total = 0;
        for (iov, s) in self.iov.iter_mut().zip(&slices[..n]) {
            iov.iov_base = s.as_ptr() as *mut libc::c_void;
            iov.iov_len = s.len();
            total += s.len();
        }
        let zero_copy = zero_copy_from.is_some_and(|t| total >= t);
        let flags = libc::MSG_NOSIGNAL;
        let entry = if n == 1 {
            let (ptr, len) = (self.iov[0].iov_base as *const u8, self.iov[0].iov_len as u32);
            if zero_copy {
                uring_op!(target, SendZc(ptr, len).flags(flags))
            } else {
                uring_op!(target, Send(ptr, len).flags(flags))
            }
        } else {
            self.msg.msg_iov = self.iov.as_mut_ptr();
            self.msg.msg_iovlen = n;
            let msg = &self.msg as *const libc::msghdr;
            if zero_copy {
                uring_op!(target, SendMsgZc(msg).flags(flags as u32))
            } else {
                uring_op!(target, SendMsg(msg).flags(flags as u32))
            }
        };
        (entry, total, zero_copy)
    }
}

/// A completion's user_data: what it is about in the top byte, whose (a connection's index)
/// in the rest.
pub fn tag(kind: u64, index: usize) -> u64 {
    kind << 56 | index as u64
}

/// The `(kind, index)` a [`tag`] carries.
pub fn untag(user_data: u64) -> (u64, usize) {
    (user_data >> 56, (user_data & ((1 << 56) - 1)) as usize)
}

/// Queues `entry`, submitting what is queued first if the submission queue is full.
///
/// # Safety
/// Every pointer `entry` carries (buffers, iovecs, msghdr, timespec) must stay valid and in
/// place until its operation completes.
pub unsafe fn push(ring: &mut IoUring, entry: &squeue::Entry) -> std::io::Result<()> {
    for _ in 0..2 {
        // SAFETY: the caller's promise, passed on.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
    Err(std::io::Error::other("the submission queue stays full"))
}

/// Moves every completion waiting in `ring` into `out` as (user_data, result, flags), so the
/// caller may submit while it handles them.
pub fn reap(ring: &mut IoUring, out: &mut Vec<(u64, i32, u32)>) {
    out.clear();
    out.extend(ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
}

/// A poll for `events` on a plain descriptor.
pub fn poll(fd: RawFd, events: i16) -> squeue::Entry {
    opcode::PollAdd::new(types::Fd(fd), events as u32).build()
}
