//! A single-producer, single-consumer byte ring in memory shared between two processes.
//!
//! The producer owns `tail`, the consumer owns `head`; each sits on its own cache line so the
//! two sides never write the same line. Positions only grow (wrapping at 2^64), and
//! `tail - head` is the number of bytes readable. The producer copies bytes in and then
//! publishes them with a release store of `tail`; the consumer acquires `tail`, copies the
//! bytes out, and releases the space with a store of `head`. No locks, no system calls.
//!
//! The other side is another process and is trusted for nothing: every position read from
//! shared memory is checked (a ring whose positions say more than its capacity is corrupt and
//! reported, never indexed with), and bytes move only by raw copies into and out of the
//! shared area, never through references into it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes between the two positions, so producer and consumer write different cache lines.
const LINE: usize = 64;

/// The shared layout of one ring's control block; the data follows at `DATA_OFFSET`.
#[repr(C, align(64))]
struct Control {
    /// Consumer position.
    head: AtomicU64,
    _pad_head: [u8; LINE - 8],
    /// Producer position.
    tail: AtomicU64,
    _pad_tail: [u8; LINE - 8],
}

/// Bytes of a ring's control block (its two positions). The segment keeps every ring's
/// control block in one compact table, apart from the data: a poll that finds nothing then
/// reads a few neighbouring lines, not one line per connection half a megabyte apart (the
/// same cache set and a different page each, which cost a pass over 64 idle rings about a
/// microsecond).
pub const CONTROL_SIZE: usize = std::mem::size_of::<Control>();

/// The peer broke the ring's invariants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt shared-memory ring: head {head}, tail {tail}, capacity {capacity}")]
pub struct Corrupt {
    pub head: u64,
    pub tail: u64,
    pub capacity: u64,
}

/// One side's handle on a ring. It holds a raw pointer into a mapping that must outlive it
/// (the segment that hands rings out keeps the mapping).
#[derive(Debug)]
pub struct Ring {
    control: *const Control,
    data: *mut u8,
    capacity: u64,
}

// SAFETY: the ring is only a pointer into shared memory accessed through atomics and raw
// copies; moving the handle to another thread is fine (one producer and one consumer still).
unsafe impl Send for Ring {}

impl Ring {
    /// A handle on the ring whose control block (`CONTROL_SIZE` bytes, aligned to 64) is at
    /// `control` and whose `capacity` data bytes (a power of two) are at `data`.
    ///
    /// # Safety
    /// Both areas must be part of a live mapping for the handle's life, must not overlap,
    /// and at most one producer and one consumer may use the ring at a time.
    pub unsafe fn from_raw(control: *mut u8, data: *mut u8, capacity: usize) -> Ring {
        debug_assert!(capacity.is_power_of_two());
        debug_assert_eq!(control as usize % LINE, 0);
        Ring {
            control: control as *const Control,
            data,
            capacity: capacity as u64,
        }
    }

    /// Whether nothing waits to be read: one load of the producer's line (and none of the
    /// data). A corrupt ring reads as not empty, so the pop that follows reports it.
    pub fn is_empty(&self) -> bool {
        let head = self.control().head.load(Ordering::Relaxed);
        self.control().tail.load(Ordering::Acquire) == head
    }

    /// Sets both positions to zero: only while no peer uses the ring.
    pub fn reset(&self) {
        self.control().head.store(0, Ordering::Relaxed);
        self.control().tail.store(0, Ordering::Release);
    }

    fn control(&self) -> &Control {
        // SAFETY: from_raw's contract; Control holds only atomics, which may be shared.
        unsafe { &*self.control }
    }

    fn positions(&self) -> Result<(u64, u64), Corrupt> {
        let head = self.control().head.load(Ordering::Acquire);
        let tail = self.control().tail.load(Ordering::Acquire);
        if tail.wrapping_sub(head) > self.capacity {
            return Err(Corrupt {
                head,
                tail,
                capacity: self.capacity,
            });
        }
        Ok((head, tail))
    }

    /// Bytes waiting to be read.
    pub fn readable(&self) -> Result<usize, Corrupt> {
        self.positions().map(|(h, t)| t.wrapping_sub(h) as usize)
    }

    /// Producer: copies as much of `bytes` as fits and publishes it; returns how much.
    pub fn push(&self, bytes: &[u8]) -> Result<usize, Corrupt> {
        let (head, tail) = self.positions()?;
        let free = (self.capacity - tail.wrapping_sub(head)) as usize;
        let n = free.min(bytes.len());
        if n == 0 {
            return Ok(0);
        }
        self.copy_in(tail, &bytes[..n]);
        self.control()
            .tail
            .store(tail.wrapping_add(n as u64), Ordering::Release);
        Ok(n)
    }

    /// Consumer: copies up to `out.len()` readable bytes into `out` and frees their space;
    /// returns how many.
    pub fn pop(&self, out: &mut [u8]) -> Result<usize, Corrupt> {
        let (head, tail) = self.positions()?;
        let n = (tail.wrapping_sub(head) as usize).min(out.len());
        if n == 0 {
            // No store: a poll of an empty ring must not dirty the line the producer reads.
            return Ok(0);
        }
        self.copy_out(head, &mut out[..n]);
        self.control()
            .head
            .store(head.wrapping_add(n as u64), Ordering::Release);
        Ok(n)
    }

    fn copy_in(&self, at: u64, bytes: &[u8]) {
        let start = (at % self.capacity) as usize;
        let first = bytes.len().min(self.capacity as usize - start);
        // SAFETY: both ranges lie inside the data area (start + first <= capacity, and the
        // wrapped rest starts at 0); the consumer does not read them until tail moves.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data.add(start), first);
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), self.data, bytes.len() - first);
        }
    }

    fn copy_out(&self, at: u64, out: &mut [u8]) {
        let start = (at % self.capacity) as usize;
        let first = out.len().min(self.capacity as usize - start);
        // SAFETY: as in copy_in; the producer does not write these bytes until head moves.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(start), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.data, out.as_mut_ptr().add(first), out.len() - first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A 64-byte-aligned heap area standing in for a shared mapping.
    struct Area {
        ptr: *mut u8,
        layout: std::alloc::Layout,
    }

    impl Area {
        fn new(capacity: usize) -> Area {
            let layout = std::alloc::Layout::from_size_align(CONTROL_SIZE + capacity, LINE).unwrap();
            // SAFETY: a non-zero size.
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            Area { ptr, layout }
        }

        /// Two handles on the area's ring (a producer's and a consumer's).
        ///
        /// # Safety
        /// The area must outlive both, and one thread at most may use each.
        unsafe fn ends(&self, capacity: usize) -> (Ring, Ring) {
            // SAFETY: new laid out CONTROL_SIZE + capacity bytes; the caller keeps the area.
            unsafe {
                let data = self.ptr.add(CONTROL_SIZE);
                (
                    Ring::from_raw(self.ptr, data, capacity),
                    Ring::from_raw(self.ptr, data, capacity),
                )
            }
        }
    }

    impl Drop for Area {
        fn drop(&mut self) {
            // SAFETY: allocated in new with this layout.
            unsafe { std::alloc::dealloc(self.ptr, self.layout) };
        }
    }

    #[test]
    fn positions_sit_on_their_own_cache_lines() {
        assert_eq!(CONTROL_SIZE, 2 * LINE);
        assert_eq!(std::mem::offset_of!(Control, tail), LINE);
    }

    proptest! {
        /// Whatever the sizes of pushes and pops, and however the positions wrap, the bytes
        /// come out as they went in.
        #[test]
        fn bytes_come_out_in_order(chunks in proptest::collection::vec((1usize..300, 1usize..300), 1..200)) {
            let area = Area::new(256);
            // SAFETY: the area outlives both handles, one producer and one consumer.
            let (tx, rx) = unsafe { area.ends(256) };
            let input: Vec<u8> = (0..chunks.iter().map(|c| c.0).sum::<usize>()).map(|i| (i * 7 % 251) as u8).collect();
            let (mut sent, mut got) = (0, Vec::new());
            for (push, pop) in chunks {
                let end = (sent + push).min(input.len());
                sent += tx.push(&input[sent..end]).unwrap();
                prop_assert!(rx.readable().unwrap() <= 256);
                let mut buf = vec![0u8; pop];
                let n = rx.pop(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            let mut buf = vec![0u8; 256];
            loop {
                let n = rx.pop(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                if sent == input.len() && n == 0 { break; }
                let end = input.len();
                sent += tx.push(&input[sent..end]).unwrap();
            }
            prop_assert_eq!(got, input);
        }
    }

    #[test]
    fn two_threads_stream_a_megabyte_through_a_small_ring() {
        let area = Area::new(1024);
        // SAFETY: as above; the threads are joined before the area drops.
        let (tx, rx) = unsafe { area.ends(1024) };
        let input: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let expect = input.clone();
        let producer = std::thread::spawn(move || {
            let mut sent = 0;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while sent < input.len() {
                assert!(std::time::Instant::now() < deadline, "producer stuck");
                sent += tx.push(&input[sent..(sent + 700).min(input.len())]).unwrap();
            }
        });
        let mut got = Vec::with_capacity(expect.len());
        let mut buf = [0u8; 333];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while got.len() < expect.len() {
            assert!(std::time::Instant::now() < deadline, "consumer stuck");
            let n = rx.pop(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        producer.join().unwrap();
        assert!(got == expect, "the stream was reordered or corrupted");
    }

    #[test]
    fn is_empty_follows_pushes_and_pops() {
        let area = Area::new(64);
        // SAFETY: as above.
        let (tx, rx) = unsafe { area.ends(64) };
        assert!(rx.is_empty());
        assert_eq!(tx.push(b"ab"), Ok(2));
        assert!(!rx.is_empty());
        assert_eq!(rx.pop(&mut [0u8; 1]), Ok(1));
        assert!(!rx.is_empty());
        assert_eq!(rx.pop(&mut [0u8; 4]), Ok(1));
        assert!(rx.is_empty());
    }

    #[test]
    fn a_peer_that_breaks_the_positions_is_caught() {
        let area = Area::new(64);
        // SAFETY: as above.
        let (ring, _) = unsafe { area.ends(64) };
        ring.control().tail.store(1000, Ordering::Release); // 1000 bytes "in" a 64-byte ring
        assert!(matches!(ring.pop(&mut [0u8; 8]), Err(Corrupt { tail: 1000, .. })));
        assert!(ring.push(b"x").is_err());
        ring.reset();
        assert_eq!(ring.push(b"ok"), Ok(2));
    }
}
