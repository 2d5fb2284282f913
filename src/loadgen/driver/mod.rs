//! The connection drivers: one thread, many connections, an absolute send schedule.
//!
//! Each connection is an independent arrival process; a min-heap holds every connection's
//! next scheduled send. The thread sleeps until shortly before the next send (handling
//! replies as they arrive), then spins the last stretch reading the clock and polling for I/O
//! without blocking, and sends at the scheduled instant.
//!
//! How the bytes move is the driver's I/O model, chosen with `--driver`: [`epoll`] (non-
//! blocking sockets, edge-triggered readiness, a read and a write per event), [`uring`]
//! (multishot receives into a provided-buffer ring, sends submitted as they are scheduled,
//! one `io_uring_enter` to submit and reap) or [`queue`] (the LibOS queue API of
//! `crate::queue`, one loop for every transport: kernel TCP, shared memory, the user-space
//! stack). The schedule, the bookkeeping and the measurements here are the same for all.
//!
//! Latency is taken from the *scheduled* send time to the arrival of the whole reply, so a
//! late send (the generator's fault) or a stalled server (the server's) shows up in it rather
//! than being hidden by a send that simply waited (coordinated omission).

mod epoll;
mod queue;
mod uring;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::{RngExt as _, SeedableRng};

use super::arrival::Arrivals;
use super::client::{ClientConn, Completion, RequestSpec};
use super::spec::ReplyDist;
use super::{ConnectMode, DriverKind, LoadConfig, Measured, RequestRecord};
use crate::loadgen::error::LoadError;
use crate::os::clock::now_ns;
use crate::os::sys::{take_socket_error, tighten_timer_slack};
use crate::sansio::frame::ReplySize;
use crate::sansio::stats::new_histogram;

/// How long before a scheduled send the thread stops sleeping and starts spinning.
const SPIN_WINDOW_NS: u64 = 60_000;
/// Longest single sleep, so an abort or an interval boundary is noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(20);

/// When all threads are connected, the main thread names the common start time (or aborts).
#[derive(Debug, Default)]
pub struct StartGate {
    state: Mutex<Option<Option<u64>>>,
    cv: Condvar,
}

impl StartGate {
    pub fn open(&self, start: Option<u64>) {
        if let Ok(mut s) = self.state.lock() {
            *s = Some(start);
        }
        self.cv.notify_all();
    }

    fn wait(&self) -> Option<u64> {
        let mut s = self.state.lock().ok()?;
        loop {
            if let Some(start) = *s {
                return start;
            }
            s = self.cv.wait(s).ok()?;
        }
    }
}

/// One interval's completions from one thread, for `--log-interval` and `--hdr-log`.
#[derive(Debug)]
pub struct IntervalReport {
    pub thread: usize,
    pub index: u64,
    pub completed: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

/// What one thread measured since its last progress report, for the live progress line.
#[derive(Debug)]
pub struct ProgressReport {
    pub sent: u64,
    pub completed: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
    pub send_lag: Histogram<u64>,
}

/// What the driver threads tell the main thread while they run.
#[derive(Debug)]
pub enum Report {
    Interval(IntervalReport),
    Progress(ProgressReport),
}

/// How often a thread reports progress when a progress line is wanted.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Everything one driver thread needs.
#[derive(Debug)]
pub struct ThreadPlan {
    pub index: usize,
    /// Global indices of the connections this thread owns.
    pub connections: Vec<usize>,
    pub config: Arc<LoadConfig>,
    pub abort: Arc<AtomicBool>,
    pub gate: Arc<StartGate>,
    pub ready: mpsc::Sender<Result<(), String>>,
    /// Where interval slices go (with `--log-interval` or `--hdr-log`).
    pub intervals: Option<mpsc::Sender<Report>>,
    /// Where progress reports go (the live progress line), every [`PROGRESS_EVERY`].
    pub progress: Option<mpsc::Sender<Report>>,
    /// With `--requests N`: the measured sends left to the whole run, shared by its threads.
    pub tickets: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// What one driver thread measured.
#[derive(Debug)]
pub struct ThreadOutcome {
    pub m: Measured,
    /// Actual send times of measured requests (ns).
    pub send_times: Vec<u64>,
    /// Scheduled send times of measured requests (ns).
    pub scheduled_times: Vec<u64>,
    pub records: Vec<RequestRecord>,
    /// Of `schedule_ns`, the time the thread spent waiting with nothing to do: ahead of its
    /// schedule, with no replies to handle. The rest is its own work, so a thread whose idle
    /// time nears zero is the bottleneck, even while it still keeps its send lag low.
    pub idle_ns: u64,
    /// How long the thread spent sending its schedule (warm-up included).
    pub schedule_ns: u64,
    /// Why the run stopped early, if it did.
    pub error: Option<LoadError>,
    /// When the last measured reply arrived (0: none): with `--requests`, where the measured
    /// window really ended.
    pub last_done_ns: u64,
}

struct Conn {
    link: Link,
    client: ClientConn,
    connected: bool,
}

/// What carries a connection's bytes.
enum Link {
    Tcp(TcpStream),
    /// A queue of the queue driver's LibOs.
    Queue(crate::queue::Qd),
}

impl Conn {
    /// The socket of a TCP connection (the TCP drivers only ever hold those).
    fn fd(&self) -> Result<std::os::fd::RawFd, LoadError> {
        match &self.link {
            Link::Tcp(s) => Ok(s.as_raw_fd()),
            Link::Queue(_) => Err(LoadError::Internal(
                "a queue-API connection in a socket driver".into(),
            )),
        }
    }
}

/// What one [`Io::poll`] did.
#[derive(Debug, Clone, Copy)]
pub struct Polled {
    /// Events (readiness or completions) it handled.
    pub events: usize,
    /// Time it spent blocked in the kernel waiting for them.
    pub waited_ns: u64,
}

/// The I/O model that moves a driver's bytes.
enum Io {
    Epoll(epoll::EpollIo),
    Uring(Box<uring::UringIo>),
    Queue(Box<queue::QueueIo>),
}

impl Io {
    fn new(cfg: &LoadConfig, connections: usize) -> Result<Io, LoadError> {
        Ok(match cfg.driver {
            DriverKind::Epoll => Io::Epoll(epoll::EpollIo::new(cfg.addr)?),
            DriverKind::Uring | DriverKind::Auto => {
                Io::Uring(Box::new(uring::UringIo::new(cfg.addr, connections)?))
            }
            DriverKind::Queue => Io::Queue(Box::new(queue::QueueIo::new(cfg)?)),
        })
    }

    /// Starts watching connection `slot` (connected, or with its connect in progress).
    fn add(&mut self, slot: usize, conn: &Conn) -> Result<(), LoadError> {
        match self {
            Io::Epoll(io) => io.add(slot, conn),
            Io::Uring(io) => io.add(slot, conn),
            Io::Queue(_) => Ok(()),
        }
    }

    /// Handles whatever I/O is ready, waiting at most `timeout` for some.
    fn poll(
        &mut self,
        conns: &mut [Conn],
        tally: &mut Tally,
        timeout: Duration,
    ) -> Result<Polled, LoadError> {
        match self {
            Io::Epoll(io) => io.poll(conns, tally, timeout),
            Io::Uring(io) => io.poll(conns, tally, timeout),
            Io::Queue(io) => io.poll(conns, tally, timeout),
        }
    }

    /// Connection `slot` has a new request queued: send what can go now.
    fn send(&mut self, conns: &mut [Conn], tally: &mut Tally, slot: usize) -> Result<(), LoadError> {
        match self {
            Io::Epoll(io) => io.flush(conns, tally, slot),
            Io::Uring(io) => io.send(conns, slot),
            Io::Queue(io) => io.send(conns, tally, slot),
        }
    }
}

struct Driver {
    plan: ThreadPlan,
    io: Io,
    conns: Vec<Conn>,
    tally: Tally,
}

/// Counters and histograms, kept apart from the connections so both can be borrowed at once.
struct Tally {
    out: ThreadOutcome,
    interval: Histogram<u64>,
    interval_completed: u64,
    interval_errors: u64,
    keep_records: bool,
    /// The end of the measured window: replies after it still count, but not as on time.
    window_end_ns: u64,
    /// Since the last progress report, when one is wanted.
    progress: Option<ProgressTally>,
    /// Closed loop: connections that had a reply since the loop last topped them up.
    refill: Option<Vec<usize>>,
}

/// What [`Driver::window`] sets up for a thread's loop.
struct Window {
    warm_end: u64,
    end: u64,
    rng: rand::rngs::Xoshiro256PlusPlus,
    next_id: u64,
}

/// Counts for the live progress line, reset at each report.
struct ProgressTally {
    sent: u64,
    completed: u64,
    errors: u64,
    latency: Histogram<u64>,
    send_lag: Histogram<u64>,
}

impl ProgressTally {
    fn new() -> Self {
        ProgressTally {
            sent: 0,
            completed: 0,
            errors: 0,
            latency: new_histogram(),
            send_lag: new_histogram(),
        }
    }

    fn take(&mut self) -> ProgressReport {
        let t = std::mem::replace(self, ProgressTally::new());
        ProgressReport {
            sent: t.sent,
            completed: t.completed,
            errors: t.errors,
            latency: t.latency,
            send_lag: t.send_lag,
        }
    }
}

impl Tally {
    fn complete(&mut self, c: Completion) {
        if !c.request.measured {
            return;
        }
        let r = c.request;
        let latency = c.done_ns.saturating_sub(r.scheduled_ns);
        self.out.last_done_ns = self.out.last_done_ns.max(c.done_ns);
        if let Some(p) = &mut self.progress {
            if c.ok {
                p.completed += 1;
                p.latency.saturating_record(latency);
            } else {
                p.errors += 1;
            }
        }
        if c.ok {
            self.out.m.completed += 1;
            if c.done_ns <= self.window_end_ns {
                self.out.m.completed_by_end += 1;
            }
            self.out.m.latency.saturating_record(latency);
            self.out
                .m
                .uncorrected
                .saturating_record(c.done_ns.saturating_sub(r.sent_ns));
            self.interval.saturating_record(latency);
            self.interval_completed += 1;
        } else {
            self.out.m.bad_replies += 1;
            self.interval_errors += 1;
            if c.status != 0 && c.status != 200 {
                *self.out.m.http_status.entry(c.status).or_default() += 1;
            }
        }
        if self.keep_records {
            self.out.records.push(RequestRecord {
                id: r.id,
                scheduled_ns: r.scheduled_ns,
                sent_ns: r.sent_ns,
                done_ns: c.done_ns,
                request_bytes: r.request_bytes,
                reply_bytes: r.reply_bytes,
                ok: c.ok,
            });
        }
    }
}

/// Runs one driver thread to the end of its schedule and the drain after it.
pub fn run(plan: ThreadPlan) -> ThreadOutcome {
    let keep_records = plan.config.requests_log;
    let mut tally = Tally {
        out: ThreadOutcome {
            m: Measured::new(),
            send_times: Vec::new(),
            scheduled_times: Vec::new(),
            records: Vec::new(),
            idle_ns: 0,
            schedule_ns: 0,
            error: None,
            last_done_ns: 0,
        },
        interval: new_histogram(),
        interval_completed: 0,
        interval_errors: 0,
        keep_records,
        window_end_ns: u64::MAX,
        progress: plan.progress.as_ref().map(|_| ProgressTally::new()),
        refill: plan.config.closed_loop.map(|_| Vec::new()),
    };
    let io = match Io::new(&plan.config, plan.connections.len()) {
        Ok(io) => io,
        Err(e) => {
            let _ = plan.ready.send(Err(e.to_string()));
            tally.out.error = Some(e);
            return tally.out;
        }
    };
    let mut driver = Driver {
        plan,
        io,
        conns: Vec::new(),
        tally,
    };
    if let Err(e) = driver.go() {
        driver.plan.abort.store(true, Ordering::SeqCst);
        driver.tally.out.error.get_or_insert(e);
    }
    if let Io::Queue(io) = &mut driver.io {
        io.close_all(&driver.conns);
    }
    driver.tally.out
}

impl Driver {
    fn go(&mut self) -> Result<(), LoadError> {
        let cfg = self.plan.config.clone();
        tighten_timer_slack();
        if !cfg.pin.is_empty() {
            let cpu = cfg.pin[self.plan.index % cfg.pin.len()];
            crate::os::cpu::pin_current_thread(&[cpu]).map_err(|e| LoadError::Setup(e.to_string()))?;
        }
        let connected = self.connect_all(&cfg);
        let _ = self
            .plan
            .ready
            .send(connected.as_ref().map(|_| ()).map_err(ToString::to_string));
        connected?;
        let Some(start) = self.plan.gate.wait() else {
            return Ok(()); // another thread failed to connect; it reports why
        };
        let mut interval = IntervalClock::new(cfg.log_interval, start + cfg.warmup.as_nanos() as u64, start);
        // A start far ahead (--start-at) is waited out first: that wait is not the schedule's,
        // and counted as idle it would make the generator look never busy.
        self.wait_until(start, &mut interval)?;
        self.tally.out.idle_ns = 0;
        let schedule_result = match cfg.closed_loop {
            Some(depth) => self.closed_loop(&cfg, start, depth, &mut interval),
            None => self.schedule(&cfg, start, &mut interval),
        };
        self.tally.out.schedule_ns = now_ns().saturating_sub(start);
        schedule_result?;
        self.drain(&cfg, &mut interval)?;
        interval.flush(self, true);
        Ok(())
    }

    fn connect_all(&mut self, cfg: &LoadConfig) -> Result<(), LoadError> {
        for (slot, _) in self.plan.connections.iter().enumerate() {
            let (link, connected) = match (&mut self.io, cfg.connect) {
                (Io::Queue(io), mode) => io.connect(slot, mode)?,
                (_, ConnectMode::Sequential) => (Link::Tcp(connect_blocking(cfg.addr)?), true),
                (_, ConnectMode::Concurrent) => (Link::Tcp(connect_nonblocking(cfg.addr)?), false),
            };
            if let Link::Tcp(stream) = &link {
                let _ = stream.set_nodelay(true);
            }
            let conn = Conn {
                link,
                client: match &cfg.http {
                    Some(pages) => ClientConn::http(cfg.chunk_size, pages.clone(), cfg.max_in_flight),
                    None => ClientConn::new(cfg.chunk_size, cfg.max_frame, cfg.max_in_flight),
                },
                connected,
            };
            self.io.add(slot, &conn)?;
            self.conns.push(conn);
        }
        Ok(())
    }

    /// Sends every request whose scheduled time falls before the end of the run.
    fn schedule(
        &mut self,
        cfg: &LoadConfig,
        start: u64,
        interval: &mut IntervalClock,
    ) -> Result<(), LoadError> {
        let Window {
            warm_end,
            end,
            mut rng,
            mut next_id,
        } = self.window(cfg, start);
        let per_conn_rate = cfg.rate / cfg.connections as f64;
        let arrivals = Arrivals::new(cfg.arrival, per_conn_rate);
        let mut next_at: Vec<f64> = Vec::with_capacity(self.conns.len());
        let mut heap = BinaryHeap::with_capacity(self.conns.len());
        for (slot, &global) in self.plan.connections.iter().enumerate() {
            let t = arrivals.first(&mut rng, global, cfg.connections);
            next_at.push(t);
            heap.push(Reverse((start + t as u64, slot)));
        }
        let mut out_of_tickets = false;
        while let Some(&Reverse((at, slot))) = heap.peek() {
            if at >= end || self.plan.abort.load(Ordering::Relaxed) {
                break;
            }
            self.wait_until(at, interval)?;
            // The spec is drawn whether or not the request can go, so the schedule and the
            // request mix depend only on the seed, never on how the server behaves.
            let spec = draw_spec(cfg, &mut rng);
            let measured = at >= warm_end;
            if measured && !self.take_ticket() {
                out_of_tickets = true; // --requests: the run has sent all it was asked to
                break;
            }
            self.fire(slot, at, measured, spec, next_id)?;
            next_id += 1;
            next_at[slot] += arrivals.gap(&mut rng);
            // The connection's next send replaces it at the top: one sift, not a pop and a push.
            if let Some(mut top) = heap.peek_mut() {
                *top = Reverse((start + next_at[slot] as u64, slot));
            }
        }
        // The window lasts its --duration even when its last send (or, at a rate far below one
        // per window, every send) falls before its end: the replies and the clock run to it.
        if !out_of_tickets && !self.plan.abort.load(Ordering::Relaxed) {
            self.wait_until(end, interval)?;
        }
        Ok(())
    }

    /// The measured window of a run that starts at `start` (both loops): warm-up end and
    /// window end, this thread's seeded generator, and its first request id.
    fn window(&mut self, cfg: &LoadConfig, start: u64) -> Window {
        let warm_end = start + cfg.warmup.as_nanos() as u64;
        let end = warm_end.saturating_add(cfg.duration.as_nanos() as u64);
        self.tally.window_end_ns = end;
        let seed = cfg.seed ^ (self.plan.index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Window {
            warm_end,
            end,
            rng: rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed),
            next_id: (self.plan.index as u64) << 48,
        }
    }

    /// `--requests N`: takes one of the run's measured sends, if any are left.
    fn take_ticket(&self) -> bool {
        self.plan.tickets.as_ref().is_none_or(|t| {
            t.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1))
                .is_ok()
        })
    }

    /// The closed loop: every connection keeps `depth` requests out and sends the next the
    /// moment a reply arrives; there is no schedule, so a request is "scheduled" when it is
    /// sent and a server that stalls simply gets fewer requests (what the loop hides).
    fn closed_loop(
        &mut self,
        cfg: &LoadConfig,
        start: u64,
        depth: usize,
        interval: &mut IntervalClock,
    ) -> Result<(), LoadError> {
        let Window {
            warm_end,
            end,
            mut rng,
            mut next_id,
        } = self.window(cfg, start);
        let mut top_up: Vec<usize> = (0..self.conns.len()).collect();
        let mut out_of_tickets = false;
        self.wait_until(start, interval)?;
        loop {
            let now = now_ns();
            interval.tick(self, now);
            if now >= end || self.plan.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            for &slot in &top_up {
                while !out_of_tickets && self.conns[slot].client.in_flight() < depth {
                    let at = now_ns();
                    let measured = at >= warm_end;
                    if measured && !self.take_ticket() {
                        out_of_tickets = true;
                        break;
                    }
                    let spec = draw_spec(cfg, &mut rng);
                    self.fire(slot, at, measured, spec, next_id)?;
                    next_id += 1;
                }
            }
            if out_of_tickets && self.conns.iter().all(|c| c.client.in_flight() == 0) {
                return Ok(());
            }
            let timeout = Duration::from_nanos(end - now).min(MAX_SLEEP);
            let polled = self.io.poll(&mut self.conns, &mut self.tally, timeout)?;
            self.tally.out.idle_ns += polled.waited_ns;
            top_up.clear();
            if let Some(refill) = &mut self.tally.refill {
                top_up.append(refill);
            }
        }
    }

    fn fire(
        &mut self,
        slot: usize,
        at: u64,
        measured: bool,
        spec: RequestSpec,
        id: u64,
    ) -> Result<(), LoadError> {
        let conn = &mut self.conns[slot];
        if !conn.client.can_send() {
            if measured {
                self.tally.out.m.overflow += 1;
                self.tally.interval_errors += 1;
            }
            return Ok(());
        }
        let now = now_ns();
        conn.client.queue(id, at, now, spec, measured);
        if measured {
            let lag = now.saturating_sub(at);
            let out = &mut self.tally.out;
            out.m.sent += 1;
            out.m.send_lag.saturating_record(lag);
            out.send_times.push(now);
            out.scheduled_times.push(at);
            if let Some(p) = &mut self.tally.progress {
                p.sent += 1;
                p.send_lag.saturating_record(lag);
            }
        }
        self.io.send(&mut self.conns, &mut self.tally, slot)
    }

    /// Waits for `at`, handling socket events meanwhile: sleep most of the way, spin the rest.
    fn wait_until(&mut self, at: u64, interval: &mut IntervalClock) -> Result<(), LoadError> {
        loop {
            let now = now_ns();
            interval.tick(self, now);
            if now >= at {
                return Ok(());
            }
            let left = at - now;
            let timeout = if left > SPIN_WINDOW_NS {
                Duration::from_nanos(left - SPIN_WINDOW_NS).min(MAX_SLEEP)
            } else {
                Duration::ZERO
            };
            let polled = self.io.poll(&mut self.conns, &mut self.tally, timeout)?;
            // A turn that found nothing was all waiting; one that handled replies waited only
            // inside the kernel.
            self.tally.out.idle_ns += if polled.events == 0 {
                now_ns().saturating_sub(now)
            } else {
                polled.waited_ns
            };
            if self.plan.abort.load(Ordering::Relaxed) {
                return Err(LoadError::Stopped);
            }
        }
    }

    /// After the last send: wait for the replies still in flight, up to the drain timeout.
    fn drain(&mut self, cfg: &LoadConfig, interval: &mut IntervalClock) -> Result<(), LoadError> {
        let deadline = now_ns() + cfg.drain_timeout.as_nanos() as u64;
        loop {
            if self.conns.iter().all(|c| c.client.in_flight() == 0) {
                break;
            }
            let now = now_ns();
            interval.tick(self, now);
            if now >= deadline || self.plan.abort.load(Ordering::Relaxed) {
                break;
            }
            let timeout = Duration::from_nanos(deadline - now).min(MAX_SLEEP);
            self.io.poll(&mut self.conns, &mut self.tally, timeout)?;
        }
        self.tally.out.m.lost = self
            .conns
            .iter()
            .map(|c| c.client.measured_in_flight() as u64)
            .sum();
        Ok(())
    }
}

/// Cuts the run into `--log-interval` slices and hands each slice's histogram to the main
/// thread as the slice ends; and, when a progress line is wanted, reports what was measured
/// every [`PROGRESS_EVERY`].
struct IntervalClock {
    every_ns: Option<u64>,
    origin: u64,
    index: u64,
    progress_at: u64,
}

impl IntervalClock {
    fn new(every: Option<Duration>, origin: u64, start: u64) -> Self {
        IntervalClock {
            every_ns: every.map(|d| (d.as_nanos() as u64).max(1_000_000)),
            origin,
            index: 0,
            progress_at: start,
        }
    }

    fn tick(&mut self, d: &mut Driver, now: u64) {
        if let Some(every) = self.every_ns {
            if now >= self.origin + (self.index + 1) * every {
                self.flush(d, false);
            }
        }
        if now >= self.progress_at {
            self.progress_at = now + PROGRESS_EVERY.as_nanos() as u64;
            d.report_progress();
        }
    }

    fn flush(&mut self, d: &mut Driver, last: bool) {
        if last {
            d.report_progress();
        }
        if self.every_ns.is_none()
            || (last && d.tally.interval_completed == 0 && d.tally.interval_errors == 0)
        {
            return;
        }
        if let Some(tx) = &d.plan.intervals {
            let latency = std::mem::replace(&mut d.tally.interval, new_histogram());
            let _ = tx.send(Report::Interval(IntervalReport {
                thread: d.plan.index,
                index: self.index,
                completed: std::mem::take(&mut d.tally.interval_completed),
                errors: std::mem::take(&mut d.tally.interval_errors),
                latency,
            }));
        }
        self.index += 1;
    }
}

impl Driver {
    fn report_progress(&mut self) {
        if let (Some(tx), Some(p)) = (&self.plan.progress, &mut self.tally.progress) {
            let _ = tx.send(Report::Progress(p.take()));
        }
    }
}

/// One request's shape, drawn from the workload's distributions.
fn draw_spec(cfg: &LoadConfig, rng: &mut rand::rngs::Xoshiro256PlusPlus) -> RequestSpec {
    RequestSpec {
        request_bytes: cfg.request_size.sample(rng).min(cfg.max_frame as u64) as u32,
        reply: match cfg.reply {
            ReplyDist::Echo => ReplySize::Echo,
            ReplyDist::Sized(d) => ReplySize::Bytes(d.sample(rng).min(cfg.max_frame as u64) as u32),
        },
        spin_ns: cfg.work.sample_ns(rng),
        page: match &cfg.http {
            Some(pages) => rng.random_range(0..pages.len() as u32),
            None => 0,
        },
    }
}

/// Whether the io_uring driver can run here (io_uring allowed, multishot recv present).
pub fn uring_available() -> bool {
    crate::os::uring::setup::kernel_at_least(6, 0) && crate::os::uring::setup::try_ring(256, None).is_ok()
}

/// Feeds bytes received on `slot` to its client and counts the replies they complete.
fn received(conn: &mut Conn, tally: &mut Tally, slot: usize, data: &[u8], now: u64) -> Result<(), LoadError> {
    tally.out.m.bytes_received += data.len() as u64;
    let before = conn.client.in_flight();
    conn.client
        .receive(data, now, |c| tally.complete(c))
        .map_err(|source| LoadError::Reply { slot, source })?;
    if let Some(refill) = &mut tally.refill {
        if conn.client.in_flight() < before {
            refill.push(slot);
        }
    }
    Ok(())
}

/// A non-blocking connect has finished: did it succeed?
fn check_connected(conn: &mut Conn, addr: SocketAddr) -> Result<(), LoadError> {
    match take_socket_error(conn.fd()?) {
        Ok(None) => {
            conn.connected = true;
            Ok(())
        }
        Ok(Some(e)) | Err(e) => Err(LoadError::connect(addr, &e)),
    }
}

fn server_closed(slot: usize, conn: &Conn) -> LoadError {
    LoadError::ServerClosed {
        slot,
        in_flight: conn.client.in_flight(),
    }
}

/// A connection's socket failed: a reset (or the broken pipe a write meets after one) is the
/// server's doing and says so; anything else is the socket's error as it is.
fn socket_failed(slot: usize, conn: &Conn, e: std::io::Error) -> LoadError {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => LoadError::ServerReset {
            slot,
            in_flight: conn.client.in_flight(),
        },
        _ => LoadError::failed(slot, e),
    }
}

fn connect_blocking(addr: SocketAddr) -> Result<TcpStream, LoadError> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| LoadError::connect(addr, &e))?;
    stream
        .set_nonblocking(true)
        .map_err(LoadError::os("fcntl O_NONBLOCK"))?;
    Ok(stream)
}

fn connect_nonblocking(addr: SocketAddr) -> Result<TcpStream, LoadError> {
    use socket2::{Domain, Socket, Type};
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(LoadError::os("socket"))?;
    socket
        .set_nonblocking(true)
        .map_err(LoadError::os("fcntl O_NONBLOCK"))?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(LoadError::connect(addr, &e)),
    }
    Ok(socket.into())
}
