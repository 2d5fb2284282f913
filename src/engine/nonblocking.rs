//! What every readiness loop shares: the non-blocking connection and the loop's bookkeeping.
//!
//! A readiness engine (`select`, `poll`, `epoll`, `pool`) differs from the others only in how
//! it learns that a socket is ready. Once it knows, the work is the same: move bytes both
//! ways until the socket would block. [`Conn::drive`] does that, within a budget so that one
//! busy client cannot hold the loop. [`LoopCore`] keeps the connections, accepts, and runs the
//! graceful shutdown, so an engine file holds only its waiting.
//!
//! Shutdown, as in the blocking engines: stop accepting, half-close every connection for
//! reading (`SHUT_RD`) so that what is already buffered is read and answered, then end of
//! file; the loop ends when every connection has flushed and closed, or at the drain timeout.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use super::conns::Token;
use super::conns::{out_of_fds, FdReserve, Slab};
use super::{ConnError, Drain, EngineCtx, Next, RequestClock, ServerStats};
use crate::os::sys::{interest, Epoll};
use crate::sansio::session::{ServerSession, SessionError};

/// One read buffer per loop, shared by all its connections: an idle connection costs no buffer.
pub const READ_BUFFER: usize = 64 * 1024;
/// Reads (and writes) one connection may do per turn before the loop moves on.
const DRIVE_BUDGET: usize = 16;
/// Slices offered to one writev.
const WRITE_SLICES: usize = 64;
/// Requests one connection may have out with other threads before the loop stops reading it.
const MAX_OUTSTANDING: usize = 1024;

/// What one turn of [`Conn::drive`] ended with.
#[derive(Debug)]
pub enum Drive {
    /// Nothing more to do until the socket is ready again.
    Blocked,
    /// The budget ran out with work left: come back without waiting.
    MoreWork,
    /// The connection is finished (cleanly or not) and must be closed.
    Close(Result<(), ConnError>),
}

/// Turns received bytes into replies. Returns how many requests it handed elsewhere (to be
/// answered later through [`ServerSession::queue_handed_back`]).
pub type Dispatch<'a> = dyn FnMut(Token, &mut Conn, &[u8]) -> Result<usize, SessionError> + 'a;

/// Runs each request at once, on the loop's own thread.
pub fn inline(_: Token, conn: &mut Conn, data: &[u8]) -> Result<usize, SessionError> {
    conn.session.receive(data).map(|_| 0)
}

#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub session: ServerSession,
    /// Tells a reply meant for an earlier occupant of this token from one meant for this one.
    pub generation: u64,
    /// What the engine last registered for this socket (engines that need to remember).
    pub registered: u32,
    clock: RequestClock,
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr, ctx: &EngineCtx) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            peer,
            session: ctx.new_session(),
            generation: 0,
            registered: 0,
            clock: RequestClock::default(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Whether the loop should wait for this socket to become readable: input open, and room
    /// (back-pressure: replies waiting to be written, or requests waiting on other threads).
    pub fn wants_read(&self) -> bool {
        self.session.wants_read() && self.session.outstanding() < MAX_OUTSTANDING
    }

    /// Whether the loop should wait for this socket to become writable.
    pub fn wants_write(&self) -> bool {
        !self.session.out().is_empty()
    }

    /// Writes and reads until the socket would block, the budget runs out, or the session
    /// says close. `now`: the loop's clock for this turn, for the request timeout.
    pub fn drive(
        &mut self,
        token: Token,
        buf: &mut [u8],
        now: Instant,
        dispatch: &mut Dispatch<'_>,
    ) -> Drive {
        let drive = self.drive_inner(token, buf, dispatch);
        self.clock.update(&self.session, || now);
        drive
    }

    fn drive_inner(&mut self, token: Token, buf: &mut [u8], dispatch: &mut Dispatch<'_>) -> Drive {
        if self.session.memory_room() {
            // A frame waited for the memory budget, and there is room now: feeding the
            // session no bytes goes on with it, then the socket is read as ever.
            if let Ok(handed_out) = dispatch(token, self, &[]) {
                self.session.handed_out(handed_out);
            }
        }
        for _ in 0..DRIVE_BUDGET {
            match self.session.next() {
                Next::Close(verdict) => return Drive::Close(verdict.into()),
                Next::LastWrite => {
                    super::last_write(self.fd(), &mut self.session);
                    continue;
                }
                Next::Serve | Next::Flush => {}
            }
            // Write first: it makes room for the replies the next read may produce.
            if let Err(e) = self.flush() {
                return Drive::Close(Err(e.into()));
            }
            if !self.wants_read() {
                // Back-pressure (wait for the peer, or the workers), or input is over and the
                // session closes once what it owes has left.
                return match self.session.next() {
                    Next::Serve | Next::Flush => Drive::Blocked,
                    _ => continue,
                };
            }
            match self.stream.read(buf) {
                Ok(0) => self.session.peer_closed(),
                Ok(n) => {
                    // An error is the session's to remember: next() says what follows it.
                    if let Ok(handed_out) = dispatch(token, self, &buf[..n]) {
                        self.session.handed_out(handed_out);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return match self.flush() {
                        Ok(()) => Drive::Blocked,
                        Err(e) => Drive::Close(Err(e.into())),
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Drive::Close(Err(e.into())),
            }
        }
        Drive::MoreWork
    }

    /// Writes queued replies until done or the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        loop {
            let result = {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let n = self.session.out().fill(&mut slices);
                if n == 0 {
                    return Ok(());
                }
                self.stream.write_vectored(&slices[..n])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.session.wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A loop's connections by token.
pub type Conns = Slab<Conn>;

/// The state of one readiness loop, less its way of waiting.
#[derive(Debug)]
pub struct LoopCore {
    pub ctx: Arc<EngineCtx>,
    pub listener: Option<TcpListener>,
    pub conns: Conns,
    buf: Vec<u8>,
    more_work: Vec<Token>,
    /// Connections whose frame waits for the memory budget: retried every
    /// [`super::MEMORY_RETRY`] (no event says that another connection gave memory back).
    awaiting_memory: Vec<Token>,
    /// The loop's clock, read once per turn, and when it next looks for requests past
    /// `--request-timeout`.
    now: Instant,
    next_sweep: Instant,
    sweep_every: Duration,
    drain: Option<Drain>,
    fd_reserve: FdReserve,
}

/// What became of a connection after a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driven {
    Open,
    Closed,
}

impl LoopCore {
    pub fn new(ctx: Arc<EngineCtx>, listener: TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(LoopCore {
            sweep_every: super::timeout_sweep(ctx.config.session.request_timeout),
            ctx,
            listener: Some(listener),
            conns: Conns::default(),
            buf: vec![0; READ_BUFFER],
            more_work: Vec::new(),
            awaiting_memory: Vec::new(),
            now: Instant::now(),
            next_sweep: Instant::now(),
            drain: None,
            fd_reserve: FdReserve::default(),
        })
    }

    pub fn listener_fd(&self) -> Option<RawFd> {
        self.listener.as_ref().map(|l| l.as_raw_fd())
    }

    pub fn shutdown_fd(&self) -> RawFd {
        self.ctx.shutdown.fd()
    }

    pub fn shutting_down(&self) -> bool {
        self.drain.is_some()
    }

    /// Accepts every waiting connection. `admit` may refuse one by its descriptor (select
    /// cannot watch descriptors from FD_SETSIZE up). Returns the tokens of the new ones.
    pub fn accept(&mut self, mut admit: impl FnMut(RawFd) -> Result<(), String>) -> Vec<Token> {
        let mut added = Vec::new();
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return added;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    ServerStats::bump(&self.ctx.stats.accepted);
                    if let Err(why) = admit(stream.as_raw_fd()) {
                        self.ctx.stats.refused();
                        eprintln!("iolab: refusing connection from {peer}: {why}");
                        continue;
                    }
                    match Conn::new(stream, peer, &self.ctx) {
                        Ok(conn) => {
                            let (token, generation) = self.conns.insert(conn);
                            if let Some(c) = self.conns.get_mut(token) {
                                c.generation = generation;
                            }
                            added.push(token);
                        }
                        Err(e) => {
                            self.ctx.stats.refused();
                            eprintln!("iolab: cannot set up connection from {peer}: {e}");
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if out_of_fds(&e) => {
                    let open = self.conns.len();
                    if !self.fd_reserve.refuse_one(listener, &self.ctx.stats, open) {
                        break;
                    }
                }
                Err(e) => {
                    ServerStats::bump(&self.ctx.stats.accept_errors);
                    eprintln!("iolab: accept failed: {e}");
                    break;
                }
            }
        }
        added
    }

    /// One turn of the connection at `token`, with requests run inline.
    pub fn drive(&mut self, token: Token) -> Driven {
        self.drive_with(token, &mut inline)
    }

    /// One turn of the connection at `token`; closes and accounts for it if it is finished.
    pub fn drive_with(&mut self, token: Token, dispatch: &mut Dispatch<'_>) -> Driven {
        let Some(conn) = self.conns.get_mut(token) else {
            return Driven::Closed;
        };
        match conn.drive(token, &mut self.buf, self.now, dispatch) {
            Drive::Blocked if conn.session.awaiting_memory() => {
                self.awaiting_memory.push(token);
                Driven::Open
            }
            Drive::Blocked => Driven::Open,
            Drive::MoreWork => {
                self.more_work.push(token);
                Driven::Open
            }
            Drive::Close(result) => {
                self.close(token, result);
                Driven::Closed
            }
        }
    }

    fn close(&mut self, token: Token, result: Result<(), ConnError>) {
        if let Some(conn) = self.conns.remove(token) {
            self.ctx
                .connection_closed(conn.peer, result, conn.session.counters());
        }
    }

    /// Connections whose budget ran out last turn, and those waiting for memory that now
    /// have room: drive them before waiting again.
    ///
    /// Called once per turn, after the wait: it also reads the loop's clock, and now and then
    /// times out the connections whose request is past `--request-timeout` (they are in the
    /// work returned, and close when driven).
    pub fn take_more_work(&mut self) -> Vec<Token> {
        let mut work = std::mem::take(&mut self.more_work);
        self.now = Instant::now();
        if self.now >= self.next_sweep {
            self.next_sweep = self.now + self.sweep_every;
            let now = self.now;
            for (t, conn) in self.conns.iter_mut() {
                if conn.clock.enforce(&mut conn.session, || now) {
                    work.push(t);
                }
            }
        }
        if !self.awaiting_memory.is_empty() {
            let conns = &self.conns;
            self.awaiting_memory.sort_unstable();
            self.awaiting_memory.dedup();
            self.awaiting_memory.retain(|&t| {
                let Some(conn) = conns.get(t).filter(|c| c.session.awaiting_memory()) else {
                    return false; // closed, or gone on already
                };
                if conn.session.memory_room() {
                    work.push(t);
                    return false;
                }
                true
            });
        }
        work
    }

    /// How long the engine may wait for readiness: not at all while work is pending, no
    /// longer than the memory retry while a connection waits for memory, and no longer than
    /// the drain deadline during shutdown.
    pub fn timeout(&self) -> Option<Duration> {
        if !self.more_work.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut wait = self.drain.as_ref().map(Drain::remaining);
        let mut at_most = |d: Duration| wait = Some(wait.map_or(d, |w| w.min(d)));
        if !self.awaiting_memory.is_empty() {
            at_most(super::MEMORY_RETRY);
        }
        if !self.conns.is_empty() {
            // A request timing out is announced by no event: wake for the next sweep.
            at_most(self.next_sweep.saturating_duration_since(self.now));
        }
        wait
    }

    /// Stops accepting and half-closes every connection for reading. Returns the tokens to
    /// drive now, so each reads what is buffered and meets end of file.
    pub fn begin_shutdown(&mut self) -> Vec<Token> {
        if self.shutting_down() {
            return Vec::new();
        }
        self.listener = None;
        self.drain = Some(Drain::begin(&self.ctx));
        let tokens = self.conns.tokens();
        for (_, conn) in self.conns.iter() {
            let _ = conn.stream.shutdown(std::net::Shutdown::Read);
        }
        tokens
    }

    /// Whether the loop is done: shutting down and every connection closed, or out of time
    /// (then the stragglers are cut off here).
    pub fn finished(&mut self) -> bool {
        let Some(drain) = self.drain.as_mut() else {
            return false;
        };
        if self.conns.is_empty() {
            return true;
        }
        if !drain.expired() {
            return false;
        }
        let left = self.conns.tokens();
        drain.cut_off(left.len());
        for t in left {
            if let Some(conn) = self.conns.get_mut(t) {
                conn.session.cut_off();
                let verdict = conn.session.next();
                if let Next::Close(v) = verdict {
                    self.close(t, v.into());
                }
            }
        }
        true
    }
}

/// The epoll side of a loop that waits with epoll (`epoll`, `pool`): the loop's own
/// descriptors registered once, and the events that are not connections handled the same way.
#[derive(Debug)]
pub struct EpollWaiter {
    pub epoll: Epoll,
    events: Vec<libc::epoll_event>,
}

const SHUTDOWN_EVENT: u64 = u64::MAX;
const LISTENER_EVENT: u64 = u64::MAX - 1;
/// Tokens from here up are free for an engine's own descriptors.
pub const FIRST_ENGINE_EVENT: u64 = u64::MAX - 16;

impl EpollWaiter {
    pub fn new(core: &LoopCore) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.add(core.shutdown_fd(), SHUTDOWN_EVENT, interest::READ)?;
        if let Some(fd) = core.listener_fd() {
            // The listener is level-triggered whatever the connections are: accept() drains it.
            epoll.add(fd, LISTENER_EVENT, interest::READ)?;
        }
        Ok(EpollWaiter {
            epoll,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
        })
    }

    /// Waits for events. Shutdown and new connections (registered with `conn_interest`) are
    /// handled here; connections to drive are added to `ready`, and the engine's own tokens
    /// (at or above [`FIRST_ENGINE_EVENT`]) go to `other`.
    pub fn wait(
        &mut self,
        core: &mut LoopCore,
        conn_interest: u32,
        ready: &mut Vec<Token>,
        mut other: impl FnMut(u64),
    ) -> io::Result<()> {
        let n = self.epoll.wait(&mut self.events, core.timeout())?;
        for i in 0..n {
            // Copied out: epoll_event is packed, its fields cannot be borrowed.
            let token = self.events[i].u64;
            match token {
                SHUTDOWN_EVENT => {
                    if let Some(fd) = core.listener_fd() {
                        let _ = self.epoll.delete(fd);
                    }
                    ready.extend(core.begin_shutdown());
                }
                LISTENER_EVENT => {
                    for t in core.accept(|_| Ok(())) {
                        let Some(conn) = core.conns.get_mut(t) else {
                            continue;
                        };
                        conn.registered = conn_interest;
                        self.epoll.add(conn.fd(), t as u64, conn_interest)?;
                        // Bytes may have arrived before registration; with edge-triggered
                        // interest they would never be announced.
                        ready.push(t);
                    }
                }
                t if t >= FIRST_ENGINE_EVENT => other(t),
                t => ready.push(t as usize),
            }
        }
        Ok(())
    }
}
