//! The queue API over shared memory: a connection is a slot of a `/dev/shm/iolab-NAME`
//! segment ([`crate::shm`]), its two rings the transport.
//!
//! `connect` claims a slot of a server's segment; `listen` creates a segment and every slot
//! a client claims becomes an accepted queue. Nothing blocks: `progress` spins over the
//! rings until something moves or its time is up, as a polling LibOS does.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::{Backend, Endpoint, Qd, Queue, QueueMut, Queues, State};
use crate::os::clock::now_ns;
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
    /// By queue descriptor (a dense index): the poll walks a vector, nothing is hashed.
    links: Vec<Option<Link>>,
    /// Our segments, by listening queue, with the queue of each claimed slot.
    segments: HashMap<u32, (Segment, HashMap<u32, Qd>)>,
    /// Servers' segments our connections claimed slots in, by name: one mapping for all of
    /// a server's connections (see [`Connection::claim_in`]).
    attached: HashMap<String, Arc<Segment>>,
    buf: Vec<u8>,
    polls: u32,
}

impl Default for ShmBackend {
    fn default() -> Self {
        ShmBackend {
            links: Vec::new(),
            segments: HashMap::new(),
            attached: HashMap::new(),
            buf: vec![0; 64 << 10],
            polls: 0,
        }
    }
}

fn corrupt(e: crate::shm::Corrupt) -> String {
    format!("shared-memory ring: {e}")
}

impl ShmBackend {
    /// The rings of `link`, from this side: (to the peer, from the peer).
    fn rings(link: &Link) -> (&Ring, &Ring) {
        match link {
            Link::Client(c) => (&c.up, &c.down),
            Link::Server { up, down, .. } => (down, up),
        }
    }

    /// Hands the queue's pending bytes to the ring towards the peer; returns whether any went.
    fn send_out(link: &Link, q: &mut QueueMut<'_>) -> bool {
        if q.pending_out().is_empty() {
            return false;
        }
        match Self::rings(link).0.push(q.pending_out()) {
            Ok(n) => {
                q.sent(n);
                n > 0
            }
            Err(e) => {
                q.fail(corrupt(e));
                true
            }
        }
    }

    /// Moves bytes both ways on one link; returns whether anything moved.
    fn turn(buf: &mut [u8], link: &Link, q: &mut QueueMut<'_>) -> bool {
        let mut moved = Self::send_out(link, q);
        match Self::rings(link).1.pop(buf) {
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
                        set_link(
                            &mut self.links,
                            qd,
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
                        if let Some(mut q) = queues.get_mut(qd) {
                            if let Some(Some(link)) = self.links.get(qd.0 as usize) {
                                Self::turn(&mut self.buf, link, &mut q);
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

/// Files `link` under queue `qd`.
fn set_link(links: &mut Vec<Option<Link>>, qd: Qd, link: Link) {
    let i = qd.0 as usize;
    if links.len() <= i {
        links.resize_with(i + 1, || None);
    }
    links[i] = Some(link);
}

impl Backend for ShmBackend {
    fn connect(&mut self, qd: Qd, to: &Endpoint, queues: &mut Queues) -> io::Result<()> {
        let Endpoint::Shm(name) = to else {
            return Err(to.refused("shared memory connects to a segment name"));
        };
        let segment = match self.attached.get(name) {
            Some(segment) if segment.served() => segment.clone(),
            // Not attached yet, or its server is gone (a new one makes a new segment).
            _ => {
                let segment = Arc::new(Segment::attach(name).map_err(|e| io::Error::other(e.to_string()))?);
                self.attached.insert(name.clone(), segment.clone());
                segment
            }
        };
        let conn = Connection::claim_in(segment).map_err(|e| io::Error::other(e.to_string()))?;
        set_link(&mut self.links, qd, Link::Client(Box::new(conn)));
        if let Some(mut q) = queues.get_mut(qd) {
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
        // A single look (no timeout) reads no clock.
        let deadline = if timeout.is_zero() {
            0
        } else {
            now_ns().saturating_add(timeout.as_nanos() as u64)
        };
        loop {
            let mut moved = self.watch_segments(queues);
            // One pass over every ring: a busy turn hands over every reply that came (each
            // stamped as it is delivered, so its place in the pass costs it nothing).
            for (qd, link) in self.links.iter().enumerate() {
                let Some(link) = link else { continue };
                // The common look at low load: nothing came and nothing waits to go.
                if Self::rings(link).1.is_empty()
                    && queues
                        .get(Qd(qd as u32))
                        .is_none_or(|q| q.pending_out().is_empty())
                {
                    continue;
                }
                let Some(mut q) = queues.get_mut(Qd(qd as u32)) else {
                    continue;
                };
                if q.state == State::Open {
                    moved |= Self::turn(&mut self.buf, link, &mut q);
                }
            }
            self.polls = self.polls.wrapping_add(1);
            if self.polls.is_multiple_of(LIVENESS_EVERY) {
                for (qd, link) in self.links.iter().enumerate() {
                    let Some(link) = link else { continue };
                    let gone = match link {
                        Link::Client(c) => c.server_gone(),
                        Link::Server { listener, slot, .. } => self
                            .segments
                            .get(&listener.0)
                            .is_some_and(|(s, _)| !s.client_alive(*slot)),
                    };
                    if gone {
                        if let Some(mut q) = queues.get_mut(Qd(qd as u32)) {
                            if q.state == State::Open {
                                q.fail("the peer process ended the connection or is gone");
                                moved = true;
                            }
                        }
                    }
                }
            }
            if moved || deadline == 0 || now_ns() >= deadline {
                return Ok(());
            }
            std::hint::spin_loop();
        }
    }

    fn kick(&mut self, qd: Qd, queues: &mut Queues) -> io::Result<()> {
        // Only the way out: what came in waits for the next poll, which is soon.
        if let (Some(Some(link)), Some(mut q)) = (self.links.get(qd.0 as usize), queues.get_mut(qd)) {
            if q.state == State::Open {
                Self::send_out(link, &mut q);
            }
        }
        Ok(())
    }

    fn send_now(&mut self, qd: Qd, data: &[u8], queues: &mut Queues) -> io::Result<usize> {
        let Some(Some(link)) = self.links.get(qd.0 as usize) else {
            return Ok(0);
        };
        match Self::rings(link).0.push(data) {
            Ok(n) => Ok(n),
            Err(e) => {
                if let Some(mut q) = queues.get_mut(qd) {
                    q.fail(corrupt(e));
                }
                Ok(0)
            }
        }
    }

    fn close(&mut self, qd: Qd) {
        // A client's claim is released by dropping it; a server's slot is handed back.
        let link = self.links.get_mut(qd.0 as usize).and_then(Option::take);
        if let Some(Link::Server { listener, slot, .. }) = link {
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
