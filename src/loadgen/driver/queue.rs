//! The queue-API driver: the generator's connections are queues of a [`LibOs`], so this
//! one loop drives every transport the queue API has (kernel TCP, shared memory, the
//! user-space TCP/IP stack). Connects, sends and receives are tokens; a poll takes the
//! completed ones with `wait_next`, which costs what completed (not what is outstanding),
//! and hands each received buffer back for the next pop (no allocation per reply).
//!
//! With shared memory the wait is a spin over the rings (nothing enters the kernel); with
//! kernel TCP it is an epoll wait; with the user-space stack, a poll on its TAP device.

use std::time::Duration;

use super::{Conn, Link, Polled, Tally};
use crate::loadgen::error::LoadError;
use crate::loadgen::{ConnectMode, LoadConfig};
use crate::queue::{Endpoint, LibOs, Outcome, QToken};

/// How long a sequential connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Completions handled in one poll before the schedule gets its turn again.
const MAX_PER_POLL: usize = 4096;

#[derive(Clone, Copy)]
enum Waiting {
    Connect,
    Pop,
}

pub struct QueueIo {
    os: LibOs,
    endpoint: Endpoint,
    /// For each token in flight (by [`QToken::key`]), the connection it serves and what it is.
    owners: Vec<Option<(usize, Waiting)>>,
}

impl QueueIo {
    pub fn new(cfg: &LoadConfig) -> Result<QueueIo, LoadError> {
        let (os, endpoint) = match (&cfg.shm, &cfg.userspace) {
            (Some(name), _) => (LibOs::shm(), Endpoint::Shm(name.clone())),
            (None, Some(stack)) => (
                LibOs::smoltcp(stack).map_err(|e| LoadError::Setup(format!("{e:#}")))?,
                Endpoint::Tcp(cfg.addr),
            ),
            (None, None) => (
                LibOs::tcp().map_err(LoadError::os("cannot create an epoll instance"))?,
                Endpoint::Tcp(cfg.addr),
            ),
        };
        Ok(QueueIo {
            os,
            endpoint,
            owners: Vec::new(),
        })
    }

    fn track(&mut self, token: QToken, slot: usize, what: Waiting) {
        let key = token.key();
        if self.owners.len() <= key {
            self.owners.resize(key + 1, None);
        }
        self.owners[key] = Some((slot, what));
    }

    /// Opens connection `slot`: waited for (sequential) or left to complete in `poll`.
    pub fn connect(&mut self, slot: usize, mode: ConnectMode) -> Result<(Link, bool), LoadError> {
        let failed = |e: &dyn std::fmt::Display| LoadError::Connect {
            to: self.endpoint.to_string(),
            why: e.to_string(),
            refused: false,
        };
        let (qd, token) = self.os.connect(&self.endpoint).map_err(|e| failed(&e))?;
        if mode == ConnectMode::Concurrent {
            self.track(token, slot, Waiting::Connect);
            return Ok((Link::Queue(qd), false));
        }
        match self
            .os
            .wait_any(&[token], CONNECT_TIMEOUT)
            .map_err(|e| failed(&e))?
        {
            Some((_, c)) if c.outcome == Outcome::Connected => {
                let pop = self.os.pop(qd);
                self.track(pop, slot, Waiting::Pop);
                Ok((Link::Queue(qd), true))
            }
            Some((_, c)) => Err(failed(&format!("{:?}", c.outcome))),
            None => Err(failed(&format!("no answer in {CONNECT_TIMEOUT:?}"))),
        }
    }

    pub fn poll(
        &mut self,
        conns: &mut [Conn],
        tally: &mut Tally,
        timeout: Duration,
    ) -> Result<Polled, LoadError> {
        let mut events = 0;
        while events < MAX_PER_POLL {
            // The first completion is waited for; the rest are what that wait brought, so
            // the schedule gets its turn again after one look at the transport.
            let done = if events == 0 {
                self.os.wait_next(timeout).map_err(LoadError::os("queue wait"))?
            } else {
                self.os.next_ready()
            };
            let Some((token, completion)) = done else { break };
            events += 1;
            let Some((slot, what)) = self.owners.get_mut(token.key()).and_then(Option::take) else {
                // Every token this driver makes is tracked, and each completes once.
                return Err(LoadError::Internal(format!(
                    "a completion nobody waits for: {completion:?}"
                )));
            };
            let (qd, at_ns) = (completion.qd, completion.at_ns);
            match (what, completion.outcome) {
                (Waiting::Connect, Outcome::Connected) => {
                    conns[slot].connected = true;
                    let pop = self.os.pop(qd);
                    self.track(pop, slot, Waiting::Pop);
                    self.send(conns, tally, slot)?;
                }
                (Waiting::Pop, Outcome::Popped(data)) => {
                    super::received(&mut conns[slot], tally, slot, &data, at_ns)?;
                    self.os.recycle(data);
                    let pop = self.os.pop(qd);
                    self.track(pop, slot, Waiting::Pop);
                }
                (Waiting::Pop, Outcome::Closed) => return Err(super::server_closed(slot, &conns[slot])),
                (Waiting::Connect, Outcome::Failed(why)) => {
                    return Err(LoadError::Connect {
                        to: self.endpoint.to_string(),
                        why: why.to_string(),
                        refused: false,
                    })
                }
                (_, Outcome::Failed(why)) => return Err(LoadError::failed(slot, why)),
                (_, other) => {
                    return Err(LoadError::Internal(format!(
                        "connection {slot}: unexpected {other:?}"
                    )))
                }
            }
        }
        // The wait is the caller's to time (it reads the clock around an empty poll anyway);
        // a poll that handled completions waited for nothing it could measure without a
        // clock read of its own on every turn.
        Ok(Polled { events, waited_ns: 0 })
    }

    /// Pushes what connection `slot` has queued (once it is connected).
    pub fn send(&mut self, conns: &mut [Conn], tally: &mut Tally, slot: usize) -> Result<(), LoadError> {
        let conn = &mut conns[slot];
        if !conn.connected {
            return Ok(());
        }
        let Link::Queue(qd) = conn.link else {
            return Err(LoadError::Internal("a TCP socket in the queue driver".into()));
        };
        // Untracked: every connection has a pop outstanding, which a failure ends.
        while let Some(s) = conn.client.out().front() {
            let n = s.len();
            self.os
                .push_untracked(qd, s)
                .map_err(|e| LoadError::failed(slot, e))?;
            conn.client.wrote(n);
            tally.out.m.bytes_sent += n as u64;
        }
        Ok(())
    }

    /// Closes every queue (a shared-memory slot is handed back, a stack's socket sends FIN).
    pub fn close_all(&mut self, conns: &[Conn]) {
        for conn in conns {
            if let Link::Queue(qd) = conn.link {
                self.os.close(qd);
            }
        }
    }
}
