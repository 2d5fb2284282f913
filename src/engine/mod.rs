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

mod blocking;
mod iovec;
mod threads;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::session::{SessionConfig, SessionCounters, SessionError};

/// The engines this build has, by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum EngineKind {
    /// Thread per connection; blocking read/write, one chunk per syscall.
    Threads,
    /// Thread per connection; blocking readv/writev, header and payload gathered in one call.
    Iovec,
}

impl EngineKind {
    pub const ALL: &'static [EngineKind] = &[EngineKind::Threads, EngineKind::Iovec];

    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Threads => "threads",
            EngineKind::Iovec => "iovec",
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
    /// CPUs to pin the server's threads to (empty: no pinning).
    pub pin: Vec<usize>,
    pub session: SessionConfig,
    /// After shutdown begins, how long connections get to flush their replies before they are
    /// cut off (a peer that never reads would otherwise hold the server forever).
    pub drain_timeout: Duration,
    /// Print one line per connection closed for a protocol error (the counter counts always).
    pub log_errors: bool,
}

impl ServeConfig {
    pub fn new(engine: EngineKind, addr: SocketAddr) -> Self {
        ServeConfig {
            engine,
            addr,
            pin: Vec::new(),
            session: SessionConfig::default(),
            drain_timeout: Duration::from_secs(5),
            log_errors: true,
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
    event: OwnedFd,
}

impl Shutdown {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Shutdown {
            inner: Arc::new(ShutdownInner {
                triggered: AtomicBool::new(false),
                // SAFETY: fd is a fresh descriptor we own.
                event: unsafe { OwnedFd::from_raw_fd(fd) },
            }),
        })
    }

    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // The counter stays non-zero (nobody reads it), so the fd stays readable for every
        // waiter, now and later. A full counter (EAGAIN) is just as readable.
        // SAFETY: writes 8 bytes from a valid u64 to a descriptor we own.
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Readable once the shutdown is triggered.
    pub fn fd(&self) -> RawFd {
        self.inner.event.as_raw_fd()
    }
}

/// What every engine gets: its configuration, the shared counters and the shutdown signal.
#[derive(Debug)]
pub struct EngineCtx {
    pub config: ServeConfig,
    pub stats: ServerStats,
    pub shutdown: Shutdown,
}

impl EngineCtx {
    /// Accounts for a closed connection and logs why it ended, if it ended badly.
    fn connection_closed(&self, peer: SocketAddr, result: Result<(), ConnError>, c: SessionCounters) {
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
    raise_fd_limit();
    let listener =
        bind_listener(config.addr, false).with_context(|| format!("cannot listen on {}", config.addr))?;
    let addr = listener.local_addr()?;
    let ctx = Arc::new(EngineCtx {
        config,
        stats: ServerStats::default(),
        shutdown: Shutdown::new().context("cannot create the shutdown eventfd")?,
    });
    let engine_ctx = ctx.clone();
    let thread = std::thread::Builder::new()
        .name(format!("iolab-{}", ctx.config.engine))
        .spawn(move || {
            pin_current_thread(&engine_ctx.config.pin)?;
            match engine_ctx.config.engine {
                EngineKind::Threads => blocking::serve(engine_ctx, listener, threads::serve_connection),
                EngineKind::Iovec => blocking::serve(engine_ctx, listener, iovec::serve_connection),
            }
        })?;
    Ok(RunningServer {
        addr,
        ctx,
        started: Instant::now(),
        thread: Some(thread),
    })
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

/// Pins the calling thread to `cpus` (all of them; empty means no pinning).
pub fn pin_current_thread(cpus: &[usize]) -> anyhow::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &cpu in cpus {
            if cpu >= libc::CPU_SETSIZE as usize {
                anyhow::bail!("CPU {cpu} is out of range");
            }
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            let e = io::Error::last_os_error();
            anyhow::bail!(
                "cannot pin to CPUs {cpus:?}: {e} (this machine has {} CPUs)",
                num_cpus()
            );
        }
    }
    Ok(())
}

/// How many CPUs this process may run on.
pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Parses a CPU list as taskset writes it: `0`, `0,2`, `0-3`, `0-1,4`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("'{s}' is not a CPU list (examples: 0, 0,2, 0-3)");
        if let Some((a, b)) = part.split_once('-') {
            let a: usize = a.trim().parse().map_err(|_| bad())?;
            let b: usize = b.trim().parse().map_err(|_| bad())?;
            if a > b || b >= 1024 {
                return Err(bad());
            }
            cpus.extend(a..=b);
        } else {
            cpus.push(part.parse().map_err(|_| bad())?);
        }
    }
    if cpus.is_empty() {
        return Err(format!("'{s}' names no CPU"));
    }
    Ok(cpus)
}

/// Raises this process's open-file soft limit to its hard limit, so thousands of connections
/// fit. Returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit read and write a plain struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        lim.rlim_cur
    }
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
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Ok(vec![0]));
        assert_eq!(parse_cpu_list("0,2"), Ok(vec![0, 2]));
        assert_eq!(parse_cpu_list("0-3"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_list("0-1,4"), Ok(vec![0, 1, 4]));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
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
