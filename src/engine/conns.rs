//! Keeping track of connections, whatever the I/O model: the slab a loop finds them in by
//! token, the registry through which shutdown reaches every socket, and the spare descriptor
//! that lets a server refuse a connection cleanly when it has run out of descriptors.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::{out_of_fds_message, ConnError, EngineCtx, ServerStats};
use crate::sansio::session::ServerSession;

/// A connection's index in its loop.
pub type Token = usize;

/// Values by token, tokens reused, every insertion numbered (its generation) so that work
/// meant for an earlier occupant of a token can be told apart.
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Option<(u64, T)>>,
    free: Vec<Token>,
    next_generation: u64,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            next_generation: 0,
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Stores `value`; returns its token and generation.
    pub fn insert(&mut self, value: T) -> (Token, u64) {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.len += 1;
        let token = match self.free.pop() {
            Some(t) => {
                self.slots[t] = Some((generation, value));
                t
            }
            None => {
                self.slots.push(Some((generation, value)));
                self.slots.len() - 1
            }
        };
        (token, generation)
    }

    pub fn remove(&mut self, t: Token) -> Option<T> {
        let (_, value) = self.slots.get_mut(t)?.take()?;
        self.free.push(t);
        self.len -= 1;
        Some(value)
    }

    pub fn get(&self, t: Token) -> Option<&T> {
        self.slots.get(t)?.as_ref().map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, t: Token) -> Option<&mut T> {
        self.slots.get_mut(t)?.as_mut().map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every value with its token.
    pub fn iter(&self) -> impl Iterator<Item = (Token, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(t, c)| c.as_ref().map(|(_, c)| (t, c)))
    }

    /// Every value with its token, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Token, &mut T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(t, c)| c.as_mut().map(|(_, c)| (t, c)))
    }

    /// Every token in use.
    pub fn tokens(&self) -> Vec<Token> {
        self.iter().map(|(t, _)| t).collect()
    }
}

/// A descriptor held in reserve. Out of descriptors, a listener's queue would otherwise wake
/// its loop again and again with a connection it cannot take; with the reserve released for
/// a moment, the loop accepts that connection and closes it, and the peer sees a clean close.
#[derive(Debug)]
pub struct FdReserve {
    spare: Option<OwnedFd>,
    warned: bool,
}

impl Default for FdReserve {
    fn default() -> Self {
        FdReserve {
            spare: open_spare(),
            warned: false,
        }
    }
}

impl FdReserve {
    /// Called when accept failed with EMFILE or ENFILE: says so once, then refuses one waiting
    /// connection. Returns whether one was refused. At the limit, accept fails even when
    /// nobody is waiting (the kernel takes the descriptor before it looks at the queue), so
    /// "nothing refused" means: stop accepting until the listener is readable again.
    /// The listener must be non-blocking.
    pub fn refuse_one(&mut self, listener: &TcpListener, stats: &ServerStats, open: usize) -> bool {
        if !self.warned {
            self.warned = true;
            eprintln!("iolab: {}; refusing new connections", out_of_fds_message(open));
        }
        self.spare = None;
        let refused = listener.accept().is_ok();
        self.spare = open_spare();
        if refused {
            ServerStats::bump(&stats.accept_errors);
        }
        refused && self.spare.is_some()
    }
}

fn open_spare() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

/// Whether an accept error means "out of descriptors".
pub fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Open connections' sockets by id, for engines whose connections live where the acceptor
/// cannot reach them (their own threads, or tasks): shutdown half-closes them from here. A
/// connection removes itself *before* its socket closes, so a descriptor found here is never
/// a reused one.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<(u64, HashMap<u64, RawFd>)>,
}

impl Registry {
    /// Adds an open socket; returns the id to remove it by.
    pub fn add(&self, fd: RawFd) -> u64 {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (next, map) = &mut *guard;
        *next += 1;
        map.insert(*next, fd);
        *next
    }

    /// Removes a socket; call it before closing the socket.
    pub fn remove(&self, id: u64) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.1.remove(&id);
    }

    /// `shutdown(how)` on every registered socket: `SHUT_RD` to start a graceful drain (the
    /// peer's buffered requests are still read, then end of file), `SHUT_RDWR` to cut off.
    pub fn shutdown_all(&self, how: libc::c_int) {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for &fd in guard.1.values() {
            // SAFETY: the registry only holds descriptors of sockets still open (see above).
            unsafe { libc::shutdown(fd, how) };
        }
    }
}

/// The connection tasks of one single-threaded async loop (`tokio`, `monoio`): their sockets,
/// for shutdown to half-close, and a way to wait until the last one has finished.
#[derive(Debug, Clone, Default)]
pub struct TaskTracker {
    inner: Rc<RefCell<TrackerInner>>,
}

#[derive(Debug, Default)]
struct TrackerInner {
    next: u64,
    fds: HashMap<u64, RawFd>,
    idle: Option<Waker>,
}

/// Removes its task's socket from the tracker when dropped. Declare it *after* the socket,
/// so it is dropped first and the tracker never holds a closed (and perhaps reused) descriptor.
#[derive(Debug)]
pub struct Tracked {
    tracker: TaskTracker,
    id: u64,
}

impl TaskTracker {
    pub fn track(&self, fd: RawFd) -> Tracked {
        let mut inner = self.inner.borrow_mut();
        inner.next += 1;
        let id = inner.next;
        inner.fds.insert(id, fd);
        Tracked {
            tracker: self.clone(),
            id,
        }
    }

    /// How many connection tasks are running.
    pub fn open(&self) -> usize {
        self.inner.borrow().fds.len()
    }

    /// `shutdown(how)` on every tracked socket (see [`Registry::shutdown_all`]).
    pub fn shutdown_all(&self, how: libc::c_int) {
        for &fd in self.inner.borrow().fds.values() {
            // SAFETY: a task's socket leaves the tracker before it closes (see `Tracked`).
            unsafe { libc::shutdown(fd, how) };
        }
    }

    /// Resolves once no task is tracked.
    pub fn all_done(&self) -> AllDone<'_> {
        AllDone(self)
    }

    /// The graceful drain of an async loop that has stopped accepting: half-close every
    /// socket for reading (buffered requests are still read and answered, then each read sees
    /// end of file), wait up to `drain_timeout`, then cut off whoever is still writing and wait
    /// a second more. `within(d, f)` is the runtime's timeout: true if `f` finished within `d`.
    pub async fn drain<'a, F>(&'a self, ctx: &EngineCtx, within: impl Fn(Duration, AllDone<'a>) -> F)
    where
        F: Future<Output = bool>,
    {
        self.shutdown_all(libc::SHUT_RD);
        let mut drain = super::Drain::begin(ctx);
        if within(drain.timeout(), self.all_done()).await {
            return;
        }
        // Each task owns its session: the cut-off reaches it through its socket.
        drain.cut_off(self.open());
        self.shutdown_all(libc::SHUT_RDWR);
        within(Duration::from_secs(1), self.all_done()).await;
    }
}

/// The frame of one connection task, whatever the runtime: its socket tracked for shutdown,
/// one session, and the outcome accounted when `serve` returns. The caller owns the socket
/// and drops it after this returns, so the tracker never holds a closed descriptor.
pub async fn connection_task(
    ctx: &EngineCtx,
    tracker: &TaskTracker,
    fd: RawFd,
    peer: SocketAddr,
    set_up: std::io::Result<()>,
    serve: impl AsyncFnOnce(&mut ServerSession) -> Result<(), ConnError>,
) {
    let _tracked = tracker.track(fd);
    let mut session = ctx.new_session();
    let result = match set_up {
        Ok(()) => serve(&mut session).await,
        Err(e) => Err(e.into()),
    };
    ctx.connection_closed(peer, result, session.counters());
}

/// See [`TaskTracker::all_done`].
#[derive(Debug)]
pub struct AllDone<'a>(&'a TaskTracker);

impl Future for AllDone<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.0.inner.borrow_mut();
        if inner.fds.is_empty() {
            Poll::Ready(())
        } else {
            inner.idle = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// What an async loop does when accept fails: the way servers on tokio or monoio do it (hyper,
/// axum): out of descriptors, say so once and back off briefly; otherwise count and log.
#[derive(Debug, Default)]
pub struct AcceptFailures {
    warned_fd_limit: bool,
}

impl AcceptFailures {
    /// Returns how long to back off before accepting again, if at all.
    pub fn failed(&mut self, e: &std::io::Error, stats: &ServerStats, open: usize) -> Option<Duration> {
        if out_of_fds(e) {
            if !std::mem::replace(&mut self.warned_fd_limit, true) {
                eprintln!("iolab: {}", out_of_fds_message(open));
            }
            return Some(Duration::from_millis(10));
        }
        ServerStats::bump(&stats.accept_errors);
        eprintln!("iolab: accept failed: {e}");
        None
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut inner = self.tracker.inner.borrow_mut();
        inner.fds.remove(&self.id);
        if inner.fds.is_empty() {
            if let Some(w) = inner.idle.take() {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_reuses_tokens_with_new_generations() {
        let mut s = Slab::default();
        let (a, ga) = s.insert("a");
        let (b, _) = s.insert("b");
        assert_ne!(a, b);
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None);
        let (c, gc) = s.insert("c");
        assert_eq!(c, a, "a freed token is reused");
        assert_ne!(gc, ga);
        assert_eq!(s.get_mut(c), Some(&mut "c"));
        assert_eq!(s.len(), 2);
        assert_eq!(s.tokens(), vec![a, b]);
    }

    #[test]
    fn registry_forgets_removed_sockets() {
        let r = Registry::default();
        let x = r.add(100);
        let y = r.add(101);
        assert_ne!(x, y);
        r.remove(x);
        r.remove(y);
        assert!(r.inner.lock().unwrap().1.is_empty());
    }
}
