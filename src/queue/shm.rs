//! The queue API over shared memory: a connection is a slot of a `/dev/shm/iolab-NAME`
//! segment ([`crate::shm`]), its two rings the transport.
//!
//! `connect` claims a slot of a server's segment; `listen` creates a segment and every slot
//! a client claims becomes an accepted queue. Nothing blocks: `progress` spins over the
//! rings until something moves or its time is up, as a polling LibOS does.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use super::{Backend, Endpoint, Qd, Queue, Queues, State};
use crate::clock::now_ns;
use crate::shm::{Connection, Ring, Segment, CLAIMED, CLOSED};

/// Polls between checks that the other side is still there.
const LIVENESS_EVERY: u32 = 4096;
/// Slots and ring size of a segment made by `listen`.
const LISTEN_SLOTS: u32 = 64;
const LISTEN_RING: usize = 256 << 10;

enum Link {
    /// Our claim on a server's slot.
    Client(Box<Connection>),
    /// A slot of our own segment, claimed by a client.
    Server {
        listener: Qd,
        slot: u32,
        up: Ring,
        down: Ring,
    },
}

pub struct ShmBackend {
    links: HashMap<u32, Link>,
    /// Our segments, by listening queue, with the queue of each claimed slot.
    segments: HashMap<u32, (Segment, HashMap<u32, Qd>)>,
    buf: Vec<u8>,
    polls: u32,
}

impl Default for ShmBackend {
    fn default() -> Self {
        ShmBackend {
            links: HashMap::new(),
            segments: HashMap::new(),
            buf: vec![0; 64 << 10],
            polls: 0,
        }
    }
}

fn corrupt(e: crate::shm::Corrupt) -> String {
    format!("shared-memory ring: {e}")
}

impl ShmBackend {
    /// Moves bytes both ways on one link; returns whether anything moved.
    fn turn(buf: &mut [u8], link: &Link, q: &mut Queue) -> bool {
        let (to_peer, from_peer) = match link {
            Link::Client(c) => (&c.up, &c.down),
            Link::Server { up, down, .. } => (down, up),
        };
        let mut moved = false;
        if !q.pending_out().is_empty() {
            match to_peer.push(q.pending_out()) {
                Ok(n) => {
                    moved |= n > 0;
                    q.sent(n);
                }
                Err(e) => q.fail(corrupt(e)),
            }
        }
        match from_peer.pop(buf) {
            Ok(0) => {}
            Ok(n) => {
                moved = true;
                q.deliver(&buf[..n]);
            }
            Err(e) => q.fail(corrupt(e)),
        }
        moved
    }

    /// Claimed slots of our segments become queues; slots their clients closed end theirs.
    fn watch_segments(&mut self, queues: &mut Queues) -> bool {
        let mut moved = false;
        for (listener, (segment, by_slot)) in self.segments.iter_mut() {
            for slot in 0..segment.slots() {
                let (state, _) = segment.slot_state(slot);
                match (state, by_slot.get(&slot)) {
                    (CLAIMED, None) => {
                        let qd = queues.add(Queue::new(State::Open));
                        let (up, down) = segment.rings(slot);
                        by_slot.insert(slot, qd);
                        self.links.insert(
                            qd.0,
                            Link::Server {
                                listener: Qd(*listener),
                                slot,
                                up,
                                down,
                            },
                        );
                        queues.accepted(Qd(*listener), qd);
                        moved = true;
                    }
                    (CLOSED, Some(&qd)) if queues.get(qd).is_some_and(|q| q.state == State::Open) => {
                        if let Some(q) = queues.get_mut(qd) {
                            if let Some(link) = self.links.get(&qd.0) {
                                Self::turn(&mut self.buf, link, q);
                            }
                            q.set_state(State::PeerClosed);
                        }
                        moved = true;
                    }
                    _ => {}
                }
            }
        }
        moved
    }
}

impl Backend for ShmBackend {
    fn connect(&mut self, qd: Qd, to: &Endpoint, queues: &mut Queues) -> io::Result<()> {
        let Endpoint::Shm(name) = to else {
            return Err(to.refused("shared memory connects to a segment name"));
        };
        let conn = Connection::connect(name).map_err(|e| io::Error::other(e.to_string()))?;
        self.links.insert(qd.0, Link::Client(Box::new(conn)));
        if let Some(q) = queues.get_mut(qd) {
            q.set_state(State::Open);
        }
        Ok(())
    }

    fn listen(&mut self, qd: Qd, at: &Endpoint, _queues: &mut Queues) -> io::Result<()> {
        let Endpoint::Shm(name) = at else {
            return Err(at.refused("shared memory listens on a segment name"));
        };
        let segment =
            Segment::create(name, LISTEN_SLOTS, LISTEN_RING).map_err(|e| io::Error::other(e.to_string()))?;
        self.segments.insert(qd.0, (segment, HashMap::new()));
        Ok(())
    }

    fn progress(&mut self, queues: &mut Queues, timeout: Duration) -> io::Result<()> {
        let deadline = now_ns().saturating_add(timeout.as_nanos() as u64);
        loop {
            let mut moved = self.watch_segments(queues);
            for (&qd, link) in &self.links {
                if let Some(q) = queues.get_mut(Qd(qd)) {
                    if q.state == State::Open {
                        moved |= Self::turn(&mut self.buf, link, q);
                    }
                }
            }
            self.polls = self.polls.wrapping_add(1);
            if self.polls.is_multiple_of(LIVENESS_EVERY) {
                for (&qd, link) in &self.links {
                    let gone = match link {
                        Link::Client(c) => c.server_gone(),
                        Link::Server { listener, slot, .. } => self
                            .segments
                            .get(&listener.0)
                            .is_some_and(|(s, _)| !s.client_alive(*slot)),
                    };
                    if gone {
                        if let Some(q) = queues.get_mut(Qd(qd)) {
                            if q.state == State::Open {
                                q.fail("the peer process ended the connection or is gone");
                                moved = true;
                            }
                        }
                    }
                }
            }
            if moved || now_ns() >= deadline {
                return Ok(());
            }
            std::hint::spin_loop();
        }
    }

    fn kick(&mut self, qd: Qd, queues: &mut Queues) -> io::Result<()> {
        if let (Some(link), Some(q)) = (self.links.get(&qd.0), queues.get_mut(qd)) {
            if q.state == State::Open {
                Self::turn(&mut self.buf, link, q);
            }
        }
        Ok(())
    }

    fn close(&mut self, qd: Qd) {
        // A client's claim is released by dropping it; a server's slot is handed back.
        if let Some(Link::Server { listener, slot, .. }) = self.links.remove(&qd.0) {
            if let Some((segment, by_slot)) = self.segments.get_mut(&listener.0) {
                by_slot.remove(&slot);
                if !segment.server_close(slot) || !segment.client_alive(slot) {
                    segment.free_slot(slot);
                }
            }
        }
        self.segments.remove(&qd.0);
    }
}
