//! Engines: one I/O model each, all driving the same [`ServerSession`].
//!
//! An engine decides how a server waits, reads, writes, accepts and schedules; nothing else.
//! This module holds what every engine needs and none of them should write again: the
//! engine registry, listener set-up, the shutdown signal, server-wide counters, CPU pinning
//! and the file-descriptor limit. Engines import this module and the session core, never
//! each other.
//!
//! Every engine is a row of [`ENGINES`]: its name, its model, how it scales. The README's
//! table, `iolab serve --help` and [`EngineKind::ALL`] come from that one list, and each
//! engine file has one face, [`Engine::start`] with that engine's own typed options, that
//! [`start`] calls through an exhaustive match on [`EngineOptions`].
//!
//! Event engines (`select`, `poll`, `epoll`, `uring`, `tokio`, `monoio`) scale out share-nothing: `--threads N` runs N
//! independent loops, each with its own SO_REUSEPORT listener and pinned to its own CPU, and a
//! connection never leaves the loop that accepted it.

mod blocking;
mod conns;
mod epoll;
mod iovec;
mod monoio_engine;
mod nonblocking;
mod poll;
mod pool;
mod select;
mod shm;
pub use shm::Spin as ShmSpin;
mod threads;
mod tokio_engine;
mod uring;
pub mod userspace;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::os::cpu::{pin_current_thread, raise_fd_limit};
use crate::os::sys::EventFd;
use crate::sansio::budget::MemoryBudget;
pub(crate) use crate::sansio::session::Next;
use crate::sansio::session::{ServerSession, SessionConfig, SessionCounters, SessionError, Verdict};

/// The engines this build has (their names, models and scaling are in [`ENGINES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// Thread per connection; blocking read/write, one chunk per syscall.
    Threads,
    /// Thread per connection; blocking readv/writev, header and payload gathered in one call.
    Iovec,
    /// One thread, select(2); at most FD_SETSIZE (1024) descriptors.
    Select,
    /// One thread, poll(2).
    Poll,
    /// One thread, epoll; see --epoll-mode.
    Epoll,
    /// An epoll I/O thread plus --workers threads that run the requests.
    Pool,
    /// One io_uring per loop: multishot accept and recv, batched vectored sends.
    Uring,
    /// Baseline: tokio's current-thread runtime per loop, one task per connection.
    Tokio,
    /// Baseline: monoio's io_uring runtime per loop, one task per connection.
    Monoio,
    /// No sockets: clients attach to a shared-memory segment (--shm NAME) and exchange frames
    /// through a pair of lock-free rings per connection, polled by one thread.
    Shm,
    /// A user-space TCP/IP stack (smoltcp) per thread, each on one queue of a TAP device
    /// (--tap, --tap-ip) in a network namespace (--netns); clients use plain kernel TCP.
    Userspace,
}

/// How an engine uses threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scaling {
    /// A thread per connection (or a fixed pool): `--threads` does not apply.
    OwnThreads,
    /// Share-nothing event loops: `--threads N` runs N, each with its own listener.
    Loops,
}

/// One engine's row: everything a person or a program needs to know to pick it.
#[derive(Debug, Clone, Copy)]
pub struct EngineInfo {
    pub kind: EngineKind,
    /// Its command-line name.
    pub name: &'static str,
    /// Its I/O model in a sentence: the README's table and `--help` print it.
    pub model: &'static str,
    pub scaling: Scaling,
    /// Reached through kernel TCP sockets (all but `shm` and `userspace`).
    pub kernel_tcp: bool,
}

/// Every engine, in the order the lab lists them.
pub const ENGINES: [EngineInfo; 11] = {
    use EngineKind::*;
    use Scaling::*;
    const fn row(
        kind: EngineKind,
        name: &'static str,
        model: &'static str,
        scaling: Scaling,
        kernel_tcp: bool,
    ) -> EngineInfo {
        EngineInfo {
            kind,
            name,
            model,
            scaling,
            kernel_tcp,
        }
    }
    [
        row(Threads, "threads", "thread per connection; blocking `read` into one buffer, one `write` per chunk", OwnThreads, true),
        row(Iovec, "iovec", "thread per connection; `readv` into 16 chunk buffers, `writev` of header + payload slices with no copy", OwnThreads, true),
        row(Select, "select", "one thread, `select(2)`: bitmaps rebuilt and scanned every turn; refuses descriptors ≥ FD_SETSIZE (1024)", Loops, true),
        row(Poll, "poll", "one thread, `poll(2)`: an array rebuilt and scanned every turn, no descriptor limit", Loops, true),
        row(Epoll, "epoll", "one thread, epoll; `--epoll-mode edge` (default: register once, read until EAGAIN) or `level` (interest kept exact)", Loops, true),
        row(Pool, "pool", "an epoll I/O thread plus `--workers N` threads running the requests; replies re-ordered per connection", OwnThreads, true),
        row(Uring, "uring", "one io_uring per loop: multishot accept, multishot recv into a provided-buffer ring, every ready reply sent (`send`/`sendmsg` of the session's slices, no copy) in one submit", Loops, true),
        row(Tokio, "tokio", "baseline: a tokio current-thread runtime per loop, a task per connection, `read`/`write_vectored`", Loops, true),
        row(Monoio, "monoio", "baseline: monoio's io_uring runtime per loop, a task per connection, owned buffers", Loops, true),
        row(Shm, "shm", "no sockets: a shared-memory segment of connection slots, a pair of lock-free rings each, one polling thread (`--shm NAME`; the README's \"Shared memory\")", OwnThreads, false),
        row(Userspace, "userspace", "no kernel sockets on the server: smoltcp per thread, each on one queue of a multi-queue TAP device, in a network namespace (`--netns`, `--tap`, `--tap-ip`; the README's \"User-space TCP/IP\")", Loops, false),
    ]
};

/// The kinds of `ENGINES` in order, all of them or only those with kernel TCP (a const fn:
/// the lists below are computed from the table, never written twice).
const fn kinds<const N: usize>(kernel_tcp_only: bool) -> [EngineKind; N] {
    let mut out = [EngineKind::Threads; N];
    let (mut i, mut n) = (0, 0);
    while i < ENGINES.len() {
        if !kernel_tcp_only || ENGINES[i].kernel_tcp {
            out[n] = ENGINES[i].kind;
            n += 1;
        }
        i += 1;
    }
    assert!(n == N, "the list's length is not the table's count");
    out
}

impl EngineKind {
    /// Every engine.
    pub const ALL: [EngineKind; 11] = kinds(false);
    /// The engines a client reaches with kernel TCP at a loopback address (all but `shm` and
    /// `userspace`): what the HTTP suites and the kernel-TCP cases iterate.
    pub const KERNEL_TCP: [EngineKind; 9] = kinds(true);

    pub fn info(self) -> &'static EngineInfo {
        // Every kind has its row (a test checks it), so the fallback is never taken.
        ENGINES.iter().find(|e| e.kind == self).unwrap_or(&ENGINES[0])
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Engines that run share-nothing event loops and so take `--threads N`.
    pub fn is_event_loop(self) -> bool {
        self.info().scaling == Scaling::Loops
    }
}

/// The command line's names and help come from [`ENGINES`].
impl clap::ValueEnum for EngineKind {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let info = self.info();
        Some(clap::builder::PossibleValue::new(info.name).help(info.model))
    }
}

/// How epoll reports readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EpollMode {
    /// Reported while ready; interest kept exact with epoll_ctl.
    Level,
    /// Reported when it becomes ready; interest registered once.
    Edge,
}

/// How the `uring` engine receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecvMode {
    /// Multishot recv with a provided-buffer ring where the kernel has it (≥ 6.0), else single.
    Auto,
    /// Multishot recv into a provided-buffer ring shared by the loop's connections.
    Multishot,
    /// One recv at a time into a buffer per connection (what kernels before 6.0 get).
    Single,
}

/// Options of the `uring` engine.
#[derive(Debug, Clone)]
pub struct UringOptions {
    pub ring_entries: u32,
    pub sqpoll: bool,
    pub sqpoll_idle_ms: u32,
    /// Replies of at least this many bytes go out with SEND_ZC.
    pub zero_copy_threshold: Option<usize>,
    pub register_files: bool,
    pub recv: RecvMode,
    /// Buffers in the provided-buffer ring (a power of two).
    pub recv_buffers: u16,
    pub recv_buffer_size: usize,
}

impl UringOptions {
    /// Fails, with the reason, where a ring with these options cannot be built (`uring` and
    /// `monoio` ask before they listen).
    pub fn preflight(&self) -> anyhow::Result<()> {
        crate::os::uring::setup::try_ring(self.ring_entries, self.sqpoll.then_some(self.sqpoll_idle_ms))
    }
}

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            ring_entries: 256,
            sqpoll: false,
            sqpoll_idle_ms: 1000,
            zero_copy_threshold: None,
            register_files: false,
            recv: RecvMode::Auto,
            recv_buffers: 1024,
            recv_buffer_size: 16 * 1024,
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// The one face every engine shows the registry: start with the server's configuration and
/// this engine's own options. [`start`] calls it for all eleven through an exhaustive match
/// on [`EngineOptions`], so an engine without an arm does not build.
pub(crate) trait Engine {
    /// This engine's own options (`()` for an engine that has none).
    type Options;
    fn start(config: ServeConfig, options: Self::Options) -> anyhow::Result<RunningServer>;
}

/// Which engine to run, with that engine's own options: the variant is the engine.
#[derive(Debug, Clone)]
pub enum EngineOptions {
    Threads,
    Iovec,
    Select,
    Poll,
    Epoll(EpollOptions),
    Pool(PoolOptions),
    Uring(UringOptions),
    Tokio,
    Monoio(MonoioOptions),
    Shm(ShmOptions),
    Userspace(userspace::UserspaceOptions),
}

impl EngineOptions {
    /// `kind` with its options at their defaults.
    pub fn defaults(kind: EngineKind) -> Self {
        match kind {
            EngineKind::Threads => EngineOptions::Threads,
            EngineKind::Iovec => EngineOptions::Iovec,
            EngineKind::Select => EngineOptions::Select,
            EngineKind::Poll => EngineOptions::Poll,
            EngineKind::Epoll => EngineOptions::Epoll(EpollOptions::default()),
            EngineKind::Pool => EngineOptions::Pool(PoolOptions::default()),
            EngineKind::Uring => EngineOptions::Uring(UringOptions::default()),
            EngineKind::Tokio => EngineOptions::Tokio,
            EngineKind::Monoio => EngineOptions::Monoio(MonoioOptions::default()),
            EngineKind::Shm => EngineOptions::Shm(ShmOptions::default()),
            EngineKind::Userspace => EngineOptions::Userspace(userspace::UserspaceOptions::default()),
        }
    }

    pub fn kind(&self) -> EngineKind {
        match self {
            EngineOptions::Threads => EngineKind::Threads,
            EngineOptions::Iovec => EngineKind::Iovec,
            EngineOptions::Select => EngineKind::Select,
            EngineOptions::Poll => EngineKind::Poll,
            EngineOptions::Epoll(_) => EngineKind::Epoll,
            EngineOptions::Pool(_) => EngineKind::Pool,
            EngineOptions::Uring(_) => EngineKind::Uring,
            EngineOptions::Tokio => EngineKind::Tokio,
            EngineOptions::Monoio(_) => EngineKind::Monoio,
            EngineOptions::Shm(_) => EngineKind::Shm,
            EngineOptions::Userspace(_) => EngineKind::Userspace,
        }
    }
}

/// Options of the `epoll` engine.
#[derive(Debug, Clone, Copy)]
pub struct EpollOptions {
    pub mode: EpollMode,
}

impl Default for EpollOptions {
    fn default() -> Self {
        EpollOptions {
            mode: EpollMode::Edge,
        }
    }
}

/// Options of the `pool` engine.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Worker threads that run the requests (the loop thread only does I/O).
    pub workers: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions { workers: 4 }
    }
}

/// Options of the `monoio` engine.
#[derive(Debug, Clone, Copy)]
pub struct MonoioOptions {
    /// Submission queue entries of each loop's ring.
    pub ring_entries: u32,
}

impl Default for MonoioOptions {
    fn default() -> Self {
        MonoioOptions {
            ring_entries: UringOptions::default().ring_entries,
        }
    }
}

/// Everything a server needs to start: what every engine shares, and `engine`, which engine
/// with its own options.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub engine: EngineOptions,
    pub addr: SocketAddr,
    /// Share-nothing event loops (event engines only).
    pub threads: usize,
    /// CPUs to pin to. Thread-per-connection engines run all their threads on this set; event
    /// loop i runs on `pin[i % len]`. Empty: no pinning (or 0..N-1 for N > 1 loops).
    pub pin: Vec<usize>,
    pub session: SessionConfig,
    /// After shutdown begins, how long connections get to flush their replies before they are
    /// cut off (a peer that never reads would otherwise hold the server forever).
    pub drain_timeout: Duration,
    /// Print one line per connection closed for a protocol error (the counter counts always).
    pub log_errors: bool,
}

/// Options of the `shm` engine.
#[derive(Debug, Clone)]
pub struct ShmOptions {
    pub name: Option<String>,
    pub slots: u32,
    pub ring_bytes: usize,
    /// How long the polling thread spins without work before it naps between polls.
    pub spin: ShmSpin,
}

impl Default for ShmOptions {
    fn default() -> Self {
        ShmOptions {
            name: None,
            slots: 64,
            ring_bytes: 256 << 10,
            spin: ShmSpin::Auto,
        }
    }
}

impl ServeConfig {
    /// `kind` with every option at its default.
    pub fn new(kind: EngineKind, addr: SocketAddr) -> Self {
        ServeConfig {
            engine: EngineOptions::defaults(kind),
            addr,
            threads: 1,
            pin: Vec::new(),
            session: SessionConfig::default(),
            drain_timeout: Duration::from_secs(5),
            log_errors: true,
        }
    }

    pub fn kind(&self) -> EngineKind {
        self.engine.kind()
    }
}

/// Server-wide counters, updated as connections come and go.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub requests: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub io_errors: AtomicU64,
    pub accept_errors: AtomicU64,
    pub request_timeouts: AtomicU64,
}

impl ServerStats {
    /// Counts one event in `counter` (one of this struct's fields).
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection accepted and then dropped before it was served (reset before it could be
    /// set up, or past a limit): an accept error, and closed at once. Every accepted
    /// connection is counted closed exactly once, so accepted − closed is what is open.
    pub fn refused(&self) {
        Self::bump(&self.accept_errors);
        Self::bump(&self.closed);
    }

    fn absorb(&self, c: SessionCounters) {
        self.requests.fetch_add(c.requests, Ordering::Relaxed);
        self.bytes_in.fetch_add(c.bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(c.bytes_out, Ordering::Relaxed);
    }

    pub fn snapshot(&self, engine: EngineKind, elapsed: Duration, budget: &MemoryBudget) -> ServerSummary {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerSummary {
            memory_waits: budget.refusals(),
            request_timeouts: get(&self.request_timeouts),
            memory_peak: budget.peak() as u64,
            engine,
            elapsed,
            connections: get(&self.accepted),
            requests: get(&self.requests),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            protocol_errors: get(&self.protocol_errors),
            io_errors: get(&self.io_errors),
            accept_errors: get(&self.accept_errors),
        }
    }
}

/// What a server did over its life: the one line it prints when it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSummary {
    pub engine: EngineKind,
    pub elapsed: Duration,
    pub connections: u64,
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub protocol_errors: u64,
    pub io_errors: u64,
    pub accept_errors: u64,
    /// Frames that waited for the memory budget (refused reservations), and the most the
    /// budget ever held.
    pub memory_waits: u64,
    pub memory_peak: u64,
    /// Connections closed because a request took longer than the request timeout.
    pub request_timeouts: u64,
}

impl fmt::Display for ServerSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "summary: engine={} uptime={:.1}s connections={} requests={} bytes_in={} bytes_out={} \
             protocol_errors={} io_errors={} accept_errors={} request_timeouts={} memory_waits={} \
             memory_peak={}",
            self.engine,
            self.elapsed.as_secs_f64(),
            self.connections,
            self.requests,
            self.bytes_in,
            self.bytes_out,
            self.protocol_errors,
            self.io_errors,
            self.accept_errors,
            self.request_timeouts,
            self.memory_waits,
            crate::sansio::units::Size(self.memory_peak)
        )
    }
}

/// Why one connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("protocol error: {0}")]
    Protocol(#[from] SessionError),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("a request took longer than --request-timeout to arrive")]
    RequestTimeout,
}

/// A one-shot, many-waiter shutdown signal. Blocking engines poll its eventfd beside their
/// listener; event loops register it with everything else they wait on.
#[derive(Debug, Clone)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Debug)]
struct ShutdownInner {
    triggered: AtomicBool,
    // Never drained: once notified it stays readable for every waiter, now and later.
    event: EventFd,
}

impl Shutdown {
    pub fn new() -> io::Result<Self> {
        Ok(Shutdown {
            inner: Arc::new(ShutdownInner {
                triggered: AtomicBool::new(false),
                event: EventFd::new()?,
            }),
        })
    }

    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        self.inner.event.notify();
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Readable once the shutdown is triggered.
    pub fn fd(&self) -> RawFd {
        self.inner.event.fd()
    }

    /// A socket that becomes readable once the shutdown is triggered, for runtimes that wait
    /// on sockets only (a helper thread watches the eventfd and writes one byte).
    pub fn notify_socket(&self) -> io::Result<std::os::unix::net::UnixStream> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let fd = self.fd();
        std::thread::Builder::new()
            .name("shutdown-notify".into())
            .spawn(move || {
                let mut ours = ours;
                if wait_readable(&[fd], None).is_ok() {
                    let _ = std::io::Write::write_all(&mut ours, b"x");
                }
            })?;
        theirs.set_nonblocking(true)?;
        Ok(theirs)
    }
}

/// What every engine gets: its configuration, the shared counters and the shutdown signal.
#[derive(Debug)]
pub struct EngineCtx {
    pub config: ServeConfig,
    /// `config.session`, shared by every connection's session.
    session: Arc<crate::sansio::session::SessionConfig>,
    pub stats: ServerStats,
    pub shutdown: Shutdown,
    announced: std::sync::Once,
}

impl EngineCtx {
    /// A server's context; the memory budget's first refusal is logged from here (the core
    /// only counts).
    pub fn new(config: ServeConfig) -> anyhow::Result<Arc<Self>> {
        let quiet = !config.log_errors;
        config.session.budget.on_first_refusal(move |b| {
            if !quiet {
                eprintln!(
                    "iolab: the memory budget ({}) is full: connections with large frames wait, \
                     unread, until replies give memory back (--memory-budget; counted as \
                     memory_waits)",
                    crate::sansio::units::Size(b.limit() as u64)
                );
            }
        });
        Ok(Arc::new(EngineCtx {
            session: Arc::new(config.session.clone()),
            config,
            stats: ServerStats::default(),
            shutdown: Shutdown::new().context("cannot create the shutdown eventfd")?,
            announced: std::sync::Once::new(),
        }))
    }

    /// A new connection's session, on the configuration all of this server's share.
    pub fn new_session(&self) -> crate::sansio::session::ServerSession {
        crate::sansio::session::ServerSession::shared(self.session.clone())
    }

    /// Says once per server (not once per loop) what an engine chose at start.
    pub fn announce(&self, line: &str) {
        self.announced.call_once(|| eprintln!("iolab: {line}"));
    }

    /// Accounts for a closed connection and logs why it ended, if it ended badly.
    fn connection_closed(
        &self,
        peer: impl std::fmt::Display,
        result: Result<(), ConnError>,
        c: SessionCounters,
    ) {
        self.stats.absorb(c);
        self.stats.closed.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {}
            Err(ConnError::Protocol(e)) => {
                self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                if self.config.log_errors {
                    eprintln!("iolab: closing connection from {peer}: {e}");
                }
            }
            Err(ConnError::RequestTimeout) => {
                self.stats.request_timeouts.fetch_add(1, Ordering::Relaxed);
                if self.config.log_errors {
                    eprintln!(
                        "iolab: closing connection from {peer}: {}",
                        ConnError::RequestTimeout
                    );
                }
            }
            Err(ConnError::Io(e)) => {
                // A reset or a broken pipe is the peer's choice; count it, do not shout.
                self.stats.io_errors.fetch_add(1, Ordering::Relaxed);
                let routine = matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                );
                if self.config.log_errors && !routine {
                    eprintln!("iolab: connection from {peer} failed: {e}");
                }
            }
        }
    }
}

/// A server running in this process, as `serve`, `demo` and the tests use it.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    /// What clients connect to, as `serve` prints it: the address, or `shm:NAME`.
    pub endpoint: String,
    pub ctx: Arc<EngineCtx>,
    started: Instant,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningServer {
    pub fn shutdown_handle(&self) -> Shutdown {
        self.ctx.shutdown.clone()
    }

    /// Waits for the server to stop (after someone triggers its shutdown).
    pub fn wait(mut self) -> anyhow::Result<ServerSummary> {
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(result) => result?,
                Err(_) => anyhow::bail!("the {} engine panicked", self.ctx.config.kind()),
            }
        }
        Ok(self.ctx.stats.snapshot(
            self.ctx.config.kind(),
            self.started.elapsed(),
            &self.ctx.config.session.budget,
        ))
    }

    /// Triggers the shutdown and waits: in-flight replies are finished first.
    pub fn stop(self) -> anyhow::Result<ServerSummary> {
        self.ctx.shutdown.trigger();
        self.wait()
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.ctx.shutdown.trigger();
            let _ = t.join();
        }
    }
}

/// Binds the listener and starts the engine on its own thread.
pub fn start(config: ServeConfig) -> anyhow::Result<RunningServer> {
    if config.session.chunk_size == 0 {
        anyhow::bail!("--chunk-size must be at least 1 byte");
    }
    if config.session.max_frame > u32::MAX as usize {
        anyhow::bail!("--max-frame must be below 4 GiB (the length field is 32 bits)");
    }
    if config.threads == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    if config.threads > 1 && !config.kind().is_event_loop() {
        anyhow::bail!(
            "--threads {} applies to the event-loop engines (select, poll, epoll, uring, tokio, monoio); {} has its own threading",
            config.threads,
            config.kind()
        );
    }
    // The registry: every engine's one face, with its own options, and no arm left to a default.
    match config.engine.clone() {
        EngineOptions::Threads => threads::ThreadsEngine::start(config, ()),
        EngineOptions::Iovec => iovec::IovecEngine::start(config, ()),
        EngineOptions::Select => select::SelectEngine::start(config, ()),
        EngineOptions::Poll => poll::PollEngine::start(config, ()),
        EngineOptions::Epoll(o) => epoll::EpollEngine::start(config, o),
        EngineOptions::Pool(o) => pool::PoolEngine::start(config, o),
        EngineOptions::Uring(o) => uring::UringEngine::start(config, o),
        EngineOptions::Tokio => tokio_engine::TokioEngine::start(config, ()),
        EngineOptions::Monoio(o) => monoio_engine::MonoioEngine::start(config, o),
        EngineOptions::Shm(o) => shm::ShmEngine::start(config, o),
        EngineOptions::Userspace(o) => userspace::UserspaceEngine::start(config, o),
    }
}

/// How a kernel-socket engine runs on the listeners [`listen_and_run`] binds for it.
pub(crate) enum Model {
    /// A thread per connection, each running this over the blocking socket.
    PerConnection(blocking::ConnFn),
    /// One loop on one listener, with threads of its own (`pool`).
    Single(LoopFn),
    /// Share-nothing loops, one per listener (`--threads N` of them).
    Loops(LoopFn),
}

/// An event loop serving one listener until shutdown (a closure: it holds its engine's options).
pub(crate) type LoopFn = Arc<dyn Fn(Arc<EngineCtx>, TcpListener) -> anyhow::Result<()> + Send + Sync>;

/// The start of every kernel-socket engine: the descriptor limit raised, the listeners bound
/// (N on one port through SO_REUSEPORT for N loops), and `model` run on a thread of its own.
pub(crate) fn listen_and_run(config: ServeConfig, model: Model) -> anyhow::Result<RunningServer> {
    // The engine's own face and its row in ENGINES say the same about its scaling (the
    // conformance suite starts every engine in a debug build).
    debug_assert_eq!(
        matches!(model, Model::Loops(_)),
        config.kind().is_event_loop(),
        "{}: its start() and its ENGINES row disagree on --threads",
        config.kind()
    );
    raise_fd_limit();
    // N loops, N listeners on one port: the first picks the port (when 0 was asked), the rest
    // join it through SO_REUSEPORT and the kernel spreads new connections over them.
    let loops = match model {
        Model::Loops(_) => config.threads,
        Model::PerConnection(_) | Model::Single(_) => 1,
    };
    let reuse_port = loops > 1;
    let first = bind_listener(config.addr, reuse_port)
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..loops {
        listeners
            .push(bind_listener(addr, true).with_context(|| format!("cannot add a listener on {addr}"))?);
    }
    let ctx = EngineCtx::new(config)?;
    let engine_ctx = ctx.clone();
    let thread = std::thread::Builder::new()
        .name(format!("iolab-{}", ctx.config.kind()))
        .spawn(move || run_model(engine_ctx, listeners, model))?;
    Ok(RunningServer {
        addr,
        endpoint: addr.to_string(),
        ctx,
        started: Instant::now(),
        thread: Some(thread),
    })
}

fn run_model(ctx: Arc<EngineCtx>, mut listeners: Vec<TcpListener>, model: Model) -> anyhow::Result<()> {
    match model {
        Model::Loops(serve) => run_loops(&ctx, listeners, move |ctx, l| serve(ctx, l)),
        Model::PerConnection(serve_conn) => {
            pin_current_thread(&ctx.config.pin)?;
            let listener = listeners.pop().context("internal: no listener")?;
            blocking::serve(ctx, listener, serve_conn)
        }
        Model::Single(serve) => {
            pin_current_thread(&ctx.config.pin)?;
            let listener = listeners.pop().context("internal: no listener")?;
            serve(ctx, listener)
        }
    }
}

/// Runs `serve(ctx, item)` for each item on a thread of its own, loop i pinned to
/// `pin[i % len]` (default CPUs 0..n-1 for n > 1 loops), and waits for them all. One loop
/// failing takes the server down: the others stop and drain too.
pub fn run_loops<T, F>(ctx: &Arc<EngineCtx>, items: Vec<T>, serve: F) -> anyhow::Result<()>
where
    T: Send + 'static,
    F: Fn(Arc<EngineCtx>, T) -> anyhow::Result<()> + Send + Clone + 'static,
{
    let kind = ctx.config.kind();
    let n = items.len();
    let cpus: Vec<usize> = match ctx.config.pin.as_slice() {
        [] if n > 1 => (0..n).collect(),
        pins => pins.to_vec(),
    };
    let mut loops = Vec::with_capacity(n);
    for (i, item) in items.into_iter().enumerate() {
        let ctx = ctx.clone();
        let serve = serve.clone();
        let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
        loops.push(
            std::thread::Builder::new()
                .name(format!("{kind}-loop-{i}"))
                .spawn(move || -> anyhow::Result<()> {
                    if let Some(cpu) = cpu {
                        pin_current_thread(&[cpu])?;
                    }
                    serve(ctx, item)
                })?,
        );
    }
    let mut first_error = None;
    for l in loops {
        let result = l
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("an event loop panicked")));
        if let Err(e) = result {
            ctx.shutdown.trigger();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A TCP listener with the options every engine wants. `reuse_port` lets share-nothing loops
/// each own a listener on the same port, the kernel spreading connections among them.
pub fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    // The kernel caps this at net.core.somaxconn; asking high costs nothing.
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A closed connection's verdict, as the server's counters and log take it. A cut-off counts
/// as an I/O error (timed out): the peer stopped reading, it broke no protocol rule.
impl From<Verdict> for Result<(), ConnError> {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Done => Ok(()),
            Verdict::Protocol(e) => Err(ConnError::Protocol(e)),
            Verdict::CutOff => Err(ConnError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "cut off at shutdown",
            ))),
            Verdict::TimedOut => Err(ConnError::RequestTimeout),
        }
    }
}

/// Shutdown's grace period for connections still writing, kept the same way by every engine:
/// it starts once, expires once `--drain-timeout` has passed, and says so once.
#[derive(Debug)]
pub(crate) struct Drain {
    deadline: Instant,
    timeout: Duration,
    said: bool,
}

impl Drain {
    pub(crate) fn begin(ctx: &EngineCtx) -> Self {
        let timeout = ctx.config.drain_timeout;
        Drain {
            deadline: Instant::now() + timeout,
            timeout,
            said: false,
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long is left before the stragglers are cut off.
    pub(crate) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub(crate) fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Says, the first time only, that `still_writing` connections are being cut off (the
    /// engine then calls [`ServerSession::cut_off`] on each). Returns whether it was the first.
    pub(crate) fn cut_off(&mut self, still_writing: usize) -> bool {
        if self.said {
            return false;
        }
        self.said = true;
        if still_writing > 0 {
            eprintln!(
                "iolab: {still_writing} connection(s) still writing after {:?}; cutting them off",
                self.timeout
            );
        }
        true
    }
}

/// The last write a protocol error gets ([`Next::LastWrite`]): what a kernel socket takes at
/// once of the replies queued before the error, never waiting on the peer that sent it.
pub(crate) fn last_write(fd: RawFd, session: &mut ServerSession) {
    for _ in 0..LAST_WRITE_CALLS {
        let mut slices = [io::IoSlice::new(&[]); 64];
        let n = session.out().fill(&mut slices);
        if n == 0 {
            break;
        }
        match crate::os::sys::send_now(fd, &slices[..n]) {
            Ok(0) | Err(_) => break,
            Ok(taken) => session.wrote(taken),
        }
    }
    session.last_write_tried();
}

/// The clock of a request timeout, one per connection: it runs while a request is partly
/// received, and restarts with each new request (a pipelining client whose every read ends
/// inside a frame is never timed out while its requests complete).
#[derive(Debug, Default)]
pub(crate) struct RequestClock {
    began: Option<Instant>,
    seen: u64,
}

impl RequestClock {
    /// After the session took input. `now` is asked only when the clock (re)starts.
    pub(crate) fn update(&mut self, session: &ServerSession, now: impl FnOnce() -> Instant) {
        let seen = session.requests_received();
        if !session.mid_request() {
            self.began = None;
        } else if self.began.is_none() || seen != self.seen {
            self.began = Some(now());
        }
        self.seen = seen;
    }

    /// Time left for the request being received (`None` while none is). `now` is asked only
    /// while the clock runs.
    pub(crate) fn remaining(
        &self,
        session: &ServerSession,
        now: impl FnOnce() -> Instant,
    ) -> Option<Duration> {
        let began = self.began?;
        Some(
            session
                .request_timeout()
                .saturating_sub(now().saturating_duration_since(began)),
        )
    }

    /// Times the session out if its request is past the timeout; returns whether it did.
    pub(crate) fn enforce(&self, session: &mut ServerSession, now: impl FnOnce() -> Instant) -> bool {
        let late = self.remaining(session, now).is_some_and(|left| left.is_zero());
        if late {
            session.time_out();
        }
        late
    }
}

/// How often a loop looks for requests past their timeout: a fiftieth of it, within bounds.
/// A slow request is closed within 2% of the timeout, and slow clients that arrived over a
/// stretch of time are closed over the same stretch, a few per sweep, rather than all in one
/// burst that would stall the loop for everyone else.
pub(crate) fn timeout_sweep(timeout: Duration) -> Duration {
    (timeout / 50).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// How often a connection whose frame waits for the memory budget looks again for room: no
/// event says that another connection gave memory back, and a wait this short is still far
/// below what a frame large enough to wait takes to arrive.
pub(crate) const MEMORY_RETRY: Duration = Duration::from_millis(5);

/// Sleeps until the budget has room for `session`'s waiting frame, then goes on with it: for
/// a thread that serves one connection and has nothing else to do meanwhile.
pub(crate) fn wait_for_memory(session: &mut ServerSession) {
    while session.awaiting_memory() && !session.retry_memory() {
        std::thread::sleep(MEMORY_RETRY);
    }
}

/// Bounds [`last_write`]'s calls: a socket that takes bytes as fast as they are offered still
/// gets no more than this many.
const LAST_WRITE_CALLS: usize = 64;

/// What a server says, once, when it runs out of descriptors.
pub(crate) fn out_of_fds_message(connections: usize) -> String {
    format!(
        "out of file descriptors at {connections} connections (open-file limit {}); raise the hard \
         limit (ulimit -Hn, or LimitNOFILE=) to serve more",
        raise_fd_limit()
    )
}

/// Waits until `fd` is readable or `timeout` passes (None: forever); retries on EINTR.
pub fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: pfds is a valid array of pollfd of the given length.
    crate::os::sys::restarting(|| unsafe {
        crate::syscall!(poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms))
    })?;
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_row_and_its_name_parses_back() {
        use clap::ValueEnum as _;
        assert_eq!(EngineKind::ALL.len(), ENGINES.len());
        for (row, kind) in ENGINES.iter().zip(EngineKind::ALL) {
            assert_eq!(row.kind, kind);
            assert_eq!(kind.info().name, row.name);
            assert_eq!(EngineKind::from_str(row.name, false), Ok(kind), "{}", row.name);
        }
        let names: std::collections::BTreeSet<&str> = ENGINES.iter().map(|e| e.name).collect();
        assert_eq!(names.len(), ENGINES.len(), "two engines share a name");
        assert!(EngineKind::KERNEL_TCP.iter().all(|k| k.info().kernel_tcp));
        assert!(!EngineKind::KERNEL_TCP.contains(&EngineKind::Shm));
    }

    /// The README's engine table is this list, row for row: one list, written once.
    #[test]
    fn the_readme_table_is_the_engine_list() {
        let readme = include_str!("../../README.md");
        let rows: Vec<(&str, &str)> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| {
                let (name, rest) = l.split_once("` | ")?;
                Some((name, rest.strip_suffix(" |")?))
            })
            .collect();
        let want: Vec<(&str, &str)> = ENGINES.iter().map(|e| (e.name, e.model)).collect();
        assert_eq!(
            rows, want,
            "README.md's engine table differs from engine::ENGINES"
        );
    }

    #[test]
    fn shutdown_wakes_every_waiter() {
        let s = Shutdown::new().unwrap();
        assert!(!s.is_triggered());
        assert_eq!(
            wait_readable(&[s.fd()], Some(Duration::ZERO)).unwrap(),
            vec![false]
        );
        s.trigger();
        assert!(s.is_triggered());
        // Readable for everyone, repeatedly: nobody consumes the event.
        for _ in 0..3 {
            assert_eq!(wait_readable(&[s.fd()], None).unwrap(), vec![true]);
        }
    }
}
