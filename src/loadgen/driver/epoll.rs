//! The epoll driver: non-blocking sockets, edge-triggered readiness.
//!
//! A readable event is answered by reads until EAGAIN; a request is written at once and what
//! does not fit waits in the connection's queue for `EPOLLOUT`. Per reply that is an
//! `epoll_pwait2` and two reads (the second one says EAGAIN).

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use super::{Conn, Link, Polled, Tally};
use crate::loadgen::error::LoadError;
use crate::os::clock::now_ns;
use crate::os::sys::{interest, Epoll};

/// Bytes read per read call.
const READ_BUFFER: usize = 256 * 1024;

pub struct EpollIo {
    addr: SocketAddr,
    epoll: Epoll,
    events: Vec<libc::epoll_event>,
    read_buf: Vec<u8>,
}

impl EpollIo {
    pub fn new(addr: SocketAddr) -> Result<Self, LoadError> {
        Ok(EpollIo {
            addr,
            epoll: Epoll::new().map_err(LoadError::os("cannot create an epoll instance"))?,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
            read_buf: vec![0; READ_BUFFER],
        })
    }

    pub fn add(&mut self, slot: usize, conn: &Conn) -> Result<(), LoadError> {
        self.epoll
            .add(
                conn.fd()?,
                slot as u64,
                interest::READ | interest::WRITE | interest::EDGE,
            )
            .map_err(LoadError::os("epoll_ctl"))
    }

    pub fn poll(
        &mut self,
        conns: &mut [Conn],
        tally: &mut Tally,
        timeout: Duration,
    ) -> Result<Polled, LoadError> {
        let before = now_ns();
        let n = self
            .epoll
            .wait(&mut self.events, Some(timeout))
            .map_err(LoadError::os("epoll_wait"))?;
        let waited_ns = now_ns().saturating_sub(before);
        for i in 0..n {
            // Copied out: epoll_event is packed.
            let (slot, flags) = (self.events[i].u64 as usize, self.events[i].events);
            if !conns[slot].connected {
                finish_connect(&mut conns[slot], flags, self.addr)?;
            }
            if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                self.read(conns, tally, slot)?;
            }
            if flags & libc::EPOLLOUT as u32 != 0 {
                self.flush(conns, tally, slot)?;
            }
        }
        Ok(Polled { events: n, waited_ns })
    }

    fn read(&mut self, conns: &mut [Conn], tally: &mut Tally, slot: usize) -> Result<(), LoadError> {
        let conn = &mut conns[slot];
        if !conn.connected {
            return Ok(());
        }
        loop {
            let Link::Tcp(stream) = &mut conn.link else {
                return Err(LoadError::Internal(
                    "a shared-memory connection in the epoll driver".into(),
                ));
            };
            match stream.read(&mut self.read_buf) {
                Ok(0) => return Err(super::server_closed(slot, conn)),
                Ok(n) => super::received(conn, tally, slot, &self.read_buf[..n], now_ns())?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(super::socket_failed(slot, conn, e)),
            }
        }
    }

    pub fn flush(&mut self, conns: &mut [Conn], tally: &mut Tally, slot: usize) -> Result<(), LoadError> {
        let conn = &mut conns[slot];
        if !conn.connected {
            return Ok(());
        }
        loop {
            let result = {
                let mut slices = [IoSlice::new(&[]); 64];
                let n = conn.client.out().fill(&mut slices);
                if n == 0 {
                    return Ok(());
                }
                let Link::Tcp(stream) = &mut conn.link else {
                    return Err(LoadError::Internal(
                        "a shared-memory connection in the epoll driver".into(),
                    ));
                };
                stream.write_vectored(&slices[..n])
            };
            match result {
                Ok(n) => {
                    tally.out.m.bytes_sent += n as u64;
                    conn.client.wrote(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(super::socket_failed(slot, conn, e)),
            }
        }
    }
}

fn finish_connect(conn: &mut Conn, flags: u32, addr: SocketAddr) -> Result<(), LoadError> {
    if flags & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
        return Ok(());
    }
    super::check_connected(conn, addr)
}
