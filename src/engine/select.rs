//! `select`: one thread, one select(2) call per turn over every descriptor.
//!
//! Each turn rebuilds two bitmaps (who may be read, who written) from scratch, hands them to
//! the kernel, which walks every bit up to the highest descriptor, and then walks them again
//! itself to see who is ready: O(n) work per turn in the number of connections, ready or
//! not. The bitmaps have a fixed size, FD_SETSIZE (1024) bits: a descriptor at or above it
//! cannot be watched at all, so such connections are refused with a log line, not a crash
//! (writing past the bitmap would corrupt memory).

use std::io;
use std::net::TcpListener;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use super::nonblocking::{LoopCore, Token};
use super::EngineCtx;

/// This engine's face: the registry starts it for `--engine select`.
pub struct SelectEngine;

impl super::Engine for SelectEngine {
    type Options = ();
    fn start(config: super::ServeConfig, (): ()) -> anyhow::Result<super::RunningServer> {
        super::listen_and_run(config, super::Model::Loops(Arc::new(serve)))
    }
}

pub fn serve(ctx: Arc<EngineCtx>, listener: TcpListener) -> anyhow::Result<()> {
    let mut core = LoopCore::new(ctx, listener)?;
    let mut ready: Vec<Token> = Vec::new();
    loop {
        // SAFETY: fd_set is plain data; FD_ZERO and FD_SET only write inside it, and every
        // descriptor set here is below FD_SETSIZE (listener and eventfd are opened first;
        // connections at or above it are refused in `admit`).
        let (mut reads, mut writes) = unsafe { (empty_set(), empty_set()) };
        let mut max_fd = core.shutdown_fd();
        let mut add = |set: &mut libc::fd_set, fd: RawFd| {
            unsafe { libc::FD_SET(fd, set) };
            max_fd = max_fd.max(fd);
        };
        add(&mut reads, core.shutdown_fd());
        if let Some(fd) = core.listener_fd() {
            add(&mut reads, fd);
        }
        for (_, conn) in core.conns.iter() {
            if conn.wants_read() {
                add(&mut reads, conn.fd());
            }
            if conn.wants_write() {
                add(&mut writes, conn.fd());
            }
        }
        wait(max_fd, &mut reads, &mut writes, core.timeout())?;

        // SAFETY (all FD_ISSET below): reading bits of sets we own, for descriptors < FD_SETSIZE.
        if unsafe { libc::FD_ISSET(core.shutdown_fd(), &reads) } {
            for t in core.begin_shutdown() {
                core.drive(t);
            }
        }
        if core
            .listener_fd()
            .is_some_and(|fd| unsafe { libc::FD_ISSET(fd, &reads) })
        {
            core.accept(admit);
        }
        ready.clear();
        ready.extend(core.conns.iter().filter_map(|(t, c)| {
            let fd = c.fd();
            unsafe { libc::FD_ISSET(fd, &reads) || libc::FD_ISSET(fd, &writes) }.then_some(t)
        }));
        ready.extend(core.take_more_work());
        for &t in &ready {
            core.drive(t);
        }
        if core.finished() {
            return Ok(());
        }
    }
}

/// Refuses descriptors select(2) cannot represent.
fn admit(fd: RawFd) -> Result<(), String> {
    if fd >= libc::FD_SETSIZE as RawFd {
        Err(format!(
            "descriptor {fd} is at or above FD_SETSIZE ({}), which select(2) cannot watch; \
             use the poll or epoll engine for more connections",
            libc::FD_SETSIZE
        ))
    } else {
        Ok(())
    }
}

unsafe fn empty_set() -> libc::fd_set {
    let mut set: libc::fd_set = std::mem::zeroed();
    libc::FD_ZERO(&mut set);
    set
}

fn wait(
    max_fd: RawFd,
    reads: &mut libc::fd_set,
    writes: &mut libc::fd_set,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let mut tv = timeout.map(|t| libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    });
    let tv_ptr = tv
        .as_mut()
        .map_or(std::ptr::null_mut(), |t| t as *mut libc::timeval);
    // SAFETY: the sets and the timeval are valid for the call; null means "wait forever".
    crate::os::sys::restarting(|| unsafe {
        crate::syscall!(select(max_fd + 1, reads, writes, std::ptr::null_mut(), tv_ptr))
    })
    .map(|_| ())
}
