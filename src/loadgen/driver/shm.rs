//! The shared-memory I/O model: each connection is a slot of a `serve --engine shm` segment,
//! and the driver polls the slots' downstream rings itself. Nothing blocks and nothing enters
//! the kernel; a wait for the next send is a spin over the rings, so replies are seen the
//! moment they land (the driver's core is its own, pinned).

use std::time::Duration;

use super::{Conn, Link, Polled, Tally};
use crate::clock::now_ns;

/// Polls between checks that the server is still there.
const GONE_CHECK_EVERY: u32 = 4096;

pub struct ShmIo {
    buf: Vec<u8>,
    polls: u32,
}

impl ShmIo {
    pub fn new(chunk_size: usize) -> ShmIo {
        ShmIo {
            buf: vec![0; chunk_size.max(64 << 10)],
            polls: 0,
        }
    }

    /// Moves bytes both ways on every connection until something arrives or `timeout` passes.
    pub fn poll(
        &mut self,
        conns: &mut [Conn],
        tally: &mut Tally,
        timeout: Duration,
    ) -> Result<Polled, String> {
        let start = now_ns();
        let deadline = start + timeout.as_nanos() as u64;
        loop {
            let mut events = 0;
            for (slot, conn) in conns.iter_mut().enumerate() {
                flush(conn, tally, slot)?;
                let Link::Shm(link) = &conn.link else {
                    return Err("internal: a TCP connection in the shared-memory driver".into());
                };
                let n = link
                    .down
                    .pop(&mut self.buf)
                    .map_err(|e| format!("connection {slot}: {e}"))?;
                if n > 0 {
                    events += 1;
                    super::received(conn, tally, slot, &self.buf[..n], now_ns())?;
                }
            }
            self.polls = self.polls.wrapping_add(1);
            if self.polls.is_multiple_of(GONE_CHECK_EVERY) {
                for (slot, conn) in conns.iter().enumerate() {
                    if let Link::Shm(link) = &conn.link {
                        if link.server_gone() {
                            return Err(super::server_closed(slot, conn));
                        }
                    }
                }
            }
            let now = now_ns();
            if events > 0 || now >= deadline {
                return Ok(Polled {
                    events,
                    waited_ns: if events > 0 { 0 } else { now - start },
                });
            }
            std::hint::spin_loop();
        }
    }
}

/// Pushes what connection `slot` has to send into its upstream ring, as far as it has room.
pub fn flush(conn: &mut Conn, tally: &mut Tally, slot: usize) -> Result<(), String> {
    let Link::Shm(link) = &conn.link else {
        return Err("internal: a TCP connection in the shared-memory driver".into());
    };
    while let Some(s) = conn.client.out().front() {
        let n = link.up.push(s).map_err(|e| format!("connection {slot}: {e}"))?;
        if n == 0 {
            break;
        }
        tally.out.m.bytes_sent += n as u64;
        conn.client.wrote(n);
    }
    Ok(())
}
