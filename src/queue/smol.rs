//! The queue API over a user-space TCP/IP stack: smoltcp on a TAP device of its own.
//!
//! The backend creates its TAP device (one queue) in the calling thread's network namespace,
//! gives the kernel's end the subnet's first other host, and runs one smoltcp interface on
//! it. Its connections are smoltcp sockets; `progress` polls the interface, moves bytes
//! between sockets and queues, and sleeps on the TAP descriptor until a frame or a timer.
//! A peer is anything the kernel of that namespace reaches: a kernel-socket server listening
//! there, or clients connecting to the stack's address when it listens.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use super::{Backend, Endpoint, Qd, Queue, QueueMut, Queues, State};
use crate::os::tap::{self, ArpShare, LinkOptions, TapQueue};

/// Listening sockets kept per listening queue.
const BACKLOG: usize = 64;

pub struct SmolBackend {
    device: TapQueue,
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: HashMap<u32, SocketHandle>,
    listeners: HashMap<u32, (u16, Vec<SocketHandle>)>,
    /// Closed by their queue, waiting for the FIN exchange to finish before they go.
    closing: Vec<SocketHandle>,
    next_port: u16,
    buffer: usize,
}

impl SmolBackend {
    pub fn new(o: &LinkOptions) -> anyhow::Result<SmolBackend> {
        let mut fds = o.open(1)?;
        let Some(fd) = fds.pop() else {
            anyhow::bail!("internal: no TAP queue");
        };
        let mut device = TapQueue::new(0, fd, o.mtu, ArpShare::new(1)?);
        let iface = tap::interface(&mut device, o.ip, o.prefix);
        Ok(SmolBackend {
            device,
            iface,
            sockets: SocketSet::new(Vec::new()),
            conns: HashMap::new(),
            listeners: HashMap::new(),
            closing: Vec::new(),
            next_port: 49152 + (crate::os::clock::now_ns() % 8192) as u16,
            buffer: o.socket_buffer,
        })
    }

    fn poll(&mut self) {
        self.iface
            .poll(smoltcp::time::Instant::now(), &mut self.device, &mut self.sockets);
    }

    /// Moves bytes and state between every socket and its queue; returns whether any moved.
    fn service(&mut self, queues: &mut Queues) -> bool {
        let mut moved = false;
        for (&listener, (port, handles)) in self.listeners.iter_mut() {
            // A listener that took a connection becomes that connection's socket, and a fresh
            // listener takes its place (one that cannot be made leaves the backlog shorter).
            let mut i = 0;
            while i < handles.len() {
                let h = handles[i];
                if self.sockets.get::<tcp::Socket>(h).state() == tcp::State::Listen {
                    i += 1;
                    continue;
                }
                let qd = queues.add(Queue::new(State::Connecting));
                self.conns.insert(qd.0, h);
                queues.accepted(Qd(listener), qd);
                match tap::listening_socket(self.buffer, *port) {
                    Ok(fresh) => {
                        handles[i] = self.sockets.add(fresh);
                        i += 1;
                    }
                    Err(_) => {
                        handles.swap_remove(i);
                    }
                }
                moved = true;
            }
        }
        for (&qd, &h) in &self.conns {
            let Some(mut q) = queues.get_mut(Qd(qd)) else {
                continue;
            };
            let socket = self.sockets.get_mut::<tcp::Socket>(h);
            moved |= step(socket, &mut q);
        }
        self.closing.retain(|&h| {
            let done = matches!(
                self.sockets.get::<tcp::Socket>(h).state(),
                tcp::State::Closed | tcp::State::TimeWait
            );
            if done {
                self.sockets.remove(h);
            }
            !done
        });
        moved
    }
}

/// One socket's turn against its queue; returns whether anything moved.
fn step(socket: &mut tcp::Socket, q: &mut QueueMut<'_>) -> bool {
    use tcp::State as S;
    let mut moved = false;
    match (socket.state(), &q.state) {
        (S::SynSent | S::SynReceived, _) => return false,
        (S::Closed | S::TimeWait | S::Listen, State::Connecting) => {
            q.fail("cannot connect: refused or timed out");
            return true;
        }
        (S::Closed | S::TimeWait, State::Open) => {
            q.fail("connection reset");
            return true;
        }
        (_, State::Connecting) => {
            q.set_state(State::Open);
            moved = true;
        }
        _ => {}
    }
    if q.state != State::Open {
        return moved;
    }
    while !q.pending_out().is_empty() {
        match socket.send_slice(q.pending_out()) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                q.sent(n);
                moved = true;
            }
        }
    }
    while socket.can_recv() {
        match socket.recv(|data| {
            q.deliver(data);
            (data.len(), data.len())
        }) {
            Ok(n) if n > 0 => moved = true,
            _ => break,
        }
    }
    if !socket.may_recv() && !socket.can_recv() {
        q.set_state(State::PeerClosed);
        moved = true;
    }
    moved
}

impl Backend for SmolBackend {
    fn connect(&mut self, qd: Qd, to: &Endpoint, _queues: &mut Queues) -> io::Result<()> {
        let Endpoint::Tcp(addr) = to else {
            return Err(to.refused("the user-space stack connects to a TCP address"));
        };
        let std::net::IpAddr::V4(ip) = addr.ip() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the user-space stack speaks IPv4 only",
            ));
        };
        let mut socket = tap::tcp_socket(self.buffer);
        let port = self.next_port;
        self.next_port = if self.next_port == u16::MAX {
            49152
        } else {
            self.next_port + 1
        };
        socket
            .connect(self.iface.context(), (IpAddress::Ipv4(ip), addr.port()), port)
            .map_err(|e| io::Error::other(format!("smoltcp connect to {addr}: {e}")))?;
        let h = self.sockets.add(socket);
        self.conns.insert(qd.0, h);
        self.poll();
        Ok(())
    }

    fn listen(&mut self, qd: Qd, at: &Endpoint, _queues: &mut Queues) -> io::Result<()> {
        let Endpoint::Tcp(addr) = at else {
            return Err(at.refused("the user-space stack listens on a TCP port"));
        };
        let mut handles = Vec::with_capacity(BACKLOG);
        for _ in 0..BACKLOG {
            let socket = tap::listening_socket(self.buffer, addr.port())
                .map_err(|e| io::Error::other(format!("{e:#}")))?;
            handles.push(self.sockets.add(socket));
        }
        self.listeners.insert(qd.0, (addr.port(), handles));
        Ok(())
    }

    fn progress(&mut self, queues: &mut Queues, timeout: Duration) -> io::Result<()> {
        self.poll();
        let moved = self.service(queues);
        self.poll();
        if moved || timeout.is_zero() {
            return Ok(());
        }
        let delay = self
            .iface
            .poll_delay(smoltcp::time::Instant::now(), &self.sockets)
            .map_or(timeout, |d| Duration::from_micros(d.total_micros()).min(timeout));
        if !delay.is_zero() {
            tap::wait(&self.device, None, delay)?;
        }
        self.poll();
        self.service(queues);
        self.poll();
        Ok(())
    }

    fn kick(&mut self, qd: Qd, queues: &mut Queues) -> io::Result<()> {
        if let (Some(&h), Some(mut q)) = (self.conns.get(&qd.0), queues.get_mut(qd)) {
            step(self.sockets.get_mut::<tcp::Socket>(h), &mut q);
            self.poll();
        }
        Ok(())
    }

    fn close(&mut self, qd: Qd) {
        if let Some(h) = self.conns.remove(&qd.0) {
            self.sockets.get_mut::<tcp::Socket>(h).close();
            self.closing.push(h);
        }
        if let Some((_, handles)) = self.listeners.remove(&qd.0) {
            for h in handles {
                self.sockets.remove(h);
            }
        }
        self.poll();
    }
}
