//! `iovec`: thread per connection with vectored I/O (scatter-gather).
//!
//! Same threading as `threads`, but one `readv` fills several chunk-sized buffers and one
//! `writev` hands the kernel a reply's header and its payload slices straight from where they
//! live (an echoed request's buffer, the pattern table): no copy into a send buffer, and a
//! large reply leaves in one syscall instead of one per chunk.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::TcpStream;

use super::blocking::retry;
use super::ConnError;
use crate::sansio::session::ServerSession;

/// Chunk-sized buffers filled by one readv.
const READ_BUFFERS: usize = 16;
/// Slices offered to one writev (the kernel's IOV_MAX is 1024).
const WRITE_SLICES: usize = 64;

/// This engine's face: the registry calls it for `--engine iovec`.
pub fn start(config: super::ServeConfig) -> anyhow::Result<super::RunningServer> {
    super::listen_and_run(config, super::Model::PerConnection(serve_connection))
}

pub fn serve_connection(stream: &mut TcpStream, session: &mut ServerSession) -> Result<(), ConnError> {
    let chunk = session.chunk_size();
    let mut buffers = vec![vec![0u8; chunk]; READ_BUFFERS];
    loop {
        let n = {
            let mut iov: Vec<IoSliceMut<'_>> = buffers.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            retry(|| stream.read_vectored(&mut iov))?
        };
        if n == 0 {
            return Ok(session.peer_closed()?);
        }
        let mut left = n;
        let mut received = Ok(0);
        for buffer in &buffers {
            if left == 0 || received.is_err() {
                break;
            }
            let filled = left.min(buffer.len());
            received = session.receive(&buffer[..filled]);
            left -= filled;
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
        // After the replies: an HTTP client is owed the response that refuses it.
        received?;
        if session.finished() {
            return Ok(());
        }
    }
}
