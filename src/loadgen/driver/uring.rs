//! The io_uring driver: multishot receives, sends submitted at their scheduled instant.
//!
//! Each connection has one multishot receive armed for its whole life, drawing buffers from
//! a provided-buffer ring, so a reply costs no syscall of its own: the completions of many
//! replies are reaped together by the same `io_uring_enter` that waits for the next send
//! time. A scheduled request is queued as a send (or a sendmsg of its slices) and submitted
//! at once, so it leaves when it was scheduled to. Against the epoll driver's wait + read +
//! read-until-EAGAIN per reply, this leaves the load core more time to keep its schedule.

use std::net::SocketAddr;
use std::time::Duration;

use io_uring::{cqueue, squeue, types, IoUring};

use super::{Conn, Polled, Tally};
use crate::loadgen::error::LoadError;
use crate::os::clock::now_ns;
use crate::os::uring::bufring::{self, BufRing};
use crate::os::uring::{setup, tag, untag, Gather, Target};
use crate::uring_op;

/// Receive buffers: replies of any size stream through them, so the count matters more
/// than the size.
const RECV_BUFFERS: u16 = 4096;
const RECV_BUFFER_SIZE: usize = 16 * 1024;

const RECV: u64 = 1;
const SEND: u64 = 2;
const CONNECT: u64 = 3;

pub struct UringIo {
    // Dropped first: the kernel lets go of the buffers below before they are freed.
    ring: IoUring,
    bufs: BufRing,
    addr: SocketAddr,
    // Boxed: a send in flight points into its Gather, which must not move when this grows.
    #[allow(clippy::vec_box)]
    gathers: Vec<Box<Gather>>,
    sending: Vec<bool>,
    recv_armed: Vec<bool>,
    completions: Vec<(u64, i32, u32)>,
    enobufs: u64,
}

impl UringIo {
    pub fn new(addr: SocketAddr, connections: usize) -> Result<Self, LoadError> {
        let entries = (2 * connections + 64).next_power_of_two().clamp(256, 32768) as u32;
        let ring =
            setup::build_ring(entries, None).map_err(|e| LoadError::Setup(format!("--driver uring: {e}")))?;
        if !setup::kernel_at_least(6, 0) {
            return Err(LoadError::Setup(
                "--driver uring needs Linux ≥ 6.0 (multishot recv); use --driver epoll".into(),
            ));
        }
        let bufs = BufRing::register(&ring.submitter(), RECV_BUFFERS, RECV_BUFFER_SIZE)
            .map_err(|e| LoadError::Setup(format!("--driver uring: cannot register receive buffers: {e}")))?;
        Ok(UringIo {
            ring,
            bufs,
            addr,
            gathers: Vec::new(),
            sending: Vec::new(),
            recv_armed: Vec::new(),
            completions: Vec::with_capacity(1024),
            enobufs: 0,
        })
    }

    pub fn add(&mut self, slot: usize, conn: &Conn) -> Result<(), LoadError> {
        debug_assert_eq!(slot, self.gathers.len());
        self.gathers.push(Gather::new());
        self.sending.push(false);
        self.recv_armed.push(false);
        if conn.connected {
            self.arm_recv(slot, conn)
        } else {
            let poll = crate::os::uring::poll(conn.fd()?, libc::POLLOUT);
            self.push(poll.user_data(tag(CONNECT, slot)))
        }
    }

    fn push(&mut self, entry: squeue::Entry) -> Result<(), LoadError> {
        // SAFETY: what an entry points at (a Gather, the queue it holds, the buffer ring)
        // stays in place until its completion.
        unsafe { crate::os::uring::push(&mut self.ring, &entry) }.map_err(LoadError::os("io_uring"))
    }

    fn arm_recv(&mut self, slot: usize, conn: &Conn) -> Result<(), LoadError> {
        let target = Target::Fd(conn.fd()?);
        let recv = uring_op!(target, RecvMulti(bufring::GROUP));
        self.recv_armed[slot] = true;
        self.push(recv.user_data(tag(RECV, slot)))
    }

    /// Queues a send of what connection `slot` has to say, unless one is in flight, and
    /// submits it now: the request leaves at its scheduled instant.
    pub fn send(&mut self, conns: &mut [Conn], slot: usize) -> Result<(), LoadError> {
        let conn = &mut conns[slot];
        if !conn.connected || self.sending[slot] || conn.client.out().is_empty() {
            return Ok(());
        }
        let target = Target::Fd(conn.fd()?);
        let (entry, _, _) = self.gathers[slot].send(conn.client.hold_out(), target, None);
        self.sending[slot] = true;
        self.push(entry.user_data(tag(SEND, slot)))?;
        self.ring.submit().map_err(LoadError::os("io_uring_enter"))?;
        Ok(())
    }

    /// Submits what is queued and handles completions, waiting up to `timeout` for one.
    pub fn poll(
        &mut self,
        conns: &mut [Conn],
        tally: &mut Tally,
        timeout: Duration,
    ) -> Result<Polled, LoadError> {
        let before = now_ns();
        let entered = if timeout.is_zero() {
            // Spinning: enter only if there is something to submit or deferred work to run.
            let sq = self.ring.submission();
            if sq.is_empty() && !sq.taskrun() {
                Ok(0)
            } else {
                drop(sq);
                self.ring.submit()
            }
        } else {
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        };
        match entered {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
            Err(e) => return Err(LoadError::os("io_uring_enter")(e)),
        }
        crate::os::uring::reap(&mut self.ring, &mut self.completions);
        let now = now_ns();
        let waited_ns = now.saturating_sub(before);
        for i in 0..self.completions.len() {
            let (data, result, flags) = self.completions[i];
            let (kind, slot) = untag(data);
            match kind {
                RECV => self.received(conns, tally, slot, result, flags, now)?,
                SEND => self.sent(conns, tally, slot, result)?,
                CONNECT => {
                    super::check_connected(&mut conns[slot], self.addr)?;
                    self.arm_recv(slot, &conns[slot])?;
                    self.send(conns, slot)?;
                }
                _ => {}
            }
        }
        Ok(Polled {
            events: self.completions.len(),
            waited_ns,
        })
    }

    fn received(
        &mut self,
        conns: &mut [Conn],
        tally: &mut Tally,
        slot: usize,
        result: i32,
        flags: u32,
        now: u64,
    ) -> Result<(), LoadError> {
        if !cqueue::more(flags) {
            self.recv_armed[slot] = false;
        }
        let conn = &mut conns[slot];
        match result {
            n if n > 0 => {
                let Some(bid) = cqueue::buffer_select(flags) else {
                    return Err(LoadError::failed(slot, "a receive without a buffer"));
                };
                let outcome = super::received(conn, tally, slot, self.bufs.filled(bid, n as usize), now);
                self.bufs.recycle(bid);
                outcome?;
            }
            0 => return Err(super::server_closed(slot, conn)),
            e if e == -libc::ENOBUFS => self.enobufs += 1,
            e => {
                let e = std::io::Error::from_raw_os_error(-e);
                return Err(super::socket_failed(slot, conn, e));
            }
        }
        if !self.recv_armed[slot] {
            self.arm_recv(slot, &conns[slot])?;
        }
        Ok(())
    }

    fn sent(
        &mut self,
        conns: &mut [Conn],
        tally: &mut Tally,
        slot: usize,
        result: i32,
    ) -> Result<(), LoadError> {
        self.sending[slot] = false;
        let conn = &mut conns[slot];
        if result <= 0 {
            conn.client.wrote(0);
            let e = std::io::Error::from_raw_os_error(-result);
            return Err(super::socket_failed(slot, conn, e));
        }
        tally.out.m.bytes_sent += result as u64;
        conn.client.wrote(result as usize);
        self.send(conns, slot)
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        if self.enobufs > 0 {
            eprintln!(
                "iolab: load: the receive buffer ring ran empty {} time(s)",
                self.enobufs
            );
        }
    }
}
