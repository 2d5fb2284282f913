//! `monoio`: the thread-per-core baseline on io_uring: a task per connection, owned buffers.
//!
//! monoio is the runtime a user would pick for io_uring without writing the ring by hand.
//! Each loop is a monoio runtime on its io_uring driver, pinned to its core; tasks never
//! move. Its I/O API follows from completions: a read or write *takes ownership* of its
//! buffer for the duration of the operation and gives it back with the result, because the
//! kernel holds the pointer until then. So replies are gathered into an owned buffer and
//! written with `write_all`, which is what idiomatic monoio code does; our `uring` engine
//! instead lends the kernel the session's own slices and keeps them in place itself.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

use super::conns::{connection_task, AcceptFailures, TaskTracker};
use super::{ConnError, EngineCtx, ServerStats};
use crate::sansio::session::{Next, ServerSession};

/// Bytes one read may bring in.
const READ_BUFFER: usize = 16 * 1024;
/// The most reply bytes gathered into one write.
const WRITE_BUFFER: usize = 64 * 1024;

/// This engine's face: the registry starts it for `--engine monoio`.
pub struct MonoioEngine;

impl super::Engine for MonoioEngine {
    type Options = super::MonoioOptions;
    fn start(
        config: super::ServeConfig,
        options: super::MonoioOptions,
    ) -> anyhow::Result<super::RunningServer> {
        // Fail before listening, with the reason, where io_uring cannot run.
        crate::os::uring::setup::try_ring(options.ring_entries, None)?;
        let entries = options.ring_entries;
        super::listen_and_run(
            config,
            super::Model::Loops(Arc::new(move |ctx, l| serve(ctx, l, entries))),
        )
    }
}

pub fn serve(ctx: Arc<EngineCtx>, listener: TcpListener, ring_entries: u32) -> anyhow::Result<()> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(ring_entries)
        .enable_timer()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the monoio runtime: {e}"))?;
    runtime.block_on(run(ctx, listener))
}

async fn run(ctx: Arc<EngineCtx>, listener: TcpListener) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = monoio::net::TcpListener::from_std(listener)?;
    let stop = monoio::net::UnixStream::from_std(ctx.shutdown.notify_socket()?)?;
    let stopped = async move {
        let mut stop = stop;
        let _ = stop.read(vec![0u8; 1]).await;
    };
    let mut stopped = std::pin::pin!(stopped);
    let tracker = TaskTracker::default();
    let mut failures = AcceptFailures::default();
    loop {
        monoio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    ServerStats::bump(&ctx.stats.accepted);
                    monoio::spawn(connection(ctx.clone(), tracker.clone(), stream, peer));
                }
                Err(e) => {
                    if let Some(pause) = failures.failed(&e, &ctx.stats, tracker.open()) {
                        monoio::time::sleep(pause).await;
                    }
                }
            }
        }
    }
    drop(listener);
    let within = |d, f| async move { monoio::time::timeout(d, f).await.is_ok() };
    tracker.drain(&ctx, within).await;
    Ok(())
}

async fn connection(
    ctx: Arc<EngineCtx>,
    tracker: TaskTracker,
    mut stream: monoio::net::TcpStream,
    peer: SocketAddr,
) {
    let (fd, set_up) = (stream.as_raw_fd(), stream.set_nodelay(true));
    let serve = async |session: &mut ServerSession| serve_connection(&mut stream, session).await;
    connection_task(&ctx, &tracker, fd, peer, set_up, serve).await;
}

async fn serve_connection(
    stream: &mut monoio::net::TcpStream,
    session: &mut ServerSession,
) -> Result<(), ConnError> {
    let mut buf = Vec::with_capacity(READ_BUFFER);
    let mut out = Vec::with_capacity(WRITE_BUFFER);
    let mut clock = super::RequestClock::default();
    loop {
        match session.next() {
            Next::Close(verdict) => return verdict.into(),
            Next::LastWrite => super::last_write(stream.as_raw_fd(), session),
            Next::Serve | Next::Flush => {
                flush(stream, session, &mut out).await?;
                if session.awaiting_memory() {
                    if !session.retry_memory() {
                        monoio::time::sleep(super::MEMORY_RETRY).await;
                    }
                } else if session.reading() {
                    let read = stream.read(std::mem::take(&mut buf));
                    let (result, read) = match clock.remaining(session, Instant::now) {
                        None => read.await,
                        Some(left) => match monoio::time::timeout(left, read).await {
                            Ok(done) => done,
                            Err(_) => {
                                // The buffer went with the cancelled read; the connection closes.
                                session.time_out();
                                continue;
                            }
                        },
                    };
                    buf = read;
                    match result? {
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

/// Writes every queued reply, gathered into the owned buffer `out` that each write borrows.
async fn flush(
    stream: &mut monoio::net::TcpStream,
    session: &mut ServerSession,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    while let Some(first) = session.out().front() {
        let mut gathered = std::mem::take(out);
        gathered.clear();
        gathered.extend_from_slice(first);
        let mut slices = [std::io::IoSlice::new(&[]); 64];
        let count = session.out().fill(&mut slices);
        for s in slices[..count].iter().skip(1) {
            if gathered.len() + s.len() > WRITE_BUFFER {
                break;
            }
            gathered.extend_from_slice(s);
        }
        let (result, buffer) = stream.write_all(gathered).await;
        let written = buffer.len();
        *out = buffer;
        result?;
        session.wrote(written);
    }
    Ok(())
}
