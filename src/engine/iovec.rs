//! `iovec`: thread per connection with vectored I/O (scatter-gather).
//!
//! Same threading as `threads`, but one `readv` fills several chunk-sized buffers and one
//! `writev` hands the kernel a reply's header and its payload slices straight from where they
//! live (an echoed request's buffer, the pattern table): no copy into a send buffer, and a
//! large reply leaves in one syscall instead of one per chunk.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use super::blocking::{retry, timed_read};
use super::{ConnError, RequestClock};
use crate::sansio::session::{Next, ServerSession};

/// Chunk-sized buffers filled by one readv.
const READ_BUFFERS: usize = 16;
/// Slices offered to one writev (the kernel's IOV_MAX is 1024).
const WRITE_SLICES: usize = 64;

/// This engine's face: the registry calls it for `--engine iovec`.
pub struct IovecEngine;

impl super::Engine for IovecEngine {
    type Options = ();
    fn start(config: super::ServeConfig, (): ()) -> anyhow::Result<super::RunningServer> {
        super::listen_and_run(config, super::Model::PerConnection(serve_connection))
    }
}

pub fn serve_connection(stream: &mut TcpStream, session: &mut ServerSession) -> Result<(), ConnError> {
    let chunk = session.chunk_size();
    let mut buffers = vec![vec![0u8; chunk]; READ_BUFFERS];
    let mut clock = RequestClock::default();
    loop {
        match session.next() {
            Next::Close(verdict) => return verdict.into(),
            Next::LastWrite => {
                super::last_write(stream.as_raw_fd(), session);
                continue;
            }
            Next::Serve | Next::Flush => {}
        }
        loop {
            let written = {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let count = session.out().fill(&mut slices);
                if count == 0 {
                    break;
                }
                retry(|| stream.write_vectored(&slices[..count]))?
            };
            session.wrote(written);
        }
        if session.awaiting_memory() {
            super::wait_for_memory(session);
            continue;
        }
        if !session.reading() {
            continue;
        }
        let n = {
            let mut iov: Vec<IoSliceMut<'_>> = buffers.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match timed_read(session, &mut clock, || stream.read_vectored(&mut iov))? {
                Some(n) => n,
                None => continue, // timed out: next() says close
            }
        };
        if n == 0 {
            session.peer_closed();
        }
        let mut left = n;
        for buffer in &buffers {
            // After an error the session reads nothing more; next() says what follows.
            if left == 0 || !session.reading() {
                break;
            }
            let filled = left.min(buffer.len());
            let _ = session.receive(&buffer[..filled]);
            left -= filled;
        }
    }
}
