//! `threads`: the classic TCP server. One thread per connection, blocking calls, one buffer.
//!
//! The thread reads at most one chunk into its buffer, lets the session turn it into replies,
//! then writes the replies out one chunk per `write` call. Every chunk costs a syscall; the
//! thread sleeps in the kernel whenever the socket has nothing to give or no room to take,
//! and the scheduler, not the program, decides who runs next. Simple, and each idle
//! connection costs a whole thread (stack, scheduler entry).

use std::io::{Read, Write};
use std::net::TcpStream;

use super::blocking::retry;
use super::ConnError;
use crate::sansio::session::ServerSession;

/// This engine's face: the registry calls it for `--engine threads`.
pub fn start(config: super::ServeConfig) -> anyhow::Result<super::RunningServer> {
    super::listen_and_run(config, super::Model::PerConnection(serve_connection))
}

pub fn serve_connection(stream: &mut TcpStream, session: &mut ServerSession) -> Result<(), ConnError> {
    let mut buf = vec![0u8; session.chunk_size()];
    loop {
        let n = retry(|| stream.read(&mut buf))?;
        if n == 0 {
            return Ok(session.peer_closed()?);
        }
        // Replies go out before a protocol error ends the connection: an HTTP client is
        // owed the response that refuses it.
        let received = session.receive(&buf[..n]);
        while let Some(chunk) = session.out().front() {
            let written = retry(|| stream.write(chunk))?;
            session.wrote(written);
        }
        received?;
        if session.finished() {
            return Ok(());
        }
    }
}
