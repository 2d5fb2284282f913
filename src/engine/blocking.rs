//! The thread-per-connection skeleton shared by `threads` and `iovec`.
//!
//! One acceptor thread waits (poll) on the listener and on the shutdown signal; each accepted
//! connection gets its own thread that blocks in read and write, so the kernel's scheduler is
//! the event loop. The two engines differ only in the per-connection function they pass in:
//! how the bytes move, which is the lesson.
//!
//! Shutdown: the acceptor stops accepting and half-closes every connection for reading
//! (`shutdown(SHUT_RD)`). A blocked read then returns what the socket already holds and then
//! end-of-file, so every request that reached the server is answered. A connection that still
//! has not finished after the drain timeout (its peer never reads) is cut off for writing too.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conns::{out_of_fds, Registry};
use super::{out_of_fds_message, wait_readable, ConnError, Drain, EngineCtx, RequestClock, ServerStats};
use crate::sansio::session::ServerSession;

/// Serves one connection until the peer closes it or it fails.
pub type ConnFn = fn(&mut TcpStream, &mut ServerSession) -> Result<(), ConnError>;

pub fn serve(ctx: Arc<EngineCtx>, listener: TcpListener, serve_conn: ConnFn) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let registry = Arc::new(Registry::default());
    let (done_tx, done_rx) = mpsc::channel::<u64>();
    let mut threads = HashMap::new();
    let mut warned_fd_limit = false;

    while !ctx.shutdown.is_triggered() {
        let ready = wait_readable(&[listener.as_raw_fd(), ctx.shutdown.fd()], None)?;
        if ready[1] {
            break;
        }
        // Reap finished threads so a long-running server does not accumulate handles.
        while let Ok(id) = done_rx.try_recv() {
            if let Some(t) = threads.remove(&id) {
                let _ = std::thread::JoinHandle::join(t);
            }
        }
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    ServerStats::bump(&ctx.stats.accepted);
                    let id = registry.add(stream.as_raw_fd());
                    let (conn_ctx, conn_registry, done) = (ctx.clone(), registry.clone(), done_tx.clone());
                    let spawned = std::thread::Builder::new()
                        .name(format!("conn-{id}"))
                        .spawn(move || {
                            let mut stream = stream;
                            run_connection(&conn_ctx, &mut stream, peer, serve_conn);
                            conn_registry.remove(id);
                            drop(stream); // closed only now that shutdown cannot reach it
                            let _ = done.send(id);
                        });
                    match spawned {
                        Ok(handle) => {
                            threads.insert(id, handle);
                        }
                        Err(e) => {
                            // The closure (and the stream) is dropped: the connection closes.
                            registry.remove(id);
                            ctx.stats.refused();
                            eprintln!("iolab: cannot start a thread for {peer}: {e}");
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the connection waits in the backlog until a
                    // connection closes; back off rather than spin, and say so once.
                    let out_of_fds = out_of_fds(&e);
                    if !(out_of_fds && warned_fd_limit) {
                        if out_of_fds {
                            eprintln!("iolab: {}", out_of_fds_message(threads.len()));
                            warned_fd_limit = true;
                        } else {
                            eprintln!("iolab: accept failed: {e}");
                        }
                    }
                    wait_readable(&[ctx.shutdown.fd()], Some(Duration::from_millis(10)))?;
                    break;
                }
            }
        }
    }
    drop(listener);

    registry.shutdown_all(libc::SHUT_RD);
    let mut drain = Drain::begin(&ctx);
    let mut cut_off = false;
    while !threads.is_empty() {
        match done_rx.recv_timeout(if cut_off {
            Duration::from_secs(1)
        } else {
            drain.remaining()
        }) {
            Ok(id) => {
                if let Some(t) = threads.remove(&id) {
                    let _ = t.join();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if !cut_off => {
                // Each thread owns its session: the cut-off reaches it through its socket.
                drain.cut_off(threads.len());
                registry.shutdown_all(libc::SHUT_RDWR);
                cut_off = true;
            }
            Err(_) => break,
        }
    }
    Ok(())
}

fn run_connection(ctx: &EngineCtx, stream: &mut TcpStream, peer: SocketAddr, serve_conn: ConnFn) {
    let mut session = ctx.new_session();
    // A read blocks no longer than a request may take: a client that stops half-way through
    // one is found when the read times out (an idle one simply reads again).
    let timeout = Some(ctx.config.session.request_timeout).filter(|t| !t.is_zero());
    let result = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_nodelay(true))
        .and_then(|()| stream.set_read_timeout(timeout))
        .map_err(ConnError::from)
        .and_then(|()| serve_conn(stream, &mut session));
    ctx.connection_closed(peer, result, session.counters());
}

/// A blocking `read` (with [`retry`]) under the request timeout: `None` once the session is
/// timed out (its next() then says close), the read's byte count otherwise. The clock is
/// brought up to date with what the caller fed the session since the last call.
pub fn timed_read(
    session: &mut ServerSession,
    clock: &mut RequestClock,
    mut read: impl FnMut() -> io::Result<usize>,
) -> io::Result<Option<usize>> {
    clock.update(session, Instant::now);
    // A trickling client is never idle long enough for the read to time out.
    if clock.enforce(session, Instant::now) {
        return Ok(None);
    }
    loop {
        match retry(&mut read) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if clock.enforce(session, Instant::now) {
                    return Ok(None);
                }
                // Idle between requests: that is the client's right.
            }
            Err(e) => return Err(e),
        }
    }
}

/// `read` that retries when a signal interrupts it.
pub fn retry<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
