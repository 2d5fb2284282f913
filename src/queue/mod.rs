//! A queue API in the manner of a library OS (Demikernel's): one interface over any transport.
//!
//! A connection is a queue descriptor ([`Qd`]). `connect`, `accept`, `push` and `pop` start an
//! operation and return a token at once ([`QToken`]); [`LibOs::wait_any`] waits for the first of
//! a set of tokens to complete and returns that [`Completion`]. Nothing in the caller's loop
//! names the transport, so one client loop drives kernel TCP ([`tcp`]), shared memory
//! ([`shm`]) and a user-space TCP/IP stack on a TAP device ([`smol`]) alike.
//!
//! The bookkeeping is here and shared: each queue has an inbox (bytes received, not yet
//! popped), an outbox (bytes pushed, not yet taken by the transport) and a state, and a
//! token completes when its queue's state says so. A backend only moves bytes between its
//! transport and those boxes ([`Backend::progress`]).
//!
//! `push` copies the caller's bytes (the token completes once the transport has taken all
//! of them); `pop` hands over everything received so far as one buffer.

pub mod shm;
pub mod smol;
pub mod tcp;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::clock::now_ns;

/// A queue: one connection, or one listening endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Qd(pub u32);

/// An operation in progress, to wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QToken(u64);

/// Where to connect or listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address (kernel TCP, or the user-space stack's peer).
    Tcp(SocketAddr),
    /// A shared-memory segment by name (`serve --engine shm --shm NAME`).
    Shm(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Shm(name) => write!(f, "shm:{name}"),
        }
    }
}

impl Endpoint {
    /// The error of a backend handed an endpoint of another transport: `what` says what
    /// it takes ("kernel TCP connects to an address").
    pub fn refused(&self, what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{what}, not {self}"))
    }
}

/// How an operation ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Connected,
    /// A new connection on a listening queue.
    Accepted(Qd),
    /// All the bytes of this push were taken by the transport.
    Pushed(usize),
    /// Bytes received (never empty).
    Popped(Vec<u8>),
    /// The peer closed its side: nothing more will arrive.
    Closed,
    /// The queue failed; every operation on it ends with the reason.
    Failed(String),
}

/// A completed operation.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    pub qd: Qd,
    pub outcome: Outcome,
}

/// Where a queue stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Connecting,
    Open,
    Listening,
    /// The peer closed its side.
    PeerClosed,
    Failed(String),
}

/// One queue's boxes and state, which backends fill and drain.
#[derive(Debug)]
pub struct Queue {
    pub state: State,
    inbox: Vec<u8>,
    outbox: Vec<u8>,
    out_at: usize,
    pushed: u64,
    sent: u64,
    backlog: VecDeque<Qd>,
}

impl Queue {
    pub fn new(state: State) -> Queue {
        Queue {
            state,
            inbox: Vec::new(),
            outbox: Vec::new(),
            out_at: 0,
            pushed: 0,
            sent: 0,
            backlog: VecDeque::new(),
        }
    }

    /// Bytes pushed and not yet taken by the transport.
    pub fn pending_out(&self) -> &[u8] {
        &self.outbox[self.out_at..]
    }

    /// The transport took `n` bytes of [`Queue::pending_out`].
    pub fn sent(&mut self, n: usize) {
        self.out_at += n;
        self.sent += n as u64;
        if self.out_at == self.outbox.len() {
            self.outbox.clear();
            self.out_at = 0;
        }
    }

    /// Bytes arrived from the transport.
    pub fn deliver(&mut self, data: &[u8]) {
        self.inbox.extend_from_slice(data);
    }

    /// The transport's view changed: the state moves, unless the queue already failed.
    pub fn set_state(&mut self, state: State) {
        if !matches!(self.state, State::Failed(_)) {
            self.state = state;
        }
    }

    pub fn fail(&mut self, why: impl Into<String>) {
        self.set_state(State::Failed(why.into()));
    }

    pub fn is_live(&self) -> bool {
        matches!(self.state, State::Open | State::Connecting | State::Listening)
    }
}

/// Every queue of one [`LibOs`], indexed by descriptor.
#[derive(Debug, Default)]
pub struct Queues {
    slots: Vec<Option<Queue>>,
}

impl Queues {
    /// Adds a queue and returns its descriptor.
    pub fn add(&mut self, queue: Queue) -> Qd {
        if let Some(i) = self.slots.iter().position(Option::is_none) {
            self.slots[i] = Some(queue);
            return Qd(i as u32);
        }
        self.slots.push(Some(queue));
        Qd(self.slots.len() as u32 - 1)
    }

    pub fn get_mut(&mut self, qd: Qd) -> Option<&mut Queue> {
        self.slots.get_mut(qd.0 as usize)?.as_mut()
    }

    pub fn get(&self, qd: Qd) -> Option<&Queue> {
        self.slots.get(qd.0 as usize)?.as_ref()
    }

    /// A listening queue has a new connection, `new` (already added).
    pub fn accepted(&mut self, listener: Qd, new: Qd) {
        if let Some(l) = self.get_mut(listener) {
            l.backlog.push_back(new);
        }
    }

    fn remove(&mut self, qd: Qd) {
        if let Some(slot) = self.slots.get_mut(qd.0 as usize) {
            *slot = None;
        }
    }
}

/// A transport: it sets connections up and moves bytes between them and their queues.
pub trait Backend {
    /// Starts connecting the (already added, `Connecting`) queue `qd` to `to`.
    fn connect(&mut self, qd: Qd, to: &Endpoint, queues: &mut Queues) -> io::Result<()>;
    /// Starts listening at `at` on the (`Listening`) queue `qd`; new connections become
    /// queues of their own, announced with [`Queues::accepted`].
    fn listen(&mut self, qd: Qd, at: &Endpoint, queues: &mut Queues) -> io::Result<()>;
    /// Moves bytes and state for every queue; waits up to `timeout` when nothing happens.
    fn progress(&mut self, queues: &mut Queues, timeout: Duration) -> io::Result<()>;
    /// Tries to hand queue `qd`'s pending bytes to the transport now (after a push).
    fn kick(&mut self, qd: Qd, queues: &mut Queues) -> io::Result<()>;
    /// Ends queue `qd`'s connection (or listener) and forgets it.
    fn close(&mut self, qd: Qd);
}

enum Op {
    Connect,
    Accept,
    Push { end: u64, len: usize },
    Pop,
}

/// The queue API over one backend.
pub struct LibOs {
    backend: Box<dyn Backend>,
    queues: Queues,
    ops: HashMap<u64, (Qd, Op)>,
    next_token: u64,
}

impl LibOs {
    pub fn new(backend: Box<dyn Backend>) -> LibOs {
        LibOs {
            backend,
            queues: Queues::default(),
            ops: HashMap::new(),
            next_token: 1,
        }
    }

    /// Kernel TCP, through non-blocking sockets and epoll.
    pub fn tcp() -> io::Result<LibOs> {
        Ok(LibOs::new(Box::new(tcp::TcpBackend::new()?)))
    }

    /// Shared-memory rings.
    pub fn shm() -> LibOs {
        LibOs::new(Box::new(shm::ShmBackend::default()))
    }

    /// A smoltcp stack on a TAP device of its own (created in the calling thread's namespace).
    pub fn smoltcp(options: &crate::tap::LinkOptions) -> anyhow::Result<LibOs> {
        Ok(LibOs::new(Box::new(smol::SmolBackend::new(options)?)))
    }

    fn token(&mut self, qd: Qd, op: Op) -> QToken {
        let t = self.next_token;
        self.next_token += 1;
        self.ops.insert(t, (qd, op));
        QToken(t)
    }

    /// Opens a connection to `to`; the token completes when it is up (or has failed).
    pub fn connect(&mut self, to: &Endpoint) -> io::Result<(Qd, QToken)> {
        let qd = self.queues.add(Queue::new(State::Connecting));
        if let Err(e) = self.backend.connect(qd, to, &mut self.queues) {
            self.queues.remove(qd);
            return Err(e);
        }
        Ok((qd, self.token(qd, Op::Connect)))
    }

    /// Listens at `at`; accept on the returned queue.
    pub fn listen(&mut self, at: &Endpoint) -> io::Result<Qd> {
        let qd = self.queues.add(Queue::new(State::Listening));
        if let Err(e) = self.backend.listen(qd, at, &mut self.queues) {
            self.queues.remove(qd);
            return Err(e);
        }
        Ok(qd)
    }

    /// The next connection on listening queue `qd`.
    pub fn accept(&mut self, qd: Qd) -> QToken {
        self.token(qd, Op::Accept)
    }

    /// Sends `data` on `qd` (copied now); the token completes when the transport took it all.
    pub fn push(&mut self, qd: Qd, data: &[u8]) -> io::Result<QToken> {
        let Some(q) = self.queues.get_mut(qd) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no queue {}", qd.0),
            ));
        };
        q.outbox.extend_from_slice(data);
        q.pushed += data.len() as u64;
        let end = q.pushed;
        self.backend.kick(qd, &mut self.queues)?;
        Ok(self.token(qd, Op::Push { end, len: data.len() }))
    }

    /// Receives on `qd`; the token completes with what has arrived (or the end of it).
    pub fn pop(&mut self, qd: Qd) -> QToken {
        self.token(qd, Op::Pop)
    }

    /// Closes `qd`; operations still pending on it are dropped.
    pub fn close(&mut self, qd: Qd) {
        self.backend.close(qd);
        self.queues.remove(qd);
        self.ops.retain(|_, (q, _)| *q != qd);
    }

    /// The state of queue `qd`, if it exists.
    pub fn state(&self, qd: Qd) -> Option<&State> {
        self.queues.get(qd).map(|q| &q.state)
    }

    /// Waits up to `timeout` for any of `tokens` to complete; returns its index and outcome,
    /// or `None` if none completed in time. A token completes once and is then spent.
    pub fn wait_any(
        &mut self,
        tokens: &[QToken],
        timeout: Duration,
    ) -> io::Result<Option<(usize, Completion)>> {
        let deadline = now_ns().saturating_add(timeout.as_nanos() as u64);
        let mut last_look = false;
        loop {
            if let Some(i) = tokens.iter().position(|t| self.ready(*t)) {
                let c = self.complete(tokens[i]);
                return Ok(Some((i, c)));
            }
            if tokens.is_empty() || last_look {
                return Ok(None);
            }
            let now = now_ns();
            // Past the deadline the transport still gets one look (without waiting).
            last_look = now >= deadline;
            self.backend.progress(
                &mut self.queues,
                Duration::from_nanos(deadline.saturating_sub(now)),
            )?;
        }
    }

    fn ready(&self, token: QToken) -> bool {
        let Some((qd, op)) = self.ops.get(&token.0) else {
            return false;
        };
        let Some(q) = self.queues.get(*qd) else {
            return true; // closed meanwhile: completes as failed
        };
        let dead = !q.is_live();
        match op {
            Op::Connect => q.state != State::Connecting,
            Op::Accept => !q.backlog.is_empty() || dead,
            Op::Push { end, .. } => q.sent >= *end || dead,
            Op::Pop => !q.inbox.is_empty() || dead,
        }
    }

    fn complete(&mut self, token: QToken) -> Completion {
        let Some((qd, op)) = self.ops.remove(&token.0) else {
            return Completion {
                qd: Qd(u32::MAX),
                outcome: Outcome::Failed("unknown token".into()),
            };
        };
        let Some(q) = self.queues.get_mut(qd) else {
            return Completion {
                qd,
                outcome: Outcome::Failed("the queue was closed".into()),
            };
        };
        let failed = |q: &Queue| match &q.state {
            State::Failed(why) => Outcome::Failed(why.clone()),
            _ => Outcome::Closed,
        };
        let outcome = match op {
            Op::Connect => match &q.state {
                State::Failed(why) => Outcome::Failed(why.clone()),
                _ => Outcome::Connected,
            },
            Op::Accept => match q.backlog.pop_front() {
                Some(new) => Outcome::Accepted(new),
                None => failed(q),
            },
            Op::Push { end, len } if q.sent >= end => Outcome::Pushed(len),
            Op::Push { .. } => failed(q),
            Op::Pop if !q.inbox.is_empty() => Outcome::Popped(std::mem::take(&mut q.inbox)),
            Op::Pop => failed(q),
        };
        Completion { qd, outcome }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport that moves nothing by itself: the test plays the wire.
    #[derive(Default)]
    struct Wire {
        taken: Vec<u8>,
        take_per_kick: usize,
    }

    impl Backend for Wire {
        fn connect(&mut self, _: Qd, _: &Endpoint, _: &mut Queues) -> io::Result<()> {
            Ok(())
        }
        fn listen(&mut self, _: Qd, _: &Endpoint, _: &mut Queues) -> io::Result<()> {
            Ok(())
        }
        fn progress(&mut self, _: &mut Queues, _: Duration) -> io::Result<()> {
            Ok(())
        }
        fn kick(&mut self, qd: Qd, queues: &mut Queues) -> io::Result<()> {
            let q = queues.get_mut(qd).unwrap();
            let n = q.pending_out().len().min(self.take_per_kick);
            self.taken.extend_from_slice(&q.pending_out()[..n]);
            q.sent(n);
            Ok(())
        }
        fn close(&mut self, _: Qd) {}
    }

    fn libos(take_per_kick: usize) -> LibOs {
        LibOs::new(Box::new(Wire {
            taken: Vec::new(),
            take_per_kick,
        }))
    }

    #[test]
    fn tokens_complete_by_queue_state() {
        let mut os = libos(usize::MAX);
        let (qd, connect) = os.connect(&Endpoint::Shm("x".into())).unwrap();
        assert_eq!(os.wait_any(&[connect], Duration::ZERO).unwrap(), None);
        os.queues.get_mut(qd).unwrap().set_state(State::Open);
        let (i, c) = os.wait_any(&[connect], Duration::ZERO).unwrap().unwrap();
        assert_eq!((i, c.outcome), (0, Outcome::Connected));
        // A spent token never completes again.
        assert_eq!(os.wait_any(&[connect], Duration::ZERO).unwrap(), None);

        let pop = os.pop(qd);
        let push = os.push(qd, b"hello").unwrap();
        let (i, c) = os.wait_any(&[pop, push], Duration::ZERO).unwrap().unwrap();
        assert_eq!((i, c.outcome), (1, Outcome::Pushed(5)));
        os.queues.get_mut(qd).unwrap().deliver(b"ab");
        os.queues.get_mut(qd).unwrap().deliver(b"c");
        let (_, c) = os.wait_any(&[pop], Duration::ZERO).unwrap().unwrap();
        assert_eq!(c.outcome, Outcome::Popped(b"abc".to_vec()));
        let pop = os.pop(qd);
        os.queues.get_mut(qd).unwrap().set_state(State::PeerClosed);
        let (_, c) = os.wait_any(&[pop], Duration::ZERO).unwrap().unwrap();
        assert_eq!(c.outcome, Outcome::Closed);
    }

    #[test]
    fn a_push_completes_only_when_all_its_bytes_are_taken() {
        let mut os = libos(3);
        let (qd, _) = os.connect(&Endpoint::Shm("x".into())).unwrap();
        os.queues.get_mut(qd).unwrap().set_state(State::Open);
        let first = os.push(qd, b"12345").unwrap(); // kick takes 3
        assert_eq!(os.wait_any(&[first], Duration::ZERO).unwrap(), None);
        let second = os.push(qd, b"67").unwrap(); // kick takes 3 more: "456"
        let (_, c) = os.wait_any(&[second, first], Duration::ZERO).unwrap().unwrap();
        assert_eq!(c.outcome, Outcome::Pushed(5));
        assert_eq!(os.wait_any(&[second], Duration::ZERO).unwrap(), None);
        os.queues.get_mut(qd).unwrap().fail("reset");
        let (_, c) = os.wait_any(&[second], Duration::ZERO).unwrap().unwrap();
        assert_eq!(c.outcome, Outcome::Failed("reset".into()));
    }

    #[test]
    fn accept_hands_out_new_queues_and_close_drops_pending_tokens() {
        let mut os = libos(usize::MAX);
        let l = os.listen(&Endpoint::Shm("x".into())).unwrap();
        let accept = os.accept(l);
        let new = os.queues.add(Queue::new(State::Open));
        os.queues.accepted(l, new);
        let (_, c) = os.wait_any(&[accept], Duration::ZERO).unwrap().unwrap();
        assert_eq!(c.outcome, Outcome::Accepted(new));
        let pop = os.pop(new);
        os.close(new);
        assert_eq!(os.wait_any(&[pop], Duration::ZERO).unwrap(), None);
        assert!(os.push(new, b"x").is_err());
    }
}
