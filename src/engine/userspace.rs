//! `userspace`: the session core on a user-space TCP/IP stack (smoltcp) over a TAP device.
//!
//! The kernel's socket layer is gone from the server's side: each thread owns one queue of a
//! multi-queue TAP device and one smoltcp interface, reads Ethernet frames from its queue,
//! runs TCP itself, and hands the byte streams to the same sessions every engine uses. The
//! kernel picks a queue per flow, so a connection lives its whole life on one thread: share
//! nothing, no locks, handlers run in the stack's own loop (the thread-per-core design of
//! user-space stacks such as Seastar's).
//!
//! Clients are plain kernel TCP at the TAP's address. The device, its addresses and the
//! clients live in a network namespace made for the run (`--netns NAME`, or the server is
//! started inside one); the engine refuses to create a TAP in the host's namespace.
//!
//! Sizing, not smoltcp's example defaults: each connection has `--tap-buffer` of receive and
//! of send buffer (64 KiB: a full window without scaling), each queue keeps `--tap-backlog`
//! listening sockets (a smoltcp listener takes one connection; a new one replaces it as it
//! goes), and the socket set grows with the connections. The neighbour cache holds 16
//! entries (the crate feature), far more than the one neighbour a TAP link has: the kernel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;

use super::{ConnError, Drain, EngineCtx, Next, RunningServer, ServeConfig, ServerStats};
use crate::os::netns::Netns;
use crate::os::tap::{self, ArpShare, LinkOptions, TapQueue};
use crate::sansio::session::{ServerSession, Verdict};

/// Port when `--addr` asks for port 0: the stack is alone on its link, nothing can clash.
pub const DEFAULT_PORT: u16 = 7000;
/// Longest wait in one poll, so a shutdown without traffic is noticed.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// Options of the `userspace` engine.
#[derive(Debug, Clone)]
pub struct UserspaceOptions {
    /// The TAP device, addresses, MTU and socket buffers.
    pub link: LinkOptions,
    /// Listening sockets per queue.
    pub backlog: usize,
    /// Network namespace to run in: joined if it exists, else created and deleted on exit.
    pub netns: Option<String>,
}

impl Default for UserspaceOptions {
    fn default() -> Self {
        UserspaceOptions {
            link: LinkOptions::default(),
            backlog: 64,
            netns: None,
        }
    }
}

/// This engine's face: the registry starts it for `--engine userspace`.
pub struct UserspaceEngine;

impl super::Engine for UserspaceEngine {
    type Options = UserspaceOptions;
    fn start(config: ServeConfig, options: UserspaceOptions) -> anyhow::Result<RunningServer> {
        start(config, options)
    }
}

fn start(config: ServeConfig, opts: UserspaceOptions) -> anyhow::Result<RunningServer> {
    if opts.backlog == 0 {
        anyhow::bail!("--tap-backlog must be at least 1");
    }
    let port = match config.addr.port() {
        0 => DEFAULT_PORT,
        p => p,
    };
    let endpoint = SocketAddr::from((opts.link.ip, port));
    let ctx = EngineCtx::new(config)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let engine_ctx = ctx.clone();
    let thread = std::thread::Builder::new()
        .name("iolab-userspace".into())
        .spawn(move || serve(engine_ctx, &opts, port, ready_tx))?;
    // The set-up happens on the engine's thread (inside the namespace); its verdict comes back.
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let result = thread.join();
            return Err(match result {
                Ok(Err(e)) => e,
                _ => anyhow::anyhow!("the userspace engine stopped during set-up"),
            });
        }
    }
    Ok(RunningServer {
        addr: endpoint,
        endpoint: endpoint.to_string(),
        ctx,
        started: Instant::now(),
        thread: Some(thread),
    })
}

/// Enters the namespace, makes the device, runs one thread per queue, and cleans up.
fn serve(
    ctx: Arc<EngineCtx>,
    opts: &UserspaceOptions,
    port: u16,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let set_up = || -> anyhow::Result<(Option<Netns>, Vec<std::os::fd::OwnedFd>)> {
        let netns = match &opts.netns {
            Some(name) => {
                let ns = Netns::create_or_join(name)?;
                ns.enter()?;
                Some(ns)
            }
            None => None,
        };
        let link = &opts.link;
        let queues = link.open(ctx.config.threads)?;
        ctx.announce(&format!(
            "userspace: TAP {} with {} queue(s), smoltcp at {}/{} port {port}, kernel side {}, MTU {}{}",
            link.tap,
            queues.len(),
            link.ip,
            link.prefix,
            link.kernel_side(),
            link.mtu,
            netns
                .as_ref()
                .map(|n| format!(", namespace {}", n.name()))
                .unwrap_or_default(),
        ));
        Ok((netns, queues))
    };
    let (netns, queues) = match set_up() {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let share = ArpShare::new(queues.len()).context("cannot create the queues' eventfds")?;
    let mtu = opts.link.mtu;
    let devices: Vec<TapQueue> = queues
        .into_iter()
        .enumerate()
        .map(|(i, fd)| TapQueue::new(i, fd, mtu, share.clone()))
        .collect();
    let _ = ready.send(Ok(()));
    let opts = opts.clone();
    let result = super::run_loops(&ctx, devices, move |ctx, device| {
        Stack::new(&opts, device, port)?.run(&ctx)
    });
    // The device went with its last queue's descriptor; the namespace goes now, if ours.
    drop(netns);
    result
}

/// One accepted connection.
struct Conn {
    handle: SocketHandle,
    session: ServerSession,
    peer: String,
    /// Set once the connection is ending, with how (its session's verdict, or a reset); its
    /// FIN goes out then, after what the socket already holds.
    ending: Option<Result<(), ConnError>>,
    close_sent: bool,
    clock: super::RequestClock,
}

/// One queue's stack: its interface, sockets, listeners and connections.
struct Stack {
    device: TapQueue,
    iface: Interface,
    sockets: SocketSet<'static>,
    listeners: Vec<SocketHandle>,
    conns: Vec<Conn>,
    /// Sockets of connections just retired. They leave the set only after the interface's
    /// next poll: an aborted socket's reset goes out then, and removed at once it never would
    /// (the peer would wait on a connection nobody holds).
    retired: Vec<SocketHandle>,
    port: u16,
    buffer: usize,
}

impl Stack {
    fn new(opts: &UserspaceOptions, mut device: TapQueue, port: u16) -> anyhow::Result<Stack> {
        let iface = tap::interface(&mut device, opts.link.ip, opts.link.prefix);
        let mut stack = Stack {
            device,
            iface,
            sockets: SocketSet::new(Vec::new()),
            listeners: Vec::with_capacity(opts.backlog),
            conns: Vec::new(),
            retired: Vec::new(),
            port,
            buffer: opts.link.socket_buffer,
        };
        for _ in 0..opts.backlog {
            let l = stack.listener()?;
            stack.listeners.push(l);
        }
        Ok(stack)
    }

    fn listener(&mut self) -> anyhow::Result<SocketHandle> {
        Ok(self.sockets.add(tap::listening_socket(self.buffer, self.port)?))
    }

    fn run(mut self, ctx: &EngineCtx) -> anyhow::Result<()> {
        let mut drain: Option<Drain> = None;
        loop {
            if ctx.shutdown.is_triggered() && drain.is_none() {
                drain = Some(Drain::begin(ctx));
                for l in std::mem::take(&mut self.listeners) {
                    self.sockets.get_mut::<tcp::Socket>(l).abort();
                }
            }
            let now = smoltcp::time::Instant::now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            if drain.is_none() {
                self.accept(ctx)?;
            }
            if let Some(d) = drain.as_mut().filter(|d| d.expired()) {
                if d.cut_off(self.conns.len()) {
                    for conn in &mut self.conns {
                        conn.session.cut_off();
                    }
                }
            }
            self.serve_connections(ctx, drain.is_some());
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            for handle in self.retired.drain(..) {
                self.sockets.remove(handle);
            }
            if drain.is_some() && self.conns.is_empty() {
                return Ok(());
            }
            let delay = self
                .iface
                .poll_delay(smoltcp::time::Instant::now(), &self.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT);
            // Nothing on the link says that memory came back: a waiting frame looks again soon.
            let delay = if self.conns.iter().any(|c| c.session.awaiting_memory()) {
                delay.min(super::MEMORY_RETRY)
            } else {
                delay
            };
            if !delay.is_zero() {
                tap::wait(&self.device, Some(ctx.shutdown.fd()), delay).context("poll on the TAP queue")?;
            }
        }
    }

    /// Listeners that left LISTEN became connections; fresh listeners replace them.
    fn accept(&mut self, ctx: &EngineCtx) -> anyhow::Result<()> {
        for i in 0..self.listeners.len() {
            let handle = self.listeners[i];
            let socket = self.sockets.get::<tcp::Socket>(handle);
            if socket.state() == tcp::State::Listen {
                continue;
            }
            let peer = socket
                .remote_endpoint()
                .map_or_else(|| "?".to_string(), |e| e.to_string());
            ServerStats::bump(&ctx.stats.accepted);
            self.conns.push(Conn {
                handle,
                session: ctx.new_session(),
                peer,
                ending: None,
                close_sent: false,
                clock: super::RequestClock::default(),
            });
            self.listeners[i] = self.listener()?;
        }
        Ok(())
    }

    /// Moves bytes between every connection's socket and session, and retires the finished.
    fn serve_connections(&mut self, ctx: &EngineCtx, draining: bool) {
        let mut i = 0;
        while i < self.conns.len() {
            let conn = &mut self.conns[i];
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            if step(conn, socket, draining) {
                let conn = self.conns.swap_remove(i);
                self.retired.push(conn.handle);
                let result = conn.ending.unwrap_or(Ok(()));
                ctx.connection_closed(
                    format!("{} (userspace)", conn.peer),
                    result,
                    conn.session.counters(),
                );
            } else {
                i += 1;
            }
        }
    }
}

/// One connection's turn, as its session asks; true when it is over and its socket can go.
/// `draining`: the server is stopping (input ends once what the socket holds is read).
fn step(conn: &mut Conn, socket: &mut tcp::Socket, draining: bool) -> bool {
    use tcp::State;
    let state = socket.state();
    if matches!(state, State::Closed | State::TimeWait | State::Listen) {
        // Reset by the peer (or its handshake failed): what was owed cannot be delivered.
        if conn.ending.is_none() {
            conn.ending = Some(Err(ConnError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset",
            ))));
        }
        return true;
    }
    if state == State::SynReceived {
        return false;
    }
    if conn.ending.is_none() {
        flush(conn, socket);
        // A frame that waited for memory goes on once there is room (every turn looks).
        conn.session.retry_memory();
        while conn.session.wants_read() && socket.can_recv() {
            let session = &mut conn.session;
            // An error is the session's to remember: next() says what follows it.
            if socket.recv(|data| (data.len(), session.receive(data))).is_err() {
                break;
            }
            flush(conn, socket);
        }
        conn.clock.update(&conn.session, Instant::now);
        conn.clock.enforce(&mut conn.session, Instant::now);
        if conn.session.reading() && !socket.can_recv() {
            if !socket.may_recv() {
                conn.session.peer_closed();
            } else if draining {
                // No half-close here: input ends once what the socket holds is read.
                conn.session.end_input();
            }
        }
        if conn.session.next() == Next::LastWrite {
            // What the socket took in the flushes above was the last write a bad frame gets.
            conn.session.last_write_tried();
        }
        if let Next::Close(verdict) = conn.session.next() {
            if verdict.is_abrupt() {
                socket.abort();
                conn.ending = Some(verdict.into());
                return true;
            }
            conn.ending = Some(verdict.into());
        }
    }
    if conn.ending.is_some() && !conn.close_sent {
        socket.close();
        conn.close_sent = true;
    }
    if conn.close_sent && matches!(state, State::FinWait2) {
        // Everything we sent, FIN included, is acknowledged: the session is over. The peer's
        // own FIN, if it ever comes, is the stack's business (as an orphan is the kernel's).
        return true;
    }
    if conn.close_sent && conn.session.next() == Next::Close(Verdict::CutOff) {
        // Past the drain deadline, its FIN still unacknowledged: cut off.
        socket.abort();
        return true;
    }
    false
}

/// Copies the session's replies into the socket's send buffer as far as it has room.
fn flush(conn: &mut Conn, socket: &mut tcp::Socket) {
    while let Some(slice) = conn.session.out().front() {
        match socket.send_slice(slice) {
            Ok(0) | Err(_) => break,
            Ok(n) => conn.session.wrote(n),
        }
    }
}
