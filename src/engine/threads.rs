//! `threads`: the classic TCP server. One thread per connection, blocking calls, one buffer.
//!
//! The thread reads at most one chunk into its buffer, lets the session turn it into replies,
//! then writes the replies out one chunk per `write` call. Every chunk costs a syscall; the
//! thread sleeps in the kernel whenever the socket has nothing to give or no room to take,
//! and the scheduler, not the program, decides who runs next. Simple, and each idle
//! connection costs a whole thread (stack, scheduler entry).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use super::blocking::{retry, timed_read};
use super::ConnError;
use super::RequestClock;
use crate::sansio::session::{Next, ServerSession};

/// This engine's face: the registry calls it for `--engine threads`.
pub struct ThreadsEngine;

impl super::Engine for ThreadsEngine {
    type Options = ();
    fn start(config: super::ServeConfig, (): ()) -> anyhow::Result<super::RunningServer> {
        super::listen_and_run(config, super::Model::PerConnection(serve_connection))
    }
}

pub fn serve_connection(stream: &mut TcpStream, session: &mut ServerSession) -> Result<(), ConnError> {
    let mut buf = vec![0u8; session.chunk_size()];
    let mut clock = RequestClock::default();
    loop {
        match session.next() {
            Next::Close(verdict) => return verdict.into(),
            Next::LastWrite => super::last_write(stream.as_raw_fd(), session),
            Next::Serve | Next::Flush => {
                while let Some(chunk) = session.out().front() {
                    let written = retry(|| stream.write(chunk))?;
                    session.wrote(written);
                }
                if session.awaiting_memory() {
                    super::wait_for_memory(session);
                } else if session.reading() {
                    match timed_read(session, &mut clock, || stream.read(&mut buf))? {
                        None => {} // timed out: next() says close
                        Some(0) => session.peer_closed(),
                        // An error is the session's to remember: next() says what follows.
                        Some(n) => drop(session.receive(&buf[..n])),
                    }
                }
            }
        }
    }
}
