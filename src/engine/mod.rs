//! Engines: one I/O model each, all driving the same [`ServerSession`].
//!
//! An engine decides how a server waits, reads, writes, accepts and schedules; nothing else.
//! This module holds what every engine needs and none of them should write again: the
//! engine registry, listener set-up, the shutdown signal, server-wide counters, CPU pinning
//! and the file-descriptor limit. Engines import this module and the session core, never
//! each other.
//!
//! | engine    | model                                                                 |
//! |-----------|-----------------------------------------------------------------------|
//! | `threads` | thread per connection, blocking read/write of one chunk per syscall   |
//! | `iovec`   | thread per connection, blocking readv/writev of many chunks per call  |
//! | `select`  | one thread, select(2) over bitmaps rebuilt every turn (O(n))           |
//! | `poll`    | one thread, poll(2) over an array rebuilt every turn (O(n))            |
//! | `epoll`   | one thread, kernel-kept interest list, level- or edge-triggered        |
//! | `pool`    | one epoll I/O thread handing requests to a fixed pool of workers      |
//! | `uring`   | one io_uring per loop: completions, multishot accept and recv          |
//! | `tokio`   | baseline: a tokio current-thread runtime per loop, a task per connection |
//! | `monoio`  | baseline: monoio's io_uring runtime per loop, a task per connection    |
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
use crate::sansio::session::{SessionConfig, SessionCounters, SessionError};

/// The engines this build has, by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
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

impl EngineKind {
    pub const ALL: &'static [EngineKind] = &[
        EngineKind::Threads,
        EngineKind::Iovec,
        EngineKind::Select,
        EngineKind::Poll,
        EngineKind::Epoll,
        EngineKind::Pool,
        EngineKind::Uring,
        EngineKind::Tokio,
        EngineKind::Monoio,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Threads => "threads",
            EngineKind::Iovec => "iovec",
            EngineKind::Select => "select",
            EngineKind::Poll => "poll",
            EngineKind::Epoll => "epoll",
            EngineKind::Pool => "pool",
            EngineKind::Uring => "uring",
            EngineKind::Tokio => "tokio",
            EngineKind::Monoio => "monoio",
            EngineKind::Shm => "shm",
            EngineKind::Userspace => "userspace",
        }
    }

    /// Engines that run share-nothing event loops and so take `--threads N`.
    pub fn is_event_loop(self) -> bool {
        !matches!(
            self,
            EngineKind::Threads | EngineKind::Iovec | EngineKind::Pool | EngineKind::Shm
        )
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

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub engine: EngineKind,
    pub addr: SocketAddr,
    /// Share-nothing event loops (event engines only).
    pub threads: usize,
    /// Worker threads of the `pool` engine.
    pub workers: usize,
    pub epoll_mode: EpollMode,
    /// CPUs to pin to. Thread-per-connection engines run all their threads on this set; event
    /// loop i runs on `pin[i % len]`. Empty: no pinning (or 0..N-1 for N > 1 loops).
    pub pin: Vec<usize>,
    pub session: SessionConfig,
    /// After shutdown begins, how long connections get to flush their replies before they are
    /// cut off (a peer that never reads would otherwise hold the server forever).
    pub drain_timeout: Duration,
    /// Print one line per connection closed for a protocol error (the counter counts always).
    pub log_errors: bool,
    pub uring: UringOptions,
    /// The `shm` engine's segment name, connection slots and ring size (a power of two).
    pub shm: ShmOptions,
    /// The `userspace` engine's TAP device, addresses, sizing and namespace.
    pub userspace: userspace::UserspaceOptions,
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
    pub fn new(engine: EngineKind, addr: SocketAddr) -> Self {
        ServeConfig {
            engine,
            addr,
            threads: 1,
            workers: 4,
            epoll_mode: EpollMode::Edge,
            pin: Vec::new(),
            session: SessionConfig::default(),
            drain_timeout: Duration::from_secs(5),
            log_errors: true,
            uring: UringOptions::default(),
            shm: ShmOptions::default(),
            userspace: userspace::UserspaceOptions::default(),
        }
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
}

impl ServerStats {
    /// Counts one event in `counter` (one of this struct's fields).
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn absorb(&self, c: SessionCounters) {
        self.requests.fetch_add(c.requests, Ordering::Relaxed);
        self.bytes_in.fetch_add(c.bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(c.bytes_out, Ordering::Relaxed);
    }

    pub fn snapshot(&self, engine: EngineKind, elapsed: Duration) -> ServerSummary {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerSummary {
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
}

impl fmt::Display for ServerSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "summary: engine={} uptime={:.1}s connections={} requests={} bytes_in={} bytes_out={} \
             protocol_errors={} io_errors={} accept_errors={}",
            self.engine,
            self.elapsed.as_secs_f64(),
            self.connections,
            self.requests,
            self.bytes_in,
            self.bytes_out,
            self.protocol_errors,
            self.io_errors,
            self.accept_errors
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
    pub stats: ServerStats,
    pub shutdown: Shutdown,
    announced: std::sync::Once,
}

impl EngineCtx {
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
                Err(_) => anyhow::bail!("the {} engine panicked", self.ctx.config.engine),
            }
        }
        Ok(self
            .ctx
            .stats
            .snapshot(self.ctx.config.engine, self.started.elapsed()))
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
    if config.threads > 1 && !config.engine.is_event_loop() {
        anyhow::bail!(
            "--threads {} applies to the event-loop engines (select, poll, epoll, uring, tokio, monoio); {} has its own threading",
            config.threads,
            config.engine
        );
    }
    if config.engine == EngineKind::Shm {
        return shm::start(config);
    }
    if config.engine == EngineKind::Userspace {
        return userspace::start(config);
    }
    if matches!(config.engine, EngineKind::Uring | EngineKind::Monoio) {
        // Fail before listening, with the reason, where io_uring cannot run.
        uring::preflight(&config.uring)?;
    }
    raise_fd_limit();
    // N loops, N listeners on one port: the first picks the port (when 0 was asked), the rest
    // join it through SO_REUSEPORT and the kernel spreads new connections over them.
    let reuse_port = config.threads > 1;
    let first = bind_listener(config.addr, reuse_port)
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..config.threads {
        listeners
            .push(bind_listener(addr, true).with_context(|| format!("cannot add a listener on {addr}"))?);
    }
    let ctx = Arc::new(EngineCtx {
        config,
        stats: ServerStats::default(),
        shutdown: Shutdown::new().context("cannot create the shutdown eventfd")?,
        announced: std::sync::Once::new(),
    });
    let engine_ctx = ctx.clone();
    let thread = std::thread::Builder::new()
        .name(format!("iolab-{}", ctx.config.engine))
        .spawn(move || run_engine(engine_ctx, listeners))?;
    Ok(RunningServer {
        addr,
        endpoint: addr.to_string(),
        ctx,
        started: Instant::now(),
        thread: Some(thread),
    })
}

fn run_engine(ctx: Arc<EngineCtx>, mut listeners: Vec<TcpListener>) -> anyhow::Result<()> {
    let kind = ctx.config.engine;
    let Some(listener) = listeners
        .pop()
        .filter(|_| listeners.is_empty() || kind.is_event_loop())
    else {
        anyhow::bail!("internal: no listener for the {kind} engine");
    };
    if !kind.is_event_loop() {
        pin_current_thread(&ctx.config.pin)?;
        return match kind {
            EngineKind::Threads => blocking::serve(ctx, listener, threads::serve_connection),
            EngineKind::Iovec => blocking::serve(ctx, listener, iovec::serve_connection),
            _ => pool::serve(ctx, listener),
        };
    }
    listeners.push(listener);
    let event_loop = match kind {
        EngineKind::Select => select::serve,
        EngineKind::Poll => poll::serve,
        EngineKind::Uring => uring::serve,
        EngineKind::Tokio => tokio_engine::serve,
        EngineKind::Monoio => monoio_engine::serve,
        _ => epoll::serve,
    };
    run_loops(&ctx, listeners, event_loop)
}

/// Runs `serve(ctx, item)` for each item on a thread of its own, loop i pinned to
/// `pin[i % len]` (default CPUs 0..n-1 for n > 1 loops), and waits for them all. One loop
/// failing takes the server down: the others stop and drain too.
pub fn run_loops<T, F>(ctx: &Arc<EngineCtx>, items: Vec<T>, serve: F) -> anyhow::Result<()>
where
    T: Send + 'static,
    F: Fn(Arc<EngineCtx>, T) -> anyhow::Result<()> + Send + Clone + 'static,
{
    let kind = ctx.config.engine;
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
    loop {
        // SAFETY: pfds is a valid array of pollfd of the given length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if r >= 0 {
            return Ok(pfds.iter().map(|p| p.revents != 0).collect());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
