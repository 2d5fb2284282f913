//! `epoll`: one thread, an interest list kept in the kernel, only ready descriptors returned.
//!
//! Unlike select and poll, the loop tells the kernel once what to watch (`epoll_ctl`), and each
//! wait returns only the descriptors that are ready: the cost of a turn follows the number of
//! *ready* connections, not the number of open ones. Two ways to be told:
//!
//! - **level-triggered** (`--epoll-mode level`): a socket is reported for as long as it is
//!   readable (or writable). Simple, but the loop must keep the interest list exact, asking
//!   for writability only while replies wait and dropping readability under back-pressure,
//!   which costs an `epoll_ctl` each time interest changes.
//! - **edge-triggered** (`--epoll-mode edge`, the default): a socket is reported when it
//!   *becomes* ready. Interest is registered once (read and write) and never changed, so no
//!   `epoll_ctl` per request; in exchange the loop must read and write until the socket would
//!   block, or it will not hear of that socket again. [`LoopCore::drive`] does exactly that,
//!   and a connection whose turn ran out of budget is revisited before the next wait.

use std::net::TcpListener;
use std::sync::Arc;

use super::nonblocking::{Driven, LoopCore, Token};
use super::{EngineCtx, EpollMode};
use crate::sys::{interest, Epoll};

const SHUTDOWN: u64 = u64::MAX;
const LISTENER: u64 = u64::MAX - 1;

pub fn serve(ctx: Arc<EngineCtx>, listener: TcpListener) -> anyhow::Result<()> {
    let mode = ctx.config.epoll_mode;
    let mut core = LoopCore::new(ctx, listener)?;
    let epoll = Epoll::new()?;
    epoll.add(core.shutdown_fd(), SHUTDOWN, interest::READ)?;
    if let Some(fd) = core.listener_fd() {
        // The listener stays level-triggered in both modes: accept() drains it anyway.
        epoll.add(fd, LISTENER, interest::READ)?;
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut ready: Vec<Token> = Vec::new();
    loop {
        let n = epoll.wait(&mut events, core.timeout())?;
        ready.clear();
        for ev in &events[..n] {
            match ev.u64 {
                SHUTDOWN => {
                    if let Some(fd) = core.listener_fd() {
                        let _ = epoll.delete(fd);
                    }
                    ready.extend(core.begin_shutdown());
                }
                LISTENER => {
                    for t in core.accept(|_| Ok(())) {
                        let Some(conn) = core.conns.get_mut(t) else {
                            continue;
                        };
                        let wanted = match mode {
                            EpollMode::Edge => interest::READ | interest::WRITE | interest::EDGE,
                            EpollMode::Level => interest::READ,
                        };
                        conn.registered = wanted;
                        epoll.add(conn.fd(), t as u64, wanted)?;
                        // Data may have arrived before registration; with edges it would
                        // never be announced.
                        ready.push(t);
                    }
                }
                t => ready.push(t as usize),
            }
        }
        ready.extend(core.take_more_work());
        for &t in &ready {
            if core.drive(t) == Driven::Open && mode == EpollMode::Level {
                update_level_interest(&mut core, &epoll, t)?;
            }
        }
        if core.finished() {
            return Ok(());
        }
    }
}

/// Level-triggered: register exactly what the connection waits for, or the loop would be
/// woken again and again for readiness it cannot use.
fn update_level_interest(core: &mut LoopCore, epoll: &Epoll, t: Token) -> std::io::Result<()> {
    let Some(conn) = core.conns.get_mut(t) else {
        return Ok(());
    };
    let mut wanted = 0;
    if conn.wants_read() {
        wanted |= interest::READ;
    }
    if conn.wants_write() {
        wanted |= interest::WRITE;
    }
    if wanted != conn.registered {
        conn.registered = wanted;
        epoll.modify(conn.fd(), t as u64, wanted)?;
    }
    Ok(())
}
