//! `tokio`: the baseline most Rust servers are: a task per connection on an async runtime.
//!
//! Each loop is a current-thread tokio runtime (its reactor is epoll, edge-triggered, like
//! our `epoll` engine) with a `LocalSet`, so connection tasks never leave the loop's thread:
//! the same share-nothing shape as the other event engines under `--threads N`. The code is
//! what a tokio user would write: `accept().await`, `spawn_local`, `read(&mut buf).await`,
//! `write_vectored(..).await`. The cost of the model (a future state machine, a waker, a
//! task per connection) is what this engine measures against hand-driven `epoll`.

use std::io::IoSlice;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conns::{connection_task, AcceptFailures, TaskTracker};
use super::{ConnError, EngineCtx, ServerStats};
use crate::sansio::session::{Next, ServerSession};

/// Bytes one read may bring in.
const READ_BUFFER: usize = 16 * 1024;
/// Slices offered to one writev.
const WRITE_SLICES: usize = 64;

/// This engine's face: the registry starts it for `--engine tokio`.
pub struct TokioEngine;

impl super::Engine for TokioEngine {
    type Options = ();
    fn start(config: super::ServeConfig, (): ()) -> anyhow::Result<super::RunningServer> {
        super::listen_and_run(config, super::Model::Loops(Arc::new(serve)))
    }
}

pub fn serve(ctx: Arc<EngineCtx>, listener: TcpListener) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(ctx, listener))
}

async fn run(ctx: Arc<EngineCtx>, listener: TcpListener) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let stop = tokio::net::UnixStream::from_std(ctx.shutdown.notify_socket()?)?;
    let tracker = TaskTracker::default();
    let mut failures = AcceptFailures::default();
    loop {
        tokio::select! {
            _ = stop.readable() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    ServerStats::bump(&ctx.stats.accepted);
                    tokio::task::spawn_local(connection(ctx.clone(), tracker.clone(), stream, peer));
                }
                Err(e) => {
                    if let Some(pause) = failures.failed(&e, &ctx.stats, tracker.open()) {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }
    drop(listener);
    let within = |d, f| async move { tokio::time::timeout(d, f).await.is_ok() };
    tracker.drain(&ctx, within).await;
    Ok(())
}

async fn connection(
    ctx: Arc<EngineCtx>,
    tracker: TaskTracker,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let (fd, set_up) = (stream.as_raw_fd(), stream.set_nodelay(true));
    let serve = async |session: &mut ServerSession| serve_connection(&mut stream, session).await;
    connection_task(&ctx, &tracker, fd, peer, set_up, serve).await;
}

async fn serve_connection(
    stream: &mut tokio::net::TcpStream,
    session: &mut ServerSession,
) -> Result<(), ConnError> {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut clock = super::RequestClock::default();
    loop {
        match session.next() {
            Next::Close(verdict) => return verdict.into(),
            Next::LastWrite => super::last_write(stream.as_raw_fd(), session),
            Next::Serve | Next::Flush => {
                flush(stream, session).await?;
                if session.awaiting_memory() {
                    if !session.retry_memory() {
                        tokio::time::sleep(super::MEMORY_RETRY).await;
                    }
                } else if session.reading() {
                    let read = stream.read(&mut buf);
                    let n = match clock.remaining(session, Instant::now) {
                        None => read.await?,
                        Some(left) => match tokio::time::timeout(left, read).await {
                            Ok(n) => n?,
                            Err(_) => {
                                session.time_out();
                                continue;
                            }
                        },
                    };
                    match n {
                        0 => session.peer_closed(),
                        // An error is the session's to remember: next() says what follows.
                        n => drop(session.receive(&buf[..n])),
                    }
                    clock.update(session, Instant::now);
                }
            }
        }
    }
}

async fn flush(stream: &mut tokio::net::TcpStream, session: &mut ServerSession) -> std::io::Result<()> {
    while !session.out().is_empty() {
        let written = {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let count = session.out().fill(&mut slices);
            stream.write_vectored(&slices[..count]).await?
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        session.wrote(written);
    }
    Ok(())
}
