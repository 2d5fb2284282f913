//! A provided-buffer ring (kernel ≥ 5.19): receive buffers the kernel picks from at the
//! moment data arrives, instead of one buffer parked in every waiting receive.
//!
//! With a buffer per connection, ten thousand idle connections hold ten thousand buffers.
//! With a ring, the loop lends the kernel a pool shared by all its connections; a completion
//! names the buffer it filled (its id in the CQE flags), the loop consumes the bytes and
//! hands the buffer straight back by writing it at the ring's tail. Memory follows the data
//! in flight, not the number of connections.
//!
//! When the ring is empty, a multishot receive ends with ENOBUFS; the loop re-arms it once it
//! has returned buffers (see the engine), so an empty ring slows a burst, never kills it.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// The buffer group our receives name.
pub const GROUP: u16 = 0;

#[derive(Debug)]
pub struct BufRing {
    /// The ring of entries, shared with the kernel: page-aligned memory from mmap.
    entries: *mut BufRingEntry,
    ring_bytes: usize,
    count: u16,
    /// Our copy of the tail; published to the kernel after each return.
    tail: u16,
    buffers: Box<[u8]>,
    buffer_size: usize,
}

impl BufRing {
    /// Allocates `count` buffers (a power of two, at most 32768) of `buffer_size` bytes and
    /// registers them with the ring behind `submitter`.
    pub fn register(submitter: &Submitter<'_>, count: u16, buffer_size: usize) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--recv-buffers must be a power of two up to 32768, not {count}"),
            ));
        }
        let ring_bytes = count as usize * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping; checked for failure below.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        let mem = crate::os::sys::check_mapped(mem)?;
        let mut ring = BufRing {
            entries: mem.cast(),
            ring_bytes,
            count,
            tail: 0,
            buffers: vec![0u8; count as usize * buffer_size].into_boxed_slice(),
            buffer_size,
        };
        // Fault every page in now: the kernel would otherwise take each first-touch fault
        // while copying a receive, a few milliseconds of stalls spread over the first run.
        let base = ring.buffers.as_mut_ptr();
        for offset in (0..ring.buffers.len()).step_by(4096) {
            // SAFETY: in bounds; volatile so the store to zeroed memory is not elided.
            unsafe { std::ptr::write_volatile(base.add(offset), 0) };
        }
        // SAFETY: the entries and the buffers live as long as `ring`, which unregisters the
        // group in `unregister` or leaves it to the ring's own teardown (the ring is dropped
        // before this struct: see the engine's field order).
        unsafe { submitter.register_buf_ring_with_flags(mem as u64, count, GROUP, 0)? };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// The first `len` bytes of buffer `bid`, as a completion reported them.
    pub fn filled(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize % self.count as usize * self.buffer_size;
        &self.buffers[start..start + len.min(self.buffer_size)]
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let slot = (self.tail & (self.count - 1)) as usize;
        let addr = self.buffers.as_ptr() as u64 + (bid as usize * self.buffer_size) as u64;
        // SAFETY: slot < count, inside the mapping; the kernel reads entries only up to the
        // published tail, which this entry is not behind yet.
        let entry = unsafe { &mut *self.entries.add(slot) };
        entry.set_addr(addr);
        entry.set_len(self.buffer_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the entries pushed so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved field, inside the
        // mapping; the kernel reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `register` with this length.
        unsafe { libc::munmap(self.entries.cast(), self.ring_bytes) };
    }
}
