//! Shared memory between a client and a server process: the segment both map, its connection
//! slots, and the byte rings that carry each connection's frames (see [`ring`]).
//!
//! A server creates `/dev/shm/iolab-NAME`: a header (magic, version, sizes, the server's pid),
//! then a table of `slots` connection slots, each a state word, the client's pid and the
//! control blocks of two rings (client to server, server to client), and after the table, on
//! a page of their own, the rings' data. What a polling pass reads (states and positions)
//! is so a few kilobytes side by side; what it copies is apart. A client attaches by name,
//! checks every field before it trusts the layout, and claims a free slot with a
//! compare-and-swap. A party's death is noticed by its pid: a segment whose server is gone
//! is stale, and says so.
//!
//! This is the transport's foundation; the `shm` engine and `load --transport shm` build on it.

pub mod ring;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub use ring::{Corrupt, Ring};

const MAGIC: u64 = 0x696f_6c61_625f_7368; // "iolab_sh"
const VERSION: u32 = 2;

/// Slot states. A slot goes FREE → CLAIMED (a client, by CAS) → CLOSED (the client is done;
/// the server drains it and frees it) or SERVER_CLOSED (the server ended it; the client, or
/// the server once the client's process is gone, frees it). Rings are reset only by the side
/// that frees, while the other side no longer touches the slot.
pub const FREE: u32 = 0;
pub const CLAIMED: u32 = 1;
pub const CLOSED: u32 = 2;
pub const SERVER_CLOSED: u32 = 3;

#[repr(C, align(64))]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    slots: AtomicU32,
    ring_capacity: AtomicU64,
    server_pid: AtomicU32,
}

#[repr(C, align(64))]
struct SlotHeader {
    state: AtomicU32,
    client_pid: AtomicU32,
}

const HEADER: usize = std::mem::size_of::<Header>();
const SLOT_HEADER: usize = std::mem::size_of::<SlotHeader>();

/// Bytes of one slot's entry in the table: its header and its two rings' control blocks.
const SLOT_CONTROL: usize = SLOT_HEADER + 2 * ring::CONTROL_SIZE;
const PAGE: usize = 4096;

/// Where the rings' data starts: after the table, on a page boundary.
fn data_start(slots: u32) -> usize {
    (HEADER + slots as usize * SLOT_CONTROL).next_multiple_of(PAGE)
}

/// The whole segment's length for `slots` connections of `capacity`-byte rings, or None if
/// it does not fit in an address.
fn segment_len(slots: u32, capacity: usize) -> Option<usize> {
    (slots as usize)
        .checked_mul(2)?
        .checked_mul(capacity)?
        .checked_add(data_start(slots))
}

/// What can go wrong opening a segment, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error(
        "no shared-memory segment '{name}' ({path}): is `iolab serve --engine shm --shm {name}` running?"
    )]
    Missing { name: String, path: String },
    #[error(
        "shared-memory segment '{name}' is stale: its server (pid {pid}) is gone; start the server again"
    )]
    Stale { name: String, pid: u32 },
    #[error("'{name}' is in use by a running server (pid {pid}); pick another --shm name")]
    InUse { name: String, pid: u32 },
    #[error("'{path}' is not an iolab shared-memory segment ({why})")]
    NotASegment { path: String, why: String },
    #[error("every one of the {slots} connection slots of '{name}' is taken")]
    Full { name: String, slots: u32 },
    #[error("shared memory '{path}': {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A mapped segment. The server's handle removes the file when dropped.
#[derive(Debug)]
pub struct Segment {
    name: String,
    path: PathBuf,
    base: *mut u8,
    len: usize,
    slots: u32,
    capacity: usize,
    owner: bool,
}

// SAFETY: the mapping is shared memory reached only through atomics and rings.
unsafe impl Send for Segment {}
unsafe impl Sync for Segment {}

/// Where segment `name` lives.
pub fn segment_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/iolab-{name}"))
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid != 0
        && match unsafe { crate::syscall!(kill(pid as libc::pid_t, 0)) } {
            Ok(_) => true,
            // Alive, someone else's.
            Err(e) => e.raw_os_error() == Some(libc::EPERM),
        }
}

impl Segment {
    /// Server: creates segment `name` with `slots` connections of `capacity`-byte rings (a
    /// power of two). A leftover segment whose server died is replaced; a live one refused.
    pub fn create(name: &str, slots: u32, capacity: usize) -> Result<Segment, ShmError> {
        let path = segment_path(name);
        if !capacity.is_power_of_two() || capacity < 64 || slots == 0 {
            return Err(ShmError::NotASegment {
                path: path.display().to_string(),
                why: format!(
                    "cannot lay out {slots} slots of {capacity}-byte rings (a power of two, at least 64)"
                ),
            });
        }
        let io = |source| ShmError::Io {
            path: path.display().to_string(),
            source,
        };
        if path.exists() {
            match Segment::attach(name) {
                Ok(live) => {
                    return Err(ShmError::InUse {
                        name: name.into(),
                        pid: live.server_pid(),
                    })
                }
                Err(ShmError::Stale { .. }) | Err(ShmError::NotASegment { .. }) => {
                    std::fs::remove_file(&path).map_err(io)?;
                }
                Err(e) => return Err(e),
            }
        }
        let len = segment_len(slots, capacity).ok_or_else(|| ShmError::NotASegment {
            path: path.display().to_string(),
            why: format!("{slots} slots of {capacity}-byte rings do not fit in memory"),
        })?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        file.set_len(len as u64).map_err(io)?;
        let base = map(&file, len).map_err(io)?;
        let seg = Segment {
            name: name.into(),
            path,
            base,
            len,
            slots,
            capacity,
            owner: true,
        };
        let h = seg.header();
        h.version.store(VERSION, Ordering::Relaxed);
        h.slots.store(slots, Ordering::Relaxed);
        h.ring_capacity.store(capacity as u64, Ordering::Relaxed);
        h.server_pid.store(std::process::id(), Ordering::Relaxed);
        // The magic goes last: a client that sees it sees a complete header.
        h.magic.store(MAGIC, Ordering::Release);
        Ok(seg)
    }

    /// Client: maps segment `name` after checking that it is one, whole, and served.
    pub fn attach(name: &str) -> Result<Segment, ShmError> {
        let path = segment_path(name);
        let shown = path.display().to_string();
        let file = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ShmError::Missing {
                    name: name.into(),
                    path: shown,
                })
            }
            Err(source) => return Err(ShmError::Io { path: shown, source }),
        };
        let not = |why: &str| ShmError::NotASegment {
            path: shown.clone(),
            why: why.into(),
        };
        let len = file
            .metadata()
            .map_err(|source| ShmError::Io {
                path: shown.clone(),
                source,
            })?
            .len() as usize;
        if len < HEADER {
            return Err(not("too short for a header"));
        }
        let base = map(&file, len).map_err(|source| ShmError::Io {
            path: shown.clone(),
            source,
        })?;
        let mut seg = Segment {
            name: name.into(),
            path,
            base,
            len,
            slots: 0,
            capacity: 0,
            owner: false,
        };
        let h = seg.header();
        if h.magic.load(Ordering::Acquire) != MAGIC {
            return Err(not("wrong magic number"));
        }
        if h.version.load(Ordering::Relaxed) != VERSION {
            return Err(not("another layout version"));
        }
        let slots = h.slots.load(Ordering::Relaxed);
        let capacity = h.ring_capacity.load(Ordering::Relaxed) as usize;
        if slots == 0 || !capacity.is_power_of_two() || segment_len(slots, capacity) != Some(len) {
            return Err(not("its sizes do not add up"));
        }
        let pid = h.server_pid.load(Ordering::Relaxed);
        if !pid_alive(pid) {
            return Err(ShmError::Stale {
                name: name.into(),
                pid,
            });
        }
        seg.slots = slots;
        seg.capacity = capacity;
        Ok(seg)
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping holds at least HEADER bytes (checked), page-aligned.
        unsafe { &*(self.base as *const Header) }
    }

    fn slot_base(&self, i: u32) -> *mut u8 {
        debug_assert!(i < self.slots);
        // SAFETY: i < slots, and attach/create checked that the table fits in the mapping.
        unsafe { self.base.add(HEADER + i as usize * SLOT_CONTROL) }
    }

    fn slot_header(&self, i: u32) -> &SlotHeader {
        // SAFETY: as slot_base; SlotHeader holds only atomics.
        unsafe { &*(self.slot_base(i) as *const SlotHeader) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn server_pid(&self) -> u32 {
        self.header().server_pid.load(Ordering::Relaxed)
    }

    /// Whether the server that made this segment still runs.
    pub fn served(&self) -> bool {
        pid_alive(self.server_pid())
    }

    /// Client: takes a free slot and returns its number and its rings (to server, from
    /// server). Slots whose client died are freed by the server, not here.
    pub fn claim(&self) -> Result<(u32, Ring, Ring), ShmError> {
        for i in 0..self.slots {
            let s = self.slot_header(i);
            if s.state
                .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                s.client_pid.store(std::process::id(), Ordering::Release);
                let (up, down) = self.rings(i);
                return Ok((i, up, down));
            }
        }
        Err(ShmError::Full {
            name: self.name.clone(),
            slots: self.slots,
        })
    }

    /// The state of slot `i` and its client's pid.
    pub fn slot_state(&self, i: u32) -> (u32, u32) {
        let s = self.slot_header(i);
        (
            s.state.load(Ordering::Acquire),
            s.client_pid.load(Ordering::Acquire),
        )
    }

    /// Client: ends slot `i`'s connection. If the server had already ended it, the client
    /// frees the slot itself (the server has let go of it).
    pub fn client_close(&self, i: u32) {
        let s = self.slot_header(i);
        if s.state
            .compare_exchange(CLAIMED, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            == Err(SERVER_CLOSED)
        {
            self.free_slot(i);
        }
    }

    /// Server: ends slot `i`'s connection. Returns false if the client had closed it first
    /// (the server then frees it, as for any CLOSED slot).
    pub fn server_close(&self, i: u32) -> bool {
        let s = self.slot_header(i);
        s.state
            .compare_exchange(CLAIMED, SERVER_CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Empties slot `i`'s rings and offers it again: only by the side that owns the slot's
    /// end (see the states above).
    pub fn free_slot(&self, i: u32) {
        let (up, down) = self.rings(i);
        up.reset();
        down.reset();
        let s = self.slot_header(i);
        s.client_pid.store(0, Ordering::Relaxed);
        s.state.store(FREE, Ordering::Release);
    }

    /// Whether slot `i`'s client process still exists.
    pub fn client_alive(&self, i: u32) -> bool {
        pid_alive(self.slot_state(i).1)
    }

    /// Slot `i`'s rings: client to server, then server to client.
    pub fn rings(&self, i: u32) -> (Ring, Ring) {
        let control = self.slot_base(i);
        // SAFETY: the control blocks lie in slot i's table entry and the data in its part of
        // the data area, both inside the mapping (create and attach checked its length),
        // which outlives the handles as long as the segment does (callers keep it).
        unsafe {
            let up = control.add(SLOT_HEADER);
            let down = up.add(ring::CONTROL_SIZE);
            let data = self
                .base
                .add(data_start(self.slots) + 2 * i as usize * self.capacity);
            (
                Ring::from_raw(up, data, self.capacity),
                Ring::from_raw(down, data.add(self.capacity), self.capacity),
            )
        }
    }
}

/// A client's connection through a segment: the claimed slot and its two rings.
///
/// Connections of one process to one server can share one mapping ([`Connection::claim_in`]):
/// their slots' states and positions then sit side by side in the table of one address
/// range, which a pass over all of them reads as a few pages, not one mapping's page each.
#[derive(Debug)]
pub struct Connection {
    segment: Arc<Segment>,
    slot: u32,
    /// Client to server.
    pub up: Ring,
    /// Server to client.
    pub down: Ring,
}

impl Connection {
    /// Attaches to segment `name` and claims a slot.
    pub fn connect(name: &str) -> Result<Connection, ShmError> {
        Connection::claim_in(Arc::new(Segment::attach(name)?))
    }

    /// Claims a slot in a segment this process has attached already.
    pub fn claim_in(segment: Arc<Segment>) -> Result<Connection, ShmError> {
        let (slot, up, down) = segment.claim()?;
        Ok(Connection {
            segment,
            slot,
            up,
            down,
        })
    }

    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Whether the server has ended this connection, or is gone.
    pub fn server_gone(&self) -> bool {
        self.segment.slot_state(self.slot).0 == SERVER_CLOSED || !pid_alive(self.segment.server_pid())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.segment.client_close(self.slot);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: mapped in create/attach with this length.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
        if self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn map(file: &std::fs::File, len: usize) -> std::io::Result<*mut u8> {
    use std::os::fd::AsRawFd;
    // SAFETY: a shared read-write mapping of a file we hold open, of its current length.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    crate::os::sys::check_mapped(p).map(|p| p as *mut u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(tag: &str) -> String {
        format!("test-{tag}-{}", std::process::id())
    }

    #[test]
    fn a_client_finds_the_server_and_claims_slots_until_none_are_left() {
        let n = name("claim");
        let server = Segment::create(&n, 2, 4096).unwrap();
        let client = Segment::attach(&n).unwrap();
        assert_eq!(client.server_pid(), std::process::id());
        let (a, up, _) = client.claim().unwrap();
        let (b, _, _) = client.claim().unwrap();
        assert_ne!(a, b);
        assert!(matches!(client.claim(), Err(ShmError::Full { slots: 2, .. })));
        // What the client pushes, the server reads from the same slot.
        assert_eq!(up.push(b"hello").unwrap(), 5);
        let (server_up, _) = server.rings(a);
        let mut buf = [0u8; 8];
        assert_eq!(server_up.pop(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(server.slot_state(a), (CLAIMED, std::process::id()));
        server.free_slot(a);
        assert_eq!(client.claim().unwrap().0, a);
        drop(client);
        drop(server);
        assert!(!segment_path(&n).exists(), "the server removes its segment");
    }

    #[test]
    fn missing_stale_foreign_and_busy_segments_are_refused_with_a_reason() {
        let n = name("missing");
        let e = Segment::attach(&n).unwrap_err().to_string();
        assert!(
            e.contains("is `iolab serve --engine shm") && e.contains(&n),
            "{e}"
        );

        // A segment whose server is gone: pid 0 never names a live process.
        let n = name("stale");
        let seg = Segment::create(&n, 1, 1024).unwrap();
        seg.header().server_pid.store(0, Ordering::Relaxed);
        let e = Segment::attach(&n).unwrap_err();
        assert!(matches!(e, ShmError::Stale { .. }), "{e}");
        // A new server replaces a stale segment.
        std::mem::forget(seg); // leave the file behind, as a crashed server would
        let seg = Segment::create(&n, 1, 1024).unwrap();
        assert!(Segment::attach(&n).is_ok());
        // ...but not a live one.
        assert!(matches!(
            Segment::create(&n, 1, 1024),
            Err(ShmError::InUse { .. })
        ));
        drop(seg);

        let n = name("foreign");
        std::fs::write(segment_path(&n), vec![7u8; 4096]).unwrap();
        let e = Segment::attach(&n).unwrap_err().to_string();
        assert!(e.contains("not an iolab shared-memory segment"), "{e}");
        std::fs::write(segment_path(&n), b"tiny").unwrap();
        assert!(Segment::attach(&n).unwrap_err().to_string().contains("too short"));
        let _ = std::fs::remove_file(segment_path(&n));
    }

    #[test]
    fn every_ring_of_every_slot_has_its_own_bytes() {
        let n = name("apart");
        let server = Segment::create(&n, 3, 4096).unwrap();
        let rings: Vec<(Ring, Ring)> = (0..3).map(|i| server.rings(i)).collect();
        // Fill all six rings to the brim, each with its own byte, then read each back whole.
        for (i, (up, down)) in rings.iter().enumerate() {
            assert_eq!(up.push(&[2 * i as u8 + 1; 4096]), Ok(4096));
            assert_eq!(down.push(&[2 * i as u8 + 2; 4096]), Ok(4096));
        }
        for (i, (up, down)) in rings.iter().enumerate() {
            for (ring, byte) in [(up, 2 * i as u8 + 1), (down, 2 * i as u8 + 2)] {
                let mut buf = vec![0u8; 4096];
                assert_eq!(ring.pop(&mut buf), Ok(4096));
                assert!(buf.iter().all(|&b| b == byte), "slot {i}: another ring's bytes");
            }
        }
        let len = std::fs::metadata(segment_path(&n)).unwrap().len() as usize;
        assert_eq!(Some(len), segment_len(3, 4096));
    }

    #[test]
    fn a_dead_client_is_seen_by_its_pid() {
        let n = name("dead");
        let server = Segment::create(&n, 1, 1024).unwrap();
        let (i, _, _) = Segment::attach(&n).unwrap().claim().unwrap();
        assert!(server.client_alive(i));
        server.slot_header(i).client_pid.store(0, Ordering::Relaxed);
        assert!(!server.client_alive(i));
    }

    #[test]
    fn layout_keeps_every_ring_on_cache_lines() {
        const LINE: usize = 64;
        assert_eq!(HEADER % LINE, 0);
        assert_eq!(SLOT_HEADER % LINE, 0);
        assert_eq!(SLOT_CONTROL % LINE, 0);
        assert_eq!(data_start(3) % PAGE, 0);
        assert!(data_start(3) >= HEADER + 3 * SLOT_CONTROL);
        // 64 connections' states and positions fit in 6 pages (20 KiB), side by side.
        assert!(data_start(64) <= 6 * PAGE);
        assert_eq!(segment_len(2, 4096), Some(PAGE + 4 * 4096));
        assert_eq!(segment_len(u32::MAX, usize::MAX / 2), None);
    }
}
