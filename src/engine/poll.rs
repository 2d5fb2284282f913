//! `poll`: one thread, one poll(2) call per turn over an array of descriptors.
//!
//! Like select, but the interest list is an array of `pollfd` rather than fixed-size bitmaps,
//! so any descriptor number works and the size is the number of connections, not the highest
//! descriptor. The cost shape is the same: each turn the array goes to the kernel, which checks
//! every entry, and back, and the loop scans every `revents`: O(n) per turn, ready or not.

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use super::nonblocking::{LoopCore, Token};
use super::EngineCtx;

const SHUTDOWN: Token = usize::MAX;
const LISTENER: Token = usize::MAX - 1;

/// This engine's face: the registry starts it for `--engine poll`.
pub struct PollEngine;

impl super::Engine for PollEngine {
    type Options = ();
    fn start(config: super::ServeConfig, (): ()) -> anyhow::Result<super::RunningServer> {
        super::listen_and_run(config, super::Model::Loops(Arc::new(serve)))
    }
}

pub fn serve(ctx: Arc<EngineCtx>, listener: TcpListener) -> anyhow::Result<()> {
    let mut core = LoopCore::new(ctx, listener)?;
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut tokens: Vec<Token> = Vec::new();
    let mut ready: Vec<Token> = Vec::new();
    loop {
        fds.clear();
        tokens.clear();
        let mut watch = |fd, events, token| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            tokens.push(token);
        };
        watch(core.shutdown_fd(), libc::POLLIN, SHUTDOWN);
        if let Some(fd) = core.listener_fd() {
            watch(fd, libc::POLLIN, LISTENER);
        }
        for (t, conn) in core.conns.iter() {
            let mut events = 0;
            if conn.wants_read() {
                events |= libc::POLLIN;
            }
            if conn.wants_write() {
                events |= libc::POLLOUT;
            }
            // Entries with no interest still report errors and hang-ups; leave them out.
            if events != 0 {
                watch(conn.fd(), events, t);
            }
        }
        wait(&mut fds, core.timeout())?;

        ready.clear();
        let mut accept = false;
        let mut stop = false;
        for (pfd, &t) in fds.iter().zip(&tokens) {
            if pfd.revents == 0 {
                continue;
            }
            match t {
                SHUTDOWN => stop = true,
                LISTENER => accept = true,
                _ => ready.push(t),
            }
        }
        if stop {
            ready.extend(core.begin_shutdown());
        }
        if accept {
            core.accept(|_| Ok(()));
        }
        ready.extend(core.take_more_work());
        for &t in &ready {
            core.drive(t);
        }
        if core.finished() {
            return Ok(());
        }
    }
}

fn wait(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    // Round up: a 0.3 ms deadline must not become a 0 ms busy loop.
    let ms = timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32);
    // SAFETY: fds is a valid, writable array of the length passed.
    crate::os::sys::restarting(|| unsafe {
        crate::syscall!(poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms))
    })
    .map(|_| ())
}
