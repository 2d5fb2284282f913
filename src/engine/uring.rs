//! `uring`: one io_uring per loop; the loop asks for operations and is told when they are done.
//!
//! Readiness engines ask "which sockets could I read now?" and then make the syscalls
//! themselves. A completion engine hands the kernel the whole operation (accept, receive into
//! this buffer, send these slices) through a shared submission queue, and later reads the
//! results from a completion queue. One `io_uring_enter` both submits everything the loop
//! prepared and waits for what finished, so a turn costs one syscall however many
//! connections it serves. How this loop uses that:
//!
//! - **Multishot accept**: one submission accepts every connection that ever arrives.
//! - **Multishot recv with a provided-buffer ring** ([`bufring`]): one submission per
//!   connection receives until the connection ends, into buffers the kernel takes from a
//!   pool shared by the loop. Kernels without it (before 6.0) get single-shot receives into a
//!   buffer per connection; the loop probes at start and says which it uses.
//! - **Batched sends**: after a batch of completions, every connection with replies gets one
//!   send (one slice) or sendmsg (the session's slices, gathered) in the same submission.
//!   The slices point into the session's queue, which [`OutQueue::hold`] keeps in place until
//!   the kernel is done with them: no copy.
//! - Options: `--sqpoll` (a kernel thread polls the submission queue: no syscall to submit),
//!   `--zero-copy-threshold` (SEND_ZC: the NIC, or loopback, reads the pages in place; the
//!   buffers stay held until the kernel's notification), `--register-files` (a fixed file
//!   table spares each operation the file lookup), `--ring-entries`.
//!
//! [`OutQueue::hold`]: crate::sansio::frame::OutQueue::hold

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::conns::{out_of_fds, FdReserve, Slab, Token};
use super::{ConnError, Drain, EngineCtx, Next, RecvMode, ServerStats, UringOptions};
use crate::os::uring::bufring::{self, BufRing};
use crate::os::uring::{setup, tag, untag, Gather, Target};
use crate::sansio::session::ServerSession;
use crate::uring_op;

// What a completion is about: the top byte of its user_data; the rest is the token.
const ACCEPT: u64 = 1;
const LISTEN_POLL: u64 = 2;
const SHUTDOWN: u64 = 3;
const DRAIN_TIMER: u64 = 4;
const RECV: u64 = 5;
const SEND: u64 = 6;
const CANCEL: u64 = 7;
const MEMORY_TIMER: u64 = 8;
const SWEEP_TIMER: u64 = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    Idle,
    InFlight {
        zero_copy: bool,
    },
    /// Zero-copy: the result is in, the buffers are the kernel's until the notification.
    AwaitingNotification {
        sent: i32,
    },
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    target: Target,
    session: ServerSession,
    /// Operations submitted and not yet completed for good; the slot is freed only at zero.
    ops: u32,
    recv_armed: bool,
    /// A cancel was sent for the multishot receive (back-pressure); it ends soon.
    recv_cancelling: bool,
    /// Single-shot receives land here (no buffer ring).
    recv_buf: Vec<u8>,
    /// The iovecs of the send in flight (1 KiB): lent from the loop's pool for the send's
    /// life only, so an idle connection holds none.
    send: Option<Box<Gather>>,
    sending: Sending,
    /// The socket was half-closed for reading (the session stopped taking input), which also
    /// ends a multishot receive.
    read_shut: bool,
    /// How it ends, once decided: the session's verdict, or an I/O error of the ring's.
    closing: Option<Result<(), ConnError>>,
    shut: bool,
    clock: super::RequestClock,
}

struct Loop {
    // Dropped first: the kernel lets go of the buffers below before they are freed.
    ring: IoUring,
    bufs: Option<BufRing>,
    ctx: Arc<EngineCtx>,
    listener: Option<TcpListener>,
    accept_armed: bool,
    conns: Slab<Conn>,
    /// Send iovecs not lent out: as many as sends were ever in flight at once. Boxed, so
    /// lending one to a connection moves a pointer, not 1 KiB, and allocates nothing.
    #[allow(clippy::vec_box)]
    gathers: Vec<Box<Gather>>,
    fd_reserve: FdReserve,
    zero_copy_threshold: Option<usize>,
    registered_files: u32,
    recv_buffer_size: usize,
    /// Connections touched by this batch of completions: settled before the next submit.
    dirty: Vec<Token>,
    drain: Option<Drain>,
    drain_timer: Box<types::Timespec>,
    /// Connections whose frame waits for the memory budget, looked at again when the memory
    /// timer fires (no completion says that another connection gave memory back).
    awaiting_memory: Vec<Token>,
    memory_timer: Option<Box<types::Timespec>>,
    /// Fires every sweep interval: requests past `--request-timeout` are timed out.
    sweep_timer: Box<types::Timespec>,
    /// After the cut-off, when the loop stops waiting for operations that still hang.
    give_up_at: Option<Instant>,
    enobufs: u64,
}

/// This engine's face: the registry starts it for `--engine uring`.
pub struct UringEngine;

impl super::Engine for UringEngine {
    type Options = UringOptions;
    fn start(config: super::ServeConfig, options: UringOptions) -> anyhow::Result<super::RunningServer> {
        // Fail before listening, with the reason, where io_uring cannot run.
        options.preflight()?;
        let options = Arc::new(options);
        super::listen_and_run(
            config,
            super::Model::Loops(Arc::new(move |ctx, l| serve(ctx, l, &options))),
        )
    }
}

pub fn serve(ctx: Arc<EngineCtx>, listener: TcpListener, opts: &UringOptions) -> anyhow::Result<()> {
    let ring = setup::build_ring(opts.ring_entries, opts.sqpoll.then_some(opts.sqpoll_idle_ms))?;
    let features = setup::probe(&ring);
    let multishot = match opts.recv {
        RecvMode::Auto => features.multishot_recv,
        RecvMode::Multishot if !features.multishot_recv => {
            anyhow::bail!("--recv multishot needs Linux ≥ 6.0 (multishot recv); use --recv auto or single")
        }
        RecvMode::Multishot => true,
        RecvMode::Single => false,
    };
    let mut fallback = (opts.recv == RecvMode::Auto && !multishot)
        .then(|| "this kernel has no multishot recv (Linux < 6.0)".to_string());
    let bufs = if multishot {
        match BufRing::register(&ring.submitter(), opts.recv_buffers, opts.recv_buffer_size) {
            Ok(b) => Some(b),
            Err(e) if opts.recv == RecvMode::Auto && e.kind() != io::ErrorKind::InvalidInput => {
                fallback = Some(format!("cannot register a provided-buffer ring: {e}"));
                None
            }
            Err(e) => anyhow::bail!("cannot register the receive buffer ring: {e}"),
        }
    } else {
        None
    };
    if let Some(t) = opts.zero_copy_threshold {
        if !features.send_zc || !features.sendmsg_zc {
            anyhow::bail!(
                "--zero-copy-threshold {t} needs SEND_ZC and SENDMSG_ZC (Linux ≥ 6.1); this kernel lacks them"
            );
        }
    }
    let registered_files = if opts.register_files {
        let n = crate::os::cpu::raise_fd_limit().min(65_536) as u32;
        ring.submitter()
            .register_files_sparse(n)
            .map_err(|e| anyhow::anyhow!("cannot register a file table of {n} slots: {e}"))?;
        n
    } else {
        0
    };
    ctx.announce(&describe(opts, bufs.as_ref(), fallback.as_deref()));
    listener.set_nonblocking(true)?;
    let ctx_timeout = ctx.config.session.request_timeout;
    let mut lp = Loop {
        ring,
        bufs,
        ctx,
        listener: Some(listener),
        accept_armed: false,
        conns: Slab::default(),
        gathers: Vec::new(),
        fd_reserve: FdReserve::default(),
        zero_copy_threshold: opts.zero_copy_threshold,
        registered_files,
        recv_buffer_size: opts.recv_buffer_size,
        dirty: Vec::new(),
        drain: None,
        drain_timer: Box::new(types::Timespec::new()),
        awaiting_memory: Vec::new(),
        memory_timer: None,
        sweep_timer: Box::new(super::timeout_sweep(ctx_timeout).into()),
        give_up_at: None,
        enobufs: 0,
    };
    let result = lp.run();
    if lp.enobufs > 0 {
        eprintln!(
            "iolab: uring: the receive buffer ring ran empty {} time(s); more --recv-buffers would help",
            lp.enobufs
        );
    }
    lp.release_buffers();
    result
}

fn describe(opts: &super::UringOptions, bufs: Option<&BufRing>, fallback: Option<&str>) -> String {
    let recv = match bufs {
        Some(b) => format!(
            "multishot recv into a provided-buffer ring ({} × {} KiB)",
            b.count(),
            b.buffer_size() / 1024
        ),
        None => format!(
            "single-shot recv into a {} KiB buffer per connection{}",
            opts.recv_buffer_size / 1024,
            fallback.map_or(String::new(), |why| format!(" ({why})"))
        ),
    };
    let mut extras = Vec::new();
    if opts.sqpoll {
        extras.push(format!("sqpoll (idle {} ms)", opts.sqpoll_idle_ms));
    }
    if let Some(t) = opts.zero_copy_threshold {
        extras.push(format!("SEND_ZC from {t} B"));
    }
    if opts.register_files {
        extras.push("registered files".to_string());
    }
    let extras = if extras.is_empty() {
        String::new()
    } else {
        format!(", {}", extras.join(", "))
    };
    format!(
        "uring: {} entries, multishot accept, {recv}{extras}",
        opts.ring_entries
    )
}

impl Loop {
    fn run(&mut self) -> anyhow::Result<()> {
        self.arm_accept()?;
        self.arm_sweep_timer()?;
        let shutdown_fd = self.ctx.shutdown.fd();
        let poll = opcode::PollAdd::new(types::Fd(shutdown_fd), libc::POLLIN as u32)
            .build()
            .user_data(tag(SHUTDOWN, 0));
        self.push(poll)?;
        let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        loop {
            self.settle_dirty()?;
            if self.finished() {
                return Ok(());
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {} // CQ full: reap first
                Err(e) => return Err(anyhow::anyhow!("io_uring_enter failed: {e}")),
            }
            crate::os::uring::reap(&mut self.ring, &mut completions);
            for &(data, result, flags) in &completions {
                self.complete(data, result, flags)?;
            }
        }
    }

    /// Queues one submission, submitting what is queued first if the queue is full.
    fn push(&mut self, entry: squeue::Entry) -> anyhow::Result<()> {
        // SAFETY: every pointer an entry carries (buffers, iovecs, msghdr, timespec) points
        // into memory this loop keeps in place until the operation completes.
        unsafe { crate::os::uring::push(&mut self.ring, &entry) }
            .map_err(|e| anyhow::anyhow!("cannot submit to the ring: {e} (--ring-entries too small?)"))
    }

    fn arm_accept(&mut self) -> anyhow::Result<()> {
        let Some(fd) = self.listener.as_ref().map(|l| l.as_raw_fd()) else {
            return Ok(());
        };
        let accept = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(tag(ACCEPT, 0));
        self.push(accept)?;
        self.accept_armed = true;
        Ok(())
    }

    fn complete(&mut self, data: u64, result: i32, flags: u32) -> anyhow::Result<()> {
        let (kind, token) = untag(data);
        match kind {
            ACCEPT => self.accepted(result, flags),
            LISTEN_POLL => self.arm_accept(),
            SHUTDOWN => self.begin_shutdown(),
            DRAIN_TIMER => {
                self.cut_off_stragglers();
                Ok(())
            }
            SWEEP_TIMER => {
                let now = Instant::now();
                for (t, conn) in self.conns.iter_mut() {
                    if conn.closing.is_none() && conn.clock.enforce(&mut conn.session, || now) {
                        self.dirty.push(t);
                    }
                }
                self.arm_sweep_timer()
            }
            MEMORY_TIMER => {
                self.memory_timer = None;
                let mut waiting = std::mem::take(&mut self.awaiting_memory);
                waiting.sort_unstable();
                waiting.dedup();
                for t in waiting {
                    if let Some(conn) = self.conns.get_mut(t) {
                        conn.session.retry_memory();
                        self.dirty.push(t); // settled again: re-armed, or waits on
                    }
                }
                Ok(())
            }
            RECV => {
                self.received(token, result, flags);
                Ok(())
            }
            SEND => {
                self.sent(token, result, flags);
                Ok(())
            }
            _ => Ok(()), // cancellations report nothing we need
        }
    }

    fn accepted(&mut self, result: i32, flags: u32) -> anyhow::Result<()> {
        let more = cqueue::more(flags);
        if !more {
            self.accept_armed = false;
            if self.drain.is_some() {
                self.listener = None; // shutting down: the port can close now
            }
        }
        if result >= 0 {
            // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
            let stream = unsafe { TcpStream::from_raw_fd(result) };
            ServerStats::bump(&self.ctx.stats.accepted);
            self.add_conn(stream);
        } else {
            let e = io::Error::from_raw_os_error(-result);
            if self.drain.is_some() || result == -libc::ECANCELED {
                return Ok(());
            }
            if out_of_fds(&e) {
                let refused = match self.listener.as_ref() {
                    Some(l) => self.fd_reserve.refuse_one(l, &self.ctx.stats, self.conns.len()),
                    None => false,
                };
                if !more && !refused {
                    // Nobody was waiting: come back when somebody is.
                    if let Some(fd) = self.listener.as_ref().map(|l| l.as_raw_fd()) {
                        let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                            .build()
                            .user_data(tag(LISTEN_POLL, 0));
                        self.push(poll)?;
                    }
                    return Ok(());
                }
            } else {
                ServerStats::bump(&self.ctx.stats.accept_errors);
                eprintln!("iolab: accept failed: {e}");
            }
        }
        if !self.accept_armed && self.drain.is_none() {
            self.arm_accept()?;
        }
        Ok(())
    }

    fn add_conn(&mut self, stream: TcpStream) {
        let peer = match stream
            .peer_addr()
            .and_then(|p| stream.set_nodelay(true).map(|()| p))
        {
            Ok(p) => p,
            Err(e) => {
                // Reset before we looked at it: nothing to serve.
                self.ctx.stats.refused();
                if e.kind() != io::ErrorKind::NotConnected {
                    eprintln!("iolab: cannot set up an accepted connection: {e}");
                }
                return;
            }
        };
        let fd = stream.as_raw_fd();
        let conn = Conn {
            stream,
            peer,
            target: Target::Fd(fd),
            session: self.ctx.new_session(),
            ops: 0,
            recv_armed: false,
            recv_cancelling: false,
            recv_buf: Vec::new(),
            send: None,
            sending: Sending::Idle,
            read_shut: false,
            closing: None,
            shut: false,
            clock: super::RequestClock::default(),
        };
        let (token, _) = self.conns.insert(conn);
        if (token as u32) < self.registered_files {
            if let Ok(1) = self.ring.submitter().register_files_update(token as u32, &[fd]) {
                if let Some(c) = self.conns.get_mut(token) {
                    c.target = Target::Fixed(token as u32);
                }
            }
        }
        if self.drain.is_some() {
            if let Some(c) = self.conns.get_mut(token) {
                let _ = c.stream.shutdown(std::net::Shutdown::Read);
            }
        }
        self.dirty.push(token);
    }

    fn received(&mut self, token: Token, result: i32, flags: u32) {
        let more = cqueue::more(flags);
        let buffer = cqueue::buffer_select(flags);
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if !more {
            conn.ops -= 1;
            conn.recv_armed = false;
            conn.recv_cancelling = false;
        }
        self.dirty.push(token);
        match result {
            n if n > 0 => {
                let n = n as usize;
                // Bytes after the session stopped reading (or after an I/O error) are dropped
                // by it; an error is the session's to remember: next() says what follows.
                if conn.closing.is_none() {
                    let _ = match (buffer, self.bufs.as_ref()) {
                        (Some(bid), Some(bufs)) => conn.session.receive(bufs.filled(bid, n)),
                        _ => conn.session.receive(&conn.recv_buf[..n.min(conn.recv_buf.len())]),
                    };
                }
                conn.clock.update(&conn.session, Instant::now);
                if let (Some(bid), Some(bufs)) = (buffer, self.bufs.as_mut()) {
                    bufs.recycle(bid);
                }
                if !conn.session.reading() && !conn.read_shut {
                    // A protocol error, or HTTP's `Connection: close`: this ends a multishot
                    // receive, the peer's further bytes not ours to read.
                    conn.read_shut = true;
                    let _ = conn.stream.shutdown(std::net::Shutdown::Read);
                }
            }
            0 => conn.session.peer_closed(),
            e if e == -libc::ENOBUFS => self.enobufs += 1, // re-armed when settled
            e if e == -libc::ECANCELED || e == -libc::EINTR || e == -libc::EAGAIN => {}
            e => {
                if conn.closing.is_none() {
                    conn.closing = Some(Err(io::Error::from_raw_os_error(-e).into()));
                }
            }
        }
    }

    fn sent(&mut self, token: Token, result: i32, flags: u32) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        self.dirty.push(token);
        let done = match conn.sending {
            Sending::InFlight { zero_copy: true } if cqueue::more(flags) => {
                // The bytes are queued; the pages are still the kernel's until the notification.
                conn.sending = Sending::AwaitingNotification { sent: result };
                return;
            }
            Sending::AwaitingNotification { sent } if cqueue::notif(flags) => sent,
            Sending::AwaitingNotification { .. } => return,
            _ => result,
        };
        conn.ops -= 1;
        conn.sending = Sending::Idle;
        // The kernel is done with the iovecs: back to the pool.
        if let Some(gather) = conn.send.take() {
            self.gathers.push(gather);
        }
        match done {
            n if n > 0 => conn.session.wrote(n as usize),
            e => {
                conn.session.wrote(0); // releases the hold
                if conn.closing.is_none() {
                    let err = if e == 0 {
                        io::ErrorKind::WriteZero.into()
                    } else {
                        io::Error::from_raw_os_error(-e)
                    };
                    conn.closing = Some(Err(err.into()));
                }
            }
        }
    }

    /// Decides, for every connection this batch touched, what it needs next: a send, a
    /// receive, a pause for back-pressure, or closing. Everything goes out in the next submit.
    fn settle_dirty(&mut self) -> anyhow::Result<()> {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &t in &dirty {
            self.settle(t)?;
        }
        dirty.clear();
        self.dirty = dirty;
        Ok(())
    }

    fn settle(&mut self, t: Token) -> anyhow::Result<()> {
        let multishot = self.bufs.is_some();
        let Some(conn) = self.conns.get_mut(t) else {
            return Ok(());
        };
        let idle = conn.sending == Sending::Idle;
        if conn.closing.is_none() {
            // Between sends the session decides; a cut-off cannot wait for one to finish.
            if idle && conn.session.next() == Next::LastWrite {
                super::last_write(conn.stream.as_raw_fd(), &mut conn.session);
            }
            match conn.session.next() {
                Next::Close(verdict) if idle || verdict.is_abrupt() => {
                    conn.closing = Some(verdict.into());
                }
                _ => {}
            }
        }
        let nothing_queued = conn.session.out().is_empty();
        if conn.closing.is_some() {
            if !conn.shut {
                conn.shut = true;
                // Ends whatever is in flight: a receive sees end of file, a send an error.
                let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            }
            if conn.ops == 0 {
                self.close(t);
            }
            return Ok(());
        }
        if idle && !nothing_queued {
            let entry = self.prepare_send(t);
            self.push(entry)?;
        }
        let Some(conn) = self.conns.get_mut(t) else {
            return Ok(());
        };
        if conn.session.awaiting_memory() {
            self.awaiting_memory.push(t);
            if self.memory_timer.is_none() {
                let timer = self.memory_timer.insert(Box::new(super::MEMORY_RETRY.into()));
                let entry = opcode::Timeout::new(&**timer as *const types::Timespec)
                    .build()
                    .user_data(tag(MEMORY_TIMER, 0));
                self.push(entry)?;
            }
        }
        let Some(conn) = self.conns.get_mut(t) else {
            return Ok(());
        };
        let wants_read = conn.session.wants_read();
        if !conn.recv_armed && wants_read {
            let target = conn.target;
            let entry = if multishot {
                uring_op!(target, RecvMulti(bufring::GROUP))
            } else {
                if conn.recv_buf.is_empty() {
                    conn.recv_buf = vec![0; self.recv_buffer_size];
                }
                let (ptr, len) = (conn.recv_buf.as_mut_ptr(), conn.recv_buf.len() as u32);
                uring_op!(target, Recv(ptr, len))
            };
            conn.recv_armed = true;
            conn.ops += 1;
            self.push(entry.user_data(tag(RECV, t)))?;
        } else if conn.recv_armed && multishot && !wants_read && !conn.recv_cancelling {
            // Back-pressure: the peer is not reading its replies. Stop the multishot receive;
            // what it already holds is kept, the rest waits in the socket.
            conn.recv_cancelling = true;
            let cancel = opcode::AsyncCancel::new(tag(RECV, t))
                .build()
                .user_data(tag(CANCEL, t));
            self.push(cancel)?;
        }
        Ok(())
    }

    /// A send of the connection's queued slices, pointing into its session (held in place).
    fn prepare_send(&mut self, t: Token) -> squeue::Entry {
        let threshold = self.zero_copy_threshold;
        let conn = self.conns.get_mut(t).expect("settle checked the token");
        let gathers = &mut self.gathers;
        let gather = conn
            .send
            .get_or_insert_with(|| gathers.pop().unwrap_or_else(Gather::new));
        let (entry, _, zero_copy) = gather.send(conn.session.hold_out(), conn.target, threshold);
        conn.sending = Sending::InFlight { zero_copy };
        conn.ops += 1;
        entry.user_data(tag(SEND, t))
    }

    fn close(&mut self, t: Token) {
        let Some(mut conn) = self.conns.remove(t) else {
            return;
        };
        if let Some(gather) = conn.send.take() {
            self.gathers.push(gather);
        }
        if let Target::Fixed(slot) = conn.target {
            let _ = self.ring.submitter().register_files_update(slot, &[-1]);
        }
        let result = conn.closing.take().unwrap_or(Ok(()));
        self.ctx
            .connection_closed(conn.peer, result, conn.session.counters());
    }

    /// Stops accepting and half-closes every connection for reading: buffered requests are
    /// still received and answered, then each receive sees end of file.
    fn begin_shutdown(&mut self) -> anyhow::Result<()> {
        if self.drain.is_some() {
            return Ok(());
        }
        let drain = Drain::begin(&self.ctx);
        let timeout = drain.timeout();
        self.drain = Some(drain);
        if self.accept_armed {
            let cancel = opcode::AsyncCancel::new(tag(ACCEPT, 0))
                .build()
                .user_data(tag(CANCEL, 0));
            self.push(cancel)?;
        } else {
            self.listener = None;
        }
        for t in self.conns.tokens() {
            if let Some(c) = self.conns.get_mut(t) {
                let _ = c.stream.shutdown(std::net::Shutdown::Read);
            }
        }
        self.arm_drain_timer(timeout)
    }

    fn arm_sweep_timer(&mut self) -> anyhow::Result<()> {
        let timer = opcode::Timeout::new(&*self.sweep_timer as *const types::Timespec)
            .build()
            .user_data(tag(SWEEP_TIMER, 0));
        self.push(timer)
    }

    fn arm_drain_timer(&mut self, after: Duration) -> anyhow::Result<()> {
        *self.drain_timer = after.into();
        let timer = opcode::Timeout::new(&*self.drain_timer as *const types::Timespec)
            .build()
            .user_data(tag(DRAIN_TIMER, 0));
        self.push(timer)
    }

    /// The drain timeout passed: whoever is still writing (a peer that never reads) is cut off.
    fn cut_off_stragglers(&mut self) {
        let open = self.conns.len();
        let Some(drain) = self.drain.as_mut() else {
            return;
        };
        if open == 0 || !drain.cut_off(open) {
            return;
        }
        self.give_up_at = Some(Instant::now() + Duration::from_secs(1));
        for t in self.conns.tokens() {
            if let Some(c) = self.conns.get_mut(t) {
                c.session.cut_off();
                self.dirty.push(t);
            }
        }
        // Sends blocked on a full socket end with the shutdown; if something still hangs,
        // the loop gives up a second later.
        let _ = self.arm_drain_timer(Duration::from_secs(1));
    }

    fn finished(&self) -> bool {
        if self.drain.is_none() {
            return false;
        }
        let drained = self.conns.is_empty() && self.listener.is_none();
        drained || self.give_up_at.is_some_and(|t| Instant::now() > t)
    }

    /// Unregisters the receive buffers if nothing can still write into them; otherwise
    /// leaks them rather than free memory the kernel may yet fill.
    fn release_buffers(&mut self) {
        let busy = self.conns.iter().any(|(_, c)| c.ops > 0);
        if let Some(bufs) = self.bufs.take() {
            if busy || self.ring.submitter().unregister_buf_ring(bufring::GROUP).is_err() {
                std::mem::forget(bufs);
            }
        }
        if busy {
            // Receives into per-connection buffers, too, may still be in the kernel's hands.
            for t in self.conns.tokens() {
                if let Some(c) = self.conns.remove(t) {
                    std::mem::forget(c);
                }
            }
        }
    }
}
