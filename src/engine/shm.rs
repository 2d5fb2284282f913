//! `shm`: the session core over shared memory, no sockets at all.
//!
//! The server creates a named segment of connection slots (`crate::shm`); a client claims a
//! slot and writes frames into its upstream ring, and one thread here polls every claimed
//! slot: bytes from the ring go to the slot's session, the session's replies go into the
//! downstream ring as far as it has room (the rest waits in the session, which stops reading
//! the slot meanwhile: back-pressure). A client marks its slot closed when done; a client
//! whose process has died is noticed by its pid within a tenth of a second, its slot
//! cleaned and offered again.
//!
//! Polling costs a core. The thread spins while there is work and for a while after, then
//! sleeps 50 µs between polls until work returns: latency while busy, a quiet core while
//! idle. How long "a while" is is [`Spin`]: by default it follows the load, spinning for four
//! times the recent mean gap between requests (so at 1k rps, gaps of 1 ms on average, a
//! request almost never finds the thread asleep, while at one request a second the core
//! naps between them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ConnError, Drain, EngineCtx, Next, RunningServer, ServeConfig, ServerStats, ShmOptions};
use crate::sansio::session::ServerSession;
use crate::shm::{Ring, Segment, CLAIMED, CLOSED, SERVER_CLOSED};

/// Passes between two looks at every slot's state (new clients, closed ones).
const STATE_SCAN_EVERY: u32 = 64;
/// Sleep between polls once idle past the spin time.
const PARK: Duration = Duration::from_micros(50);

/// How long the polling thread spins after its last work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spin {
    /// Four times the recent mean gap between bursts of work, at least `AUTO_MIN`; when
    /// that is over `AUTO_MAX` the next request is not near, and the spin is `AUTO_MIN`.
    Auto,
    Fixed(Duration),
}

/// The shortest spin `auto` keeps: a burst's stragglers still find the thread awake.
pub const AUTO_MIN: Duration = Duration::from_millis(1);
/// The longest: four mean gaps beyond this are not "the next request is near".
pub const AUTO_MAX: Duration = Duration::from_millis(20);

impl std::str::FromStr for Spin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(Spin::Auto);
        }
        s.parse::<crate::sansio::units::Dur>()
            .map(|d| Spin::Fixed(d.0))
            .map_err(|e| format!("{e}, or 'auto'"))
    }
}

/// The spin time `auto` derives from the gaps between bursts of work: an exponentially
/// weighted mean (weight 1/8 for the newest gap) times four. With Poisson arrivals four mean
/// gaps cover 98% of them.
#[derive(Debug, Clone)]
struct SpinClock {
    policy: Spin,
    mean_gap_ns: f64,
}

impl SpinClock {
    fn new(policy: Spin) -> SpinClock {
        SpinClock {
            policy,
            mean_gap_ns: AUTO_MIN.as_nanos() as f64 / 4.0,
        }
    }

    /// Work came after `idle` without any.
    fn gap(&mut self, idle: Duration) {
        self.mean_gap_ns += (idle.as_nanos() as f64 - self.mean_gap_ns) / 8.0;
    }

    fn spin(&self) -> Duration {
        match self.policy {
            Spin::Fixed(d) => d,
            Spin::Auto => match Duration::from_nanos((4.0 * self.mean_gap_ns) as u64) {
                // Requests this far apart are not near: spinning for them buys little.
                far if far > AUTO_MAX => AUTO_MIN,
                near => near.max(AUTO_MIN),
            },
        }
    }
}
/// How often dead clients are looked for.
const LIVENESS_EVERY: Duration = Duration::from_millis(100);

/// This engine's face: the registry starts it for `--engine shm`.
pub struct ShmEngine;

impl super::Engine for ShmEngine {
    type Options = ShmOptions;
    fn start(config: ServeConfig, options: ShmOptions) -> anyhow::Result<RunningServer> {
        start(config, options)
    }
}

fn start(config: ServeConfig, options: ShmOptions) -> anyhow::Result<RunningServer> {
    let Some(name) = options.name.clone() else {
        anyhow::bail!("the shm engine needs --shm NAME (the segment clients attach to)");
    };
    if !options.ring_bytes.is_power_of_two() || options.ring_bytes < 4096 {
        anyhow::bail!("--shm-ring must be a power of two of at least 4 KiB");
    }
    if options.slots == 0 {
        anyhow::bail!("--shm-slots must be at least 1");
    }
    let segment = Segment::create(&name, options.slots, options.ring_bytes)?;
    let ctx = EngineCtx::new(config)?;
    let engine_ctx = ctx.clone();
    let thread = std::thread::Builder::new()
        .name("iolab-shm".into())
        .spawn(move || serve(engine_ctx, segment, options.spin))?;
    Ok(RunningServer {
        addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        endpoint: format!("shm:{name}"),
        ctx,
        started: Instant::now(),
        thread: Some(thread),
    })
}

/// One claimed slot's state on this side.
struct Conn {
    session: ServerSession,
    up: Ring,
    down: Ring,
    /// After the last turn: nothing owed, nothing waiting, the session serving. Until a byte
    /// comes, a pass over this connection has nothing to do but see its ring still empty.
    idle: bool,
}

impl Conn {
    /// Settled after its last turn and nothing new in its ring: a pass has nothing to do.
    fn quiet(&self) -> bool {
        self.idle && self.up.is_empty()
    }

    fn settled(&self) -> bool {
        self.session.next() == Next::Serve && self.session.out().is_empty() && !self.session.awaiting_memory()
    }
}

fn serve(ctx: Arc<EngineCtx>, segment: Segment, spin: Spin) -> anyhow::Result<()> {
    crate::os::cpu::pin_current_thread(&ctx.config.pin)?;
    let slots = segment.slots();
    let mut conns: Vec<Option<Conn>> = (0..slots).map(|_| None).collect();
    let mut buf = vec![0u8; ctx.config.session.chunk_size.max(4096)];
    let mut last_work = Instant::now();
    let mut spin = SpinClock::new(spin);
    let mut idled = false;
    let mut last_liveness = Instant::now();
    let mut drain: Option<Drain> = None;
    let mut passes: u32 = 0;
    let mut napped = false;
    loop {
        if ctx.shutdown.is_triggered() && drain.is_none() {
            drain = Some(Drain::begin(&ctx));
            // Rings cannot be half-closed: input ends here, and what is owed still goes out.
            for conn in conns.iter_mut().flatten() {
                conn.session.end_input();
            }
        }
        let mut worked = false;
        let check_liveness = last_liveness.elapsed() >= LIVENESS_EVERY;
        if check_liveness {
            last_liveness = Instant::now();
        }
        // Claims and closes are looked for on every STATE_SCAN_EVERY-th pass (a few
        // microseconds apart at most); the passes between look only at open connections.
        passes = passes.wrapping_add(1);
        // After a nap every pass looks: a napping server has time, and a new client must not
        // wait 64 naps.
        let scan_states =
            passes.is_multiple_of(STATE_SCAN_EVERY) || napped || check_liveness || drain.is_some();
        napped = false;
        for i in 0..slots {
            if !scan_states && conns[i as usize].as_ref().is_none_or(Conn::quiet) {
                continue;
            }
            let (state, pid) = segment.slot_state(i);
            let who = || format!("shm slot {i} (pid {pid})");
            match state {
                CLAIMED => {
                    let conn = conns[i as usize].get_or_insert_with(|| {
                        ServerStats::bump(&ctx.stats.accepted);
                        let (up, down) = segment.rings(i);
                        let mut session = ctx.new_session();
                        if drain.is_some() {
                            session.end_input();
                        }
                        Conn {
                            session,
                            up,
                            down,
                            idle: false,
                        }
                    });
                    // The common pass at low load: one load of the ring's producer line.
                    if conn.quiet() && drain.is_none() && !check_liveness {
                        continue;
                    }
                    match turn(conn, &mut buf) {
                        Ok(moved) => worked |= moved,
                        Err(e) => {
                            finish(&ctx, &segment, &mut conns, i, who(), Err(e));
                            continue;
                        }
                    }
                    if let Next::Close(verdict) = conn.session.next() {
                        finish(&ctx, &segment, &mut conns, i, who(), verdict.into());
                    } else if check_liveness && !segment.client_alive(i) {
                        let died = std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            "the client process died",
                        );
                        finish(&ctx, &segment, &mut conns, i, who(), Err(died.into()));
                    } else {
                        conn.idle = conn.settled();
                    }
                }
                CLOSED => {
                    // The client is done: what it sent before closing still counts.
                    let result = match conns[i as usize].as_mut() {
                        Some(conn) => turn(conn, &mut buf).and_then(|_| {
                            conn.session.peer_closed();
                            match conn.session.next() {
                                Next::Close(verdict) => verdict.into(),
                                // Gone before reading every reply: nobody is left to owe.
                                _ => Ok(()),
                            }
                        }),
                        None => Ok(()),
                    };
                    if let Some(conn) = conns[i as usize].take() {
                        ctx.connection_closed(who(), result, conn.session.counters());
                    }
                    segment.free_slot(i);
                    worked = true;
                }
                // Ended by us; the client frees it, or we do once it is gone.
                SERVER_CLOSED if check_liveness && !segment.client_alive(i) => segment.free_slot(i),
                _ => {}
            }
        }
        if let Some(drain) = drain.as_mut() {
            let open = conns.iter().flatten().count();
            if open == 0 {
                break;
            }
            if drain.expired() {
                drain.cut_off(open);
                for conn in conns.iter_mut().flatten() {
                    conn.session.cut_off();
                }
                continue; // the next pass closes each with its verdict
            }
        }
        if worked {
            // A gap is a stretch of polls that found nothing; back-to-back work is none.
            if idled {
                spin.gap(last_work.elapsed());
            }
            idled = false;
            last_work = Instant::now();
            continue;
        }
        idled = true;
        if last_work.elapsed() >= spin.spin() {
            std::thread::sleep(PARK);
            napped = true;
        } else {
            std::hint::spin_loop();
        }
    }
    Ok(())
}

/// Moves bytes both ways for one connection as its session asks; returns whether anything
/// moved.
fn turn(conn: &mut Conn, buf: &mut [u8]) -> Result<bool, ConnError> {
    let corrupt =
        |e: crate::shm::Corrupt| ConnError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
    let mut moved = flush(conn).map_err(corrupt)?;
    // A frame that waited for memory goes on once there is room (every pass looks).
    moved |= conn.session.retry_memory();
    if conn.session.wants_read() {
        let n = conn.up.pop(buf).map_err(corrupt)?;
        if n > 0 {
            moved = true;
            // An error is the session's to remember: next() says what follows.
            let _ = conn.session.receive(&buf[..n]);
            flush(conn).map_err(corrupt)?;
        }
    }
    if conn.session.next() == Next::LastWrite {
        // What the ring took in the flush above was the last write a bad frame gets.
        conn.session.last_write_tried();
    }
    Ok(moved)
}

/// Pushes queued replies into the downstream ring as far as it has room.
fn flush(conn: &mut Conn) -> Result<bool, crate::shm::Corrupt> {
    let mut moved = false;
    while let Some(slice) = conn.session.out().front() {
        let n = conn.down.push(slice)?;
        if n == 0 {
            break;
        }
        conn.session.wrote(n);
        moved = true;
    }
    Ok(moved)
}

/// The server ends connection `i`: the client learns it from the slot's state and frees the
/// slot (or it is freed here if the client is gone or had closed it already).
fn finish(
    ctx: &EngineCtx,
    segment: &Segment,
    conns: &mut [Option<Conn>],
    i: u32,
    who: String,
    result: Result<(), ConnError>,
) {
    if let Some(conn) = conns[i as usize].take() {
        ctx.connection_closed(who, result, conn.session.counters());
    }
    if !segment.server_close(i) || !segment.client_alive(i) {
        segment.free_slot(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_parses_auto_and_durations_and_says_what_it_takes() {
        assert_eq!("auto".parse::<Spin>(), Ok(Spin::Auto));
        assert_eq!("10s".parse::<Spin>(), Ok(Spin::Fixed(Duration::from_secs(10))));
        assert_eq!("0".parse::<Spin>(), Ok(Spin::Fixed(Duration::ZERO)));
        let err = "soon".parse::<Spin>().unwrap_err();
        assert!(err.contains("'auto'"), "{err}");
    }

    #[test]
    fn auto_spin_follows_the_gaps_within_its_bounds() {
        let mut clock = SpinClock::new(Spin::Auto);
        assert_eq!(clock.spin(), AUTO_MIN);
        // Gaps of 2 ms on average: spin about 8 ms.
        for _ in 0..100 {
            clock.gap(Duration::from_millis(2));
        }
        let spin = clock.spin();
        assert!(
            spin > Duration::from_micros(7_900) && spin < Duration::from_micros(8_100),
            "{spin:?}"
        );
        // Gaps of 4 ms: 16 ms.
        for _ in 0..100 {
            clock.gap(Duration::from_millis(4));
        }
        let spin = clock.spin();
        assert!(
            spin > Duration::from_micros(15_900) && spin <= AUTO_MAX,
            "{spin:?}"
        );
        // A second between requests: not near, so the shortest spin.
        for _ in 0..100 {
            clock.gap(Duration::from_secs(1));
        }
        assert_eq!(clock.spin(), AUTO_MIN);
        // Back under load, tiny gaps: the floor.
        for _ in 0..200 {
            clock.gap(Duration::from_micros(3));
        }
        assert_eq!(clock.spin(), AUTO_MIN);
        let fixed = SpinClock::new(Spin::Fixed(Duration::from_secs(10)));
        assert_eq!(fixed.spin(), Duration::from_secs(10));
    }
}
