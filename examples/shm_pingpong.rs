//! Round trips through the `shm` engine: one request at a time, 64 B echo, and the time from
//! writing a request into the ring to holding its whole reply.
//!
//!     taskset -c 0 cargo run --release -- serve --engine shm --shm pp --shm-spin 10s &
//!     taskset -c 1 cargo run --release --example shm_pingpong -- pp [ROUND_TRIPS] [BYTES] [GAP_US]
//!
//! Both sides poll, so this is the transport's floor: no system call, no wake-up. With
//! GAP_US the client spins that long between round trips, as a connection of a light load
//! waits between its requests (`examples/cache_cooling` shows what a gap costs on its own).

use std::time::{Duration, Instant};

use iolab::loadgen::client::{ClientConn, RequestSpec};
use iolab::sansio::frame::ReplySize;
use iolab::shm::Connection;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "pp".into());
    let rounds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let bytes: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let gap = Duration::from_micros(args.next().and_then(|s| s.parse().ok()).unwrap_or(0));
    let conn = Connection::connect(&name)?;
    let mut client = ClientConn::new(1 << 20, 1 << 20, 1);
    let mut rtt = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut buf = vec![0u8; 1 << 16];
    let spec = RequestSpec {
        request_bytes: bytes,
        reply: ReplySize::Echo,
        spin_ns: 0,
        page: 0,
    };
    for id in 0..rounds {
        let idle_until = Instant::now() + gap;
        while Instant::now() < idle_until {
            std::hint::spin_loop();
        }
        let start = Instant::now();
        client.queue(id, 0, 0, spec, true);
        while let Some(s) = client.out().front() {
            let n = conn.up.push(s)?;
            client.wrote(n);
        }
        let mut ok = None;
        let deadline = start + Duration::from_secs(5);
        while ok.is_none() {
            let n = conn.down.pop(&mut buf)?;
            if n > 0 {
                client.receive(&buf[..n], 0, |c| ok = Some(c.ok))?;
            } else if Instant::now() > deadline || conn.server_gone() {
                anyhow::bail!(
                    "no reply to request {id} within 5 s (server gone: {})",
                    conn.server_gone()
                );
            }
        }
        if ok != Some(true) {
            anyhow::bail!("request {id}: a wrong reply");
        }
        rtt.saturating_record(start.elapsed().as_nanos() as u64);
    }
    let us = |q: f64| rtt.value_at_quantile(q) as f64 / 1e3;
    println!(
        "{rounds} round trips of {bytes} B through shm:{name}, {} us apart: p50 {:.2} us  p90 {:.2} us  p99 {:.2} us  p99.9 {:.2} us  max {:.1} us",
        gap.as_micros(),
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        rtt.max() as f64 / 1e3
    );
    Ok(())
}
