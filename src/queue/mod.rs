//! A queue API in the manner of a library OS (Demikernel's): one interface over any transport.
//!
//! A connection is a queue descriptor ([`Qd`]). `connect`, `accept`, `push` and `pop` start an
//! operation and return a token at once ([`QToken`]); [`LibOs::wait_next`] waits for the next
//! operation to complete and returns it with its [`Completion`] ([`LibOs::wait_any`] waits on
//! a few given tokens). Nothing in the caller's loop names the transport, so one client loop
//! drives kernel TCP ([`tcp`]), shared memory ([`shm`]) and a user-space TCP/IP stack on a TAP
//! device ([`smol`]) alike.
//!
//! The bookkeeping is here and shared: each queue has an inbox (bytes received, not yet
//! popped), an outbox (bytes pushed, not yet taken by the transport) and a state, and a
//! token completes when its queue's state says so. A backend only moves bytes between its
//! transport and those boxes ([`Backend::progress`]), through a [`QueueMut`] that lists the
//! queue as touched. What that buys, on a generator's hot path:
//!
//! - a wait looks only at the operations of touched queues, so it costs what completed, not
//!   what is outstanding (64 or 10,000 connections alike);
//! - tokens index a table directly, with a generation against reuse: no hashing;
//! - a pop hands over the inbox's buffer, and [`LibOs::recycle`] hands it back for a later
//!   pop: a loop that recycles allocates nothing per completion;
//! - a pop's completion says when its bytes arrived ([`Completion::at_ns`]), so a caller
//!   that handles a batch of completions times each by its arrival;
//! - a push goes straight to the transport when nothing waits before it
//!   ([`Backend::send_now`]), and [`LibOs::push_untracked`] spares a caller that always has
//!   a pop outstanding the token of every push.
//!
//! `push` copies the caller's bytes (the token completes once the transport has taken all
//! of them); `pop` hands over everything received so far as one buffer.

pub mod shm;
pub mod smol;
pub mod tcp;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::os::clock::now_ns;

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
    /// For a pop, when the transport delivered the last of its bytes (`crate::os::clock`'s ns):
    /// a caller timing replies need not depend on when it got round to this completion.
    /// 0 for other operations.
    pub at_ns: u64,
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

/// One queue's boxes and state, which backends fill and drain through a [`QueueMut`].
#[derive(Debug)]
pub struct Queue {
    pub state: State,
    inbox: Vec<u8>,
    /// When the last bytes in the inbox arrived.
    delivered_ns: u64,
    outbox: Vec<u8>,
    out_at: usize,
    pushed: u64,
    sent: u64,
    backlog: VecDeque<Qd>,
    /// Operations on this queue not yet seen complete.
    waiting: Vec<QToken>,
    /// Whether a push is among them: only then does the transport taking bytes matter.
    push_waits: bool,
    /// Listed in [`Queues::touched`] since the last look.
    touched: bool,
}

impl Queue {
    pub fn new(state: State) -> Queue {
        Queue {
            state,
            inbox: Vec::new(),
            delivered_ns: 0,
            outbox: Vec::new(),
            out_at: 0,
            pushed: 0,
            sent: 0,
            backlog: VecDeque::new(),
            waiting: Vec::new(),
            push_waits: false,
            touched: false,
        }
    }

    /// Bytes pushed and not yet taken by the transport.
    pub fn pending_out(&self) -> &[u8] {
        &self.outbox[self.out_at..]
    }

    pub fn is_live(&self) -> bool {
        matches!(self.state, State::Open | State::Connecting | State::Listening)
    }

    /// Whether `op` on this queue can complete now.
    fn can_complete(&self, op: &Op) -> bool {
        let dead = !self.is_live();
        match op {
            Op::Connect => self.state != State::Connecting,
            Op::Accept => !self.backlog.is_empty() || dead,
            Op::Push { end, .. } => self.sent >= *end || dead,
            Op::Pop => !self.inbox.is_empty() || dead,
        }
    }
}

/// A backend's hold on one queue. Every change through it lists the queue as touched, so
/// [`LibOs`] looks again at just the operations of queues that changed: a wait costs what
/// completed, not what is outstanding.
pub struct QueueMut<'a> {
    q: &'a mut Queue,
    qd: Qd,
    touched: &'a mut Vec<Qd>,
}

impl std::ops::Deref for QueueMut<'_> {
    type Target = Queue;
    fn deref(&self) -> &Queue {
        self.q
    }
}

impl QueueMut<'_> {
    fn touch(&mut self) {
        if !self.q.touched {
            self.q.touched = true;
            self.touched.push(self.qd);
        }
    }

    /// The transport took `n` bytes of [`Queue::pending_out`].
    pub fn sent(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let q = &mut *self.q;
        q.out_at += n;
        q.sent += n as u64;
        if q.out_at == q.outbox.len() {
            q.outbox.clear();
            q.out_at = 0;
        }
        // Only a waiting push can complete by it (a later one is judged as it is made).
        if self.q.push_waits {
            self.touch();
        }
    }

    /// Bytes arrived from the transport.
    pub fn deliver(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.q.inbox.extend_from_slice(data);
        self.q.delivered_ns = now_ns();
        if !self.q.waiting.is_empty() {
            self.touch();
        }
    }

    /// The transport's view changed: the state moves, unless the queue already failed.
    pub fn set_state(&mut self, state: State) {
        if !matches!(self.q.state, State::Failed(_)) && self.q.state != state {
            self.q.state = state;
            self.touch();
        }
    }

    pub fn fail(&mut self, why: impl Into<String>) {
        self.set_state(State::Failed(why.into()));
    }
}

/// Every queue of one [`LibOs`], indexed by descriptor.
#[derive(Debug, Default)]
pub struct Queues {
    slots: Vec<Option<Queue>>,
    /// Queues changed since the last look, each once.
    touched: Vec<Qd>,
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

    pub fn get_mut(&mut self, qd: Qd) -> Option<QueueMut<'_>> {
        let q = self.slots.get_mut(qd.0 as usize)?.as_mut()?;
        Some(QueueMut {
            q,
            qd,
            touched: &mut self.touched,
        })
    }

    pub fn get(&self, qd: Qd) -> Option<&Queue> {
        self.slots.get(qd.0 as usize)?.as_ref()
    }

    /// The queue itself, for the LibOs's own bookkeeping (no transport change to list).
    fn queue_mut(&mut self, qd: Qd) -> Option<&mut Queue> {
        self.slots.get_mut(qd.0 as usize)?.as_mut()
    }

    /// A listening queue has a new connection, `new` (already added).
    pub fn accepted(&mut self, listener: Qd, new: Qd) {
        if let Some(mut l) = self.get_mut(listener) {
            l.q.backlog.push_back(new);
            l.touch();
        }
    }

    fn remove(&mut self, qd: Qd) -> Option<Queue> {
        self.slots.get_mut(qd.0 as usize)?.take()
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
    /// Offers `data` to the transport at once, the queue's outbox being empty, so it need
    /// not be copied there first; returns how much it took. Taking nothing is always
    /// right (the push then goes through the outbox and [`Backend::kick`]).
    fn send_now(&mut self, _qd: Qd, _data: &[u8], _queues: &mut Queues) -> io::Result<usize> {
        Ok(0)
    }
}

enum Op {
    Connect,
    Accept,
    Push { end: u64, len: usize },
    Pop,
}

/// One entry of the token table: its generation tells a live token from a spent one that
/// used the same entry before.
struct TokenSlot {
    generation: u32,
    op: Option<(Qd, Op)>,
}

/// Receive buffers kept for reuse ([`LibOs::recycle`]): enough for one per connection of a
/// busy generator thread; more are dropped.
const SPARE_BUFFERS: usize = 1024;

/// The queue API over one backend.
pub struct LibOs {
    backend: Box<dyn Backend>,
    queues: Queues,
    /// Tokens index this table directly (no hashing); freed entries are reused.
    ops: Vec<TokenSlot>,
    free: Vec<u32>,
    /// Tokens seen able to complete, oldest first (a spent one is skipped).
    ready: VecDeque<QToken>,
    spare: Vec<Vec<u8>>,
    /// Waiting tokens looked at so far: what a wait costs, for the tests to hold it to.
    examined: u64,
}

impl QToken {
    fn new(index: u32, generation: u32) -> QToken {
        QToken(u64::from(generation) << 32 | u64::from(index))
    }

    fn index(self) -> usize {
        (self.0 & u64::from(u32::MAX)) as usize
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// A small number, unique among the tokens not yet completed and reused after: a
    /// caller's own table of what each token is for can be a vector indexed by it.
    pub fn key(self) -> usize {
        self.index()
    }
}

impl LibOs {
    pub fn new(backend: Box<dyn Backend>) -> LibOs {
        LibOs {
            backend,
            queues: Queues::default(),
            ops: Vec::new(),
            free: Vec::new(),
            ready: VecDeque::new(),
            spare: Vec::new(),
            examined: 0,
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
    pub fn smoltcp(options: &crate::os::tap::LinkOptions) -> anyhow::Result<LibOs> {
        Ok(LibOs::new(Box::new(smol::SmolBackend::new(options)?)))
    }

    fn token(&mut self, qd: Qd, op: Op) -> QToken {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.ops.push(TokenSlot {
                    generation: 0,
                    op: None,
                });
                self.ops.len() as u32 - 1
            }
        };
        let slot = &mut self.ops[index as usize];
        let token = QToken::new(index, slot.generation);
        match self.queues.queue_mut(qd) {
            Some(q) if !q.can_complete(&op) => {
                q.push_waits |= matches!(op, Op::Push { .. });
                q.waiting.push(token);
            }
            // Complete already, or on a queue closed meanwhile (completes as failed).
            _ => self.ready.push_back(token),
        }
        slot.op = Some((qd, op));
        token
    }

    /// The operation of a token not yet spent.
    fn op(&self, token: QToken) -> Option<&(Qd, Op)> {
        let slot = self.ops.get(token.index())?;
        if slot.generation != token.generation() {
            return None;
        }
        slot.op.as_ref()
    }

    /// Spends `token`: its entry is freed for reuse under the next generation.
    fn spend(&mut self, token: QToken) -> Option<(Qd, Op)> {
        self.op(token)?;
        let slot = &mut self.ops[token.index()];
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(token.index() as u32);
        slot.op.take()
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
        let end = self.enqueue(qd, data)?;
        // The token first: what the kick moves touches the queue, which readies it.
        let token = self.token(qd, Op::Push { end, len: data.len() });
        self.kick(qd)?;
        Ok(token)
    }

    /// Sends `data` on `qd` (copied now) without a token: for a caller that always has a
    /// pop outstanding on the queue, which learns of a failure from that pop. A loop pushing
    /// a request per message then keeps no bookkeeping per push at all.
    pub fn push_untracked(&mut self, qd: Qd, data: &[u8]) -> io::Result<()> {
        self.enqueue(qd, data)?;
        self.kick(qd)
    }

    /// Lets the transport take what waits in `qd`'s outbox, if anything does.
    fn kick(&mut self, qd: Qd) -> io::Result<()> {
        match self.queues.get(qd) {
            Some(q) if !q.pending_out().is_empty() => self.backend.kick(qd, &mut self.queues),
            _ => Ok(()),
        }
    }

    /// Hands `data` to the transport directly if nothing waits before it, and what it did
    /// not take to the outbox; returns the queue's push position after `data`.
    fn enqueue(&mut self, qd: Qd, data: &[u8]) -> io::Result<u64> {
        let no_queue = || io::Error::new(io::ErrorKind::NotFound, format!("no queue {}", qd.0));
        let q = self.queues.get(qd).ok_or_else(no_queue)?;
        let taken = if q.pending_out().is_empty() && q.state == State::Open {
            self.backend.send_now(qd, data, &mut self.queues)?
        } else {
            0
        };
        let mut q = self.queues.get_mut(qd).ok_or_else(no_queue)?;
        q.q.pushed += data.len() as u64;
        q.q.outbox.extend_from_slice(&data[taken..]);
        if taken > 0 {
            q.q.sent += taken as u64;
            if q.q.push_waits {
                q.touch();
            }
        }
        Ok(q.q.pushed)
    }

    /// Receives on `qd`; the token completes with what has arrived (or the end of it).
    pub fn pop(&mut self, qd: Qd) -> QToken {
        self.token(qd, Op::Pop)
    }

    /// Hands back the buffer of an [`Outcome::Popped`] once read: the next pop's bytes land
    /// in it, so a loop that recycles allocates nothing per completion.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && buf.capacity() > 0 {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Closes `qd`; operations still pending on it are dropped.
    pub fn close(&mut self, qd: Qd) {
        self.backend.close(qd);
        if let Some(q) = self.queues.remove(qd) {
            for token in q.waiting {
                self.spend(token);
            }
        }
        let ready = std::mem::take(&mut self.ready);
        for token in ready {
            if self.op(token).is_some_and(|(q, _)| *q == qd) {
                self.spend(token);
            } else {
                self.ready.push_back(token);
            }
        }
    }

    /// The state of queue `qd`, if it exists.
    pub fn state(&self, qd: Qd) -> Option<&State> {
        self.queues.get(qd).map(|q| &q.state)
    }

    /// Waits up to `timeout` for any of `tokens` to complete; returns its index and outcome,
    /// or `None` if none completed in time. A token completes once and is then spent.
    ///
    /// This looks at each of `tokens` on every turn: for a few. A loop over many
    /// connections waits with [`LibOs::wait_next`], whose cost is what completed.
    pub fn wait_any(
        &mut self,
        tokens: &[QToken],
        timeout: Duration,
    ) -> io::Result<Option<(usize, Completion)>> {
        if tokens.is_empty() {
            return Ok(None);
        }
        self.wait_until(timeout, |os| {
            let i = tokens.iter().position(|t| os.can_complete(*t))?;
            Some((i, os.complete(tokens[i])))
        })
    }

    /// Waits up to `timeout` for any outstanding token to complete and returns it with its
    /// outcome, oldest first; `None` if none completed in time. Only the queues the
    /// transport changed are looked at, and only their operations.
    pub fn wait_next(&mut self, timeout: Duration) -> io::Result<Option<(QToken, Completion)>> {
        self.wait_until(timeout, LibOs::take_ready)
    }

    /// A completion already known, oldest first, without asking the transport for more:
    /// for draining what one wait brought before the caller's own work comes round again.
    pub fn next_ready(&mut self) -> Option<(QToken, Completion)> {
        self.collect_ready();
        self.take_ready()
    }

    /// The oldest token of `ready` that can still complete, completed.
    fn take_ready(&mut self) -> Option<(QToken, Completion)> {
        while let Some(token) = self.ready.pop_front() {
            match self.op(token) {
                None => continue, // spent by wait_any meanwhile
                Some(_) if self.can_complete(token) => return Some((token, self.complete(token))),
                // Taken from under it (two pops of one queue): it waits again.
                Some((qd, op)) => {
                    let (qd, push) = (*qd, matches!(op, Op::Push { .. }));
                    if let Some(q) = self.queues.queue_mut(qd) {
                        q.push_waits |= push;
                        q.waiting.push(token);
                    }
                }
            }
        }
        None
    }

    /// The loop of both waits: look, else let the transport progress and look again, until
    /// `look` finds something or the deadline passes (after which the transport still gets
    /// one look, without waiting).
    fn wait_until<T>(
        &mut self,
        timeout: Duration,
        mut look: impl FnMut(&mut LibOs) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let mut deadline = None;
        let mut last_look = false;
        loop {
            self.collect_ready();
            if let Some(found) = look(self) {
                return Ok(Some(found));
            }
            if last_look || self.ops.len() == self.free.len() {
                return Ok(None);
            }
            // The clock is read only when there is a wait to time (not for a single look).
            let left = if timeout.is_zero() {
                last_look = true;
                Duration::ZERO
            } else {
                let now = now_ns();
                let deadline = *deadline.get_or_insert(now.saturating_add(timeout.as_nanos() as u64));
                last_look = now >= deadline;
                Duration::from_nanos(deadline.saturating_sub(now))
            };
            self.backend.progress(&mut self.queues, left)?;
        }
    }

    /// The operations of every touched queue that can now complete move to `ready`.
    fn collect_ready(&mut self) {
        let LibOs {
            queues,
            ops,
            ready,
            examined,
            ..
        } = self;
        // Fields apart: the touched list drains while the slots change.
        for qd in queues.touched.drain(..) {
            let Some(q) = queues.slots.get_mut(qd.0 as usize).and_then(Option::as_mut) else {
                continue;
            };
            q.touched = false;
            let mut push_left = false;
            let mut i = 0;
            while i < q.waiting.len() {
                let token = q.waiting[i];
                *examined += 1;
                let slot = &ops[token.index()];
                match &slot.op {
                    Some((_, op)) if slot.generation == token.generation() => {
                        if q.can_complete(op) {
                            ready.push_back(token);
                            q.waiting.swap_remove(i);
                        } else {
                            push_left |= matches!(op, Op::Push { .. });
                            i += 1;
                        }
                    }
                    _ => {
                        q.waiting.swap_remove(i); // spent elsewhere
                    }
                }
            }
            q.push_waits = push_left;
        }
    }

    fn can_complete(&self, token: QToken) -> bool {
        let Some((qd, op)) = self.op(token) else {
            return false;
        };
        match self.queues.get(*qd) {
            Some(q) => q.can_complete(op),
            None => true, // closed meanwhile: completes as failed
        }
    }

    fn complete(&mut self, token: QToken) -> Completion {
        let Some((qd, op)) = self.spend(token) else {
            return Completion {
                qd: Qd(u32::MAX),
                outcome: Outcome::Failed("unknown token".into()),
                at_ns: 0,
            };
        };
        let Some(q) = self.queues.queue_mut(qd) else {
            return Completion {
                qd,
                outcome: Outcome::Failed("the queue was closed".into()),
                at_ns: 0,
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
            Op::Pop if !q.inbox.is_empty() => {
                let fresh = self.spare.pop().unwrap_or_default();
                Outcome::Popped(std::mem::replace(&mut q.inbox, fresh))
            }
            Op::Pop => failed(q),
        };
        let at_ns = match outcome {
            Outcome::Popped(_) => q.delivered_ns,
            _ => 0,
        };
        Completion { qd, outcome, at_ns }
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
        /// Takes every push at once in `send_now` (and then its outbox must stay empty).
        takes_at_once: bool,
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
            assert!(!self.takes_at_once, "nothing should wait in the outbox");
            let mut q = queues.get_mut(qd).unwrap();
            let n = q.pending_out().len().min(self.take_per_kick);
            // The bytes of the last kick only: a long test holds no growing copy.
            self.taken.clear();
            self.taken.extend_from_slice(&q.pending_out()[..n]);
            q.sent(n);
            Ok(())
        }
        fn close(&mut self, _: Qd) {}
        fn send_now(&mut self, _: Qd, data: &[u8], _: &mut Queues) -> io::Result<usize> {
            if !self.takes_at_once {
                return Ok(0);
            }
            self.taken.clear();
            self.taken.extend_from_slice(data);
            Ok(data.len())
        }
    }

    fn libos(take_per_kick: usize) -> LibOs {
        LibOs::new(Box::new(Wire {
            take_per_kick,
            ..Wire::default()
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

    /// An open queue of a fresh `Wire` LibOs.
    fn open_queue(os: &mut LibOs) -> Qd {
        let (qd, connect) = os.connect(&Endpoint::Shm("x".into())).unwrap();
        os.queues.get_mut(qd).unwrap().set_state(State::Open);
        os.wait_any(&[connect], Duration::ZERO).unwrap().unwrap();
        qd
    }

    #[test]
    fn wait_next_hands_out_what_completed_once_oldest_first() {
        let mut os = libos(usize::MAX);
        let a = open_queue(&mut os);
        let b = open_queue(&mut os);
        let pop_a = os.pop(a);
        let pop_b = os.pop(b);
        assert_eq!(os.wait_next(Duration::ZERO).unwrap(), None);
        os.queues.get_mut(b).unwrap().deliver(b"to b");
        os.queues.get_mut(a).unwrap().deliver(b"to a");
        let (t, c) = os.wait_next(Duration::ZERO).unwrap().unwrap();
        assert_eq!(
            (t, c.qd, c.outcome),
            (pop_b, b, Outcome::Popped(b"to b".to_vec()))
        );
        let (t, c) = os.wait_next(Duration::ZERO).unwrap().unwrap();
        assert_eq!(
            (t, c.qd, c.outcome),
            (pop_a, a, Outcome::Popped(b"to a".to_vec()))
        );
        assert_eq!(os.wait_next(Duration::ZERO).unwrap(), None);
        // A token spent by wait_any is not handed out again by wait_next.
        let pop = os.pop(a);
        os.queues.get_mut(a).unwrap().deliver(b"x");
        assert!(os.wait_any(&[pop], Duration::ZERO).unwrap().is_some());
        assert_eq!(os.wait_next(Duration::ZERO).unwrap(), None);
    }

    #[test]
    fn a_second_pop_of_one_queue_waits_for_new_bytes() {
        let mut os = libos(usize::MAX);
        let q = open_queue(&mut os);
        let first = os.pop(q);
        let second = os.pop(q);
        os.queues.get_mut(q).unwrap().deliver(b"one");
        let (t, c) = os.wait_next(Duration::ZERO).unwrap().unwrap();
        assert_eq!((t, c.outcome), (first, Outcome::Popped(b"one".to_vec())));
        assert_eq!(os.wait_next(Duration::ZERO).unwrap(), None);
        os.queues.get_mut(q).unwrap().deliver(b"two");
        let (t, c) = os.wait_next(Duration::ZERO).unwrap().unwrap();
        assert_eq!((t, c.outcome), (second, Outcome::Popped(b"two".to_vec())));
    }

    #[test]
    fn a_loop_that_recycles_allocates_nothing_per_completion() {
        let mut os = libos(usize::MAX);
        let qds: Vec<Qd> = (0..8).map(|_| open_queue(&mut os)).collect();
        let round_trip = |os: &mut LibOs, round: u8| {
            for &q in &qds {
                os.pop(q);
                os.push_untracked(q, &[round; 100]).unwrap();
                os.queues.get_mut(q).unwrap().deliver(&[round; 100]);
            }
            while let Some((_, c)) = os.wait_next(Duration::ZERO).unwrap() {
                let Outcome::Popped(buf) = c.outcome else {
                    panic!("only pops are pending")
                };
                assert_eq!(buf, [round; 100]);
                os.recycle(buf);
            }
        };
        // The first rounds size the token table, the ready list and the buffers.
        for round in 0..4 {
            round_trip(&mut os, round);
        }
        let before = crate::test_alloc::allocations();
        for round in 4..100 {
            round_trip(&mut os, round);
        }
        assert_eq!(crate::test_alloc::allocations() - before, 0);
    }

    #[test]
    fn a_wait_looks_at_the_changed_queues_only() {
        let mut os = libos(usize::MAX);
        let qds: Vec<Qd> = (0..1000).map(|_| open_queue(&mut os)).collect();
        for &q in &qds {
            os.pop(q);
        }
        let before = os.examined;
        for &q in qds.iter().step_by(100) {
            os.queues.get_mut(q).unwrap().deliver(b"x");
        }
        let mut completed = 0;
        while os.wait_next(Duration::ZERO).unwrap().is_some() {
            completed += 1;
        }
        assert_eq!(completed, 10);
        assert_eq!(
            os.examined - before,
            10,
            "one look per changed queue's pop, not 1,000"
        );
    }

    #[test]
    fn a_push_left_waiting_completes_through_wait_next_when_the_rest_is_taken() {
        let mut os = libos(3);
        let q = open_queue(&mut os);
        let pop = os.pop(q);
        let push = os.push(q, b"12345").unwrap(); // the kick takes 3
        assert_eq!(os.wait_next(Duration::ZERO).unwrap(), None);
        os.queues.get_mut(q).unwrap().sent(2); // the transport takes the rest later
        let (t, c) = os.wait_next(Duration::ZERO).unwrap().unwrap();
        assert_eq!((t, c.outcome), (push, Outcome::Pushed(5)));
        // Bytes taken with no push waiting disturb nothing; the pop still waits for bytes.
        os.push_untracked(q, b"ab").unwrap();
        assert_eq!(os.wait_next(Duration::ZERO).unwrap(), None);
        os.queues.get_mut(q).unwrap().deliver(b"reply");
        let (t, _) = os.wait_next(Duration::ZERO).unwrap().unwrap();
        assert_eq!(t, pop);
    }

    #[test]
    fn a_pop_is_stamped_with_its_last_delivery_and_other_completions_are_not() {
        let mut os = libos(usize::MAX);
        let q = open_queue(&mut os);
        let pop = os.pop(q);
        os.queues.get_mut(q).unwrap().deliver(b"first half ");
        let between = now_ns();
        os.queues.get_mut(q).unwrap().deliver(b"second half");
        let after = now_ns();
        let (t, c) = os.wait_next(Duration::ZERO).unwrap().unwrap();
        assert_eq!(t, pop);
        assert!(
            c.at_ns >= between && c.at_ns <= after,
            "{} not in [{between}, {after}]",
            c.at_ns
        );
        let push = os.push(q, b"x").unwrap();
        let (t, c) = os.wait_next(Duration::ZERO).unwrap().unwrap();
        assert_eq!((t, c.at_ns), (push, 0));
    }

    #[test]
    fn an_untracked_push_fails_through_the_pending_pop_and_close_drops_ready_tokens() {
        let mut os = libos(2);
        let q = open_queue(&mut os);
        let pop = os.pop(q);
        os.push_untracked(q, b"abc").unwrap();
        assert_eq!(
            os.wait_next(Duration::ZERO).unwrap(),
            None,
            "a push without a token completes nothing"
        );
        os.queues.get_mut(q).unwrap().fail("reset");
        let (t, c) = os.wait_next(Duration::ZERO).unwrap().unwrap();
        assert_eq!((t, c.outcome), (pop, Outcome::Failed("reset".into())));

        let q = open_queue(&mut os);
        os.pop(q);
        os.queues.get_mut(q).unwrap().deliver(b"unread");
        os.close(q);
        assert_eq!(os.wait_next(Duration::ZERO).unwrap(), None);
    }

    #[test]
    fn a_push_the_transport_takes_at_once_completes_without_the_outbox() {
        let mut os = LibOs::new(Box::new(Wire {
            takes_at_once: true,
            ..Wire::default()
        }));
        let q = open_queue(&mut os);
        let push = os.push(q, b"hello").unwrap();
        assert!(os.queues.get(q).unwrap().pending_out().is_empty());
        let (t, c) = os.wait_next(Duration::ZERO).unwrap().unwrap();
        assert_eq!((t, c.outcome), (push, Outcome::Pushed(5)));
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever the order of deliveries over several queues, wait_next hands each
        /// queue's bytes over in order, each once, and nothing else.
        #[test]
        fn wait_next_loses_and_invents_nothing(
            deliveries in proptest::collection::vec((0usize..4, proptest::collection::vec(any::<u8>(), 1..8)), 0..40),
            looks in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let mut os = libos(usize::MAX);
            let qds: Vec<Qd> = (0..4).map(|_| open_queue(&mut os)).collect();
            let mut popping: Vec<QToken> = qds.iter().map(|&q| os.pop(q)).collect();
            let mut got = vec![Vec::new(); 4];
            let mut sent = vec![Vec::new(); 4];
            let drain = |os: &mut LibOs, popping: &mut Vec<QToken>, got: &mut Vec<Vec<u8>>| {
                while let Some((t, c)) = os.wait_next(Duration::ZERO).unwrap() {
                    let i = qds.iter().position(|&q| q == c.qd).unwrap();
                    assert_eq!(t, popping[i]);
                    let Outcome::Popped(data) = c.outcome else { panic!("only pops are pending") };
                    got[i].extend_from_slice(&data);
                    os.recycle(data);
                    popping[i] = os.pop(c.qd);
                }
            };
            for (k, (i, bytes)) in deliveries.iter().enumerate() {
                os.queues.get_mut(qds[*i]).unwrap().deliver(bytes);
                sent[*i].extend_from_slice(bytes);
                if looks[k] {
                    drain(&mut os, &mut popping, &mut got);
                }
            }
            drain(&mut os, &mut popping, &mut got);
            prop_assert_eq!(got, sent);
        }
    }
}
