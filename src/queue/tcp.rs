//! The queue API over kernel TCP: non-blocking sockets, edge-triggered epoll.
//!
//! Each queue's socket is registered once for reading, writing and hang-up, keyed by its
//! descriptor. A readiness event reads until EAGAIN into the inbox and writes the outbox
//! until EAGAIN; a push tries its write at once.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::{Backend, Endpoint, Qd, Queue, QueueMut, Queues, State};
use crate::os::sys::{interest, take_socket_error, Epoll};

const READ_BUFFER: usize = 256 * 1024;

enum Sock {
    Stream(TcpStream),
    Listener(TcpListener),
}

pub struct TcpBackend {
    epoll: Epoll,
    events: Vec<libc::epoll_event>,
    socks: HashMap<u32, Sock>,
    buf: Vec<u8>,
}

impl TcpBackend {
    pub fn new() -> io::Result<TcpBackend> {
        Ok(TcpBackend {
            epoll: Epoll::new()?,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            socks: HashMap::new(),
            buf: vec![0; READ_BUFFER],
        })
    }

    fn watch(&mut self, qd: Qd, sock: Sock) -> io::Result<()> {
        let fd = match &sock {
            Sock::Stream(s) => s.as_raw_fd(),
            Sock::Listener(l) => l.as_raw_fd(),
        };
        self.epoll.add(
            fd,
            u64::from(qd.0),
            interest::READ | interest::WRITE | interest::EDGE,
        )?;
        self.socks.insert(qd.0, sock);
        Ok(())
    }

    fn read(&mut self, qd: Qd, queues: &mut Queues) {
        let (Some(Sock::Stream(s)), Some(mut q)) = (self.socks.get_mut(&qd.0), queues.get_mut(qd)) else {
            return;
        };
        loop {
            match s.read(&mut self.buf) {
                Ok(0) => return q.set_state(State::PeerClosed),
                Ok(n) => q.deliver(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return q.fail(e.to_string()),
            }
        }
    }

    fn accept_all(&mut self, listener: Qd, queues: &mut Queues) -> io::Result<()> {
        loop {
            let accepted = match self.socks.get(&listener.0) {
                Some(Sock::Listener(l)) => l.accept(),
                _ => return Ok(()),
            };
            match accepted {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true)?;
                    let _ = stream.set_nodelay(true);
                    let qd = queues.add(Queue::new(State::Open));
                    self.watch(qd, Sock::Stream(stream))?;
                    queues.accepted(listener, qd);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A connection that died before it was accepted concerns no one.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn write_out(sock: &mut Sock, q: &mut QueueMut<'_>) {
    let Sock::Stream(s) = sock else { return };
    while !q.pending_out().is_empty() {
        match s.write(q.pending_out()) {
            Ok(n) => q.sent(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return q.fail(e.to_string()),
        }
    }
}

impl Backend for TcpBackend {
    fn connect(&mut self, qd: Qd, to: &Endpoint, _queues: &mut Queues) -> io::Result<()> {
        use socket2::{Domain, Socket, Type};
        let Endpoint::Tcp(addr) = to else {
            return Err(to.refused("kernel TCP connects to an address"));
        };
        let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        match socket.connect(&(*addr).into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        self.watch(qd, Sock::Stream(socket.into()))
    }

    fn listen(&mut self, qd: Qd, at: &Endpoint, _queues: &mut Queues) -> io::Result<()> {
        let Endpoint::Tcp(addr) = at else {
            return Err(at.refused("kernel TCP listens on an address"));
        };
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        self.watch(qd, Sock::Listener(listener))
    }

    fn progress(&mut self, queues: &mut Queues, timeout: Duration) -> io::Result<()> {
        let n = self.epoll.wait(&mut self.events, Some(timeout))?;
        for i in 0..n {
            // Copied out: epoll_event is packed.
            let (key, flags) = (self.events[i].u64, self.events[i].events);
            let qd = Qd(key as u32);
            let listening = matches!(self.socks.get(&qd.0), Some(Sock::Listener(_)));
            if listening {
                self.accept_all(qd, queues)?;
                continue;
            }
            let Some(mut q) = queues.get_mut(qd) else { continue };
            if q.state == State::Connecting {
                let fd = match self.socks.get(&qd.0) {
                    Some(Sock::Stream(s)) => s.as_raw_fd(),
                    _ => continue,
                };
                match take_socket_error(fd) {
                    Ok(None) if flags & libc::EPOLLOUT as u32 != 0 => q.set_state(State::Open),
                    Ok(None) => {}
                    Ok(Some(e)) | Err(e) => q.fail(format!("cannot connect: {e}")),
                }
            }
            if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                self.read(qd, queues);
            }
            if let (Some(sock), Some(mut q)) = (self.socks.get_mut(&qd.0), queues.get_mut(qd)) {
                if q.state == State::Open {
                    write_out(sock, &mut q);
                }
            }
        }
        Ok(())
    }

    fn kick(&mut self, qd: Qd, queues: &mut Queues) -> io::Result<()> {
        if let (Some(sock), Some(mut q)) = (self.socks.get_mut(&qd.0), queues.get_mut(qd)) {
            if q.state == State::Open {
                write_out(sock, &mut q);
            }
        }
        Ok(())
    }

    fn close(&mut self, qd: Qd) {
        if let Some(sock) = self.socks.remove(&qd.0) {
            let fd = match &sock {
                Sock::Stream(s) => s.as_raw_fd(),
                Sock::Listener(l) => l.as_raw_fd(),
            };
            let _ = self.epoll.delete(fd);
        }
    }
}
