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

use super::nonblocking::{Driven, EpollWaiter, LoopCore, Token};
use super::{EngineCtx, EpollMode, EpollOptions};
use crate::os::sys::{interest, Epoll};

/// This engine's face: the registry starts it for `--engine epoll`.
pub struct EpollEngine;

impl super::Engine for EpollEngine {
    type Options = EpollOptions;
    fn start(config: super::ServeConfig, options: EpollOptions) -> anyhow::Result<super::RunningServer> {
        let mode = options.mode;
        super::listen_and_run(
            config,
            super::Model::Loops(Arc::new(move |ctx, l| serve(ctx, l, mode))),
        )
    }
}

pub fn serve(ctx: Arc<EngineCtx>, listener: TcpListener, mode: EpollMode) -> anyhow::Result<()> {
    let mut core = LoopCore::new(ctx, listener)?;
    let mut waiter = EpollWaiter::new(&core)?;
    // Edge: ask for everything once and never again. Level: start with reads only and keep
    // the interest exact after every turn.
    let initial = match mode {
        EpollMode::Edge => interest::READ | interest::WRITE | interest::EDGE,
        EpollMode::Level => interest::READ,
    };
    let mut ready: Vec<Token> = Vec::new();
    loop {
        ready.clear();
        waiter.wait(&mut core, initial, &mut ready, |_| {})?;
        ready.extend(core.take_more_work());
        for &t in &ready {
            if core.drive(t) == Driven::Open && mode == EpollMode::Level {
                update_level_interest(&mut core, &waiter.epoll, t)?;
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
