//! The `iolab` command line: the only place that knows every subsystem.

use std::io::{IsTerminal as _, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use iolab::engine::{self, EngineKind, EpollMode, RecvMode, ServeConfig, UringOptions};
use iolab::lab::demo;
use iolab::loadgen::spec::{ReplyDist, SizeDist, WorkDist};
use iolab::loadgen::{self, ArrivalKind, ConnectMode, DriverKind, LoadConfig};
use iolab::sansio::frame::{DEFAULT_CHUNK_SIZE, DEFAULT_MAX_FRAME};
use iolab::sansio::session::SessionConfig;
use iolab::sansio::units::{Dur, Size};

#[derive(Parser, Debug)]
#[command(
    name = "iolab",
    version,
    about = "A laboratory for Linux network I/O models",
    long_about = "A laboratory for Linux network I/O models.\n\n\
        One server runs the same application logic on many I/O engines (thread per \
        connection, vectored I/O, ...); one open-loop load generator drives any of them with \
        Poisson arrivals and measures latency from each request's scheduled send time, so a \
        stalled server cannot hide its stalls.\n\n\
        Start with `iolab demo`. Then try, in two terminals:\n  \
        iolab serve --engine iovec --addr 127.0.0.1:7000\n  \
        iolab load --addr 127.0.0.1:7000 --rate 20000 --duration 10s"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one engine as a server until SIGINT/SIGTERM.
    Serve(Box<ServeArgs>),
    /// Drive a server with open-loop load (or --closed-loop) and report latency and throughput.
    Load(Box<LoadArgs>),
    /// A one-minute sweep of every engine, then the HTML report and notebook (loopback, no setup).
    Demo(DemoArgs),
    /// Engines × offered rates, each engine its own pinned server process, into a results
    /// folder (points.csv, meta.json, per-point JSON and HdrHistogram logs).
    Sweep(Box<SweepArgs>),
    /// The highest rate each engine of a sweep sustained with p99 under the SLO.
    Knee(KneeArgs),
    /// A results folder in, a self-contained HTML page and a Jupyter notebook out.
    Report(ReportArgs),
    /// Write a reproducible corpus of web pages (sizes as real pages' HTML) and its paths file.
    Corpus(CorpusArgs),
}

#[derive(Args, Debug)]
struct CorpusArgs {
    /// Folder to write (pages/, one-kib.html, paths.txt); created if missing.
    #[arg(long)]
    out: PathBuf,
    /// How many pages.
    #[arg(long, default_value_t = 500)]
    pages: usize,
    /// The same seed writes the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// A results folder written by `iolab sweep`.
    dir: PathBuf,
    /// Where to write the page (default: DIR/report.html). The notebook goes beside it with
    /// the extension .ipynb, and the figures as SVG files into figures/ beside them.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// The p99 bound of the knee table (default: the sweep's --slo).
    #[arg(long)]
    slo: Option<Dur>,
    /// Offered rate for the latency CDFs and the arrivals figures (default: the highest rate
    /// at which every engine has a valid point).
    #[arg(long)]
    at: Option<f64>,
}

/// What each request asks of the server, the same for `load` and `sweep`.
#[derive(Args, Debug)]
struct WorkloadArgs {
    /// Request payload size: N, fixed:N, uniform:A-B, lognormal:MEDIAN,SIGMA.
    #[arg(long, default_value = "64")]
    request_size: SizeDist,
    /// Reply wanted: echo, fixed:N, uniform:A-B, lognormal:MEDIAN,SIGMA.
    #[arg(long, default_value = "echo")]
    reply: ReplyDist,
    /// Server CPU time per request: none, fixed:DUR, exp:MEAN, bimodal:P,DUR1,DUR2,
    /// lognormal:MEDIAN,SIGMA.
    #[arg(long, default_value = "none")]
    work: WorkDist,
}

/// A CPU list (taskset syntax). A newtype, because clap reads `Option<Vec<T>>` as "several
/// values of T" and would not hand the whole list to the parser.
#[derive(Debug, Clone)]
struct CpuList(Vec<usize>);

fn cpus(s: &str) -> Result<CpuList, String> {
    iolab::os::cpu::parse_cpu_list(s).map(CpuList)
}

fn watched_cpus(s: &str) -> Result<CpuList, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(CpuList(Vec::new()));
    }
    cpus(s).map_err(|e| format!("{e}, or 'none'"))
}

/// A rate ladder (see `sweep --rates`).
#[derive(Debug, Clone)]
struct Rates(Vec<f64>);

fn rates(s: &str) -> Result<Rates, String> {
    iolab::lab::sweep::parse_rates(s).map(Rates)
}

#[derive(Args, Debug)]
struct SweepArgs {
    /// Engines, comma-separated; options follow an engine's name after spaces:
    /// --engines "epoll,uring,uring --register-files".
    #[arg(long)]
    engines: String,
    /// Offered rates: START..END:STEPS (evenly spaced) or START..ENDxFACTOR (geometric),
    /// e.g. 10000..200000:8 or 1000..256000x2.
    #[arg(long, value_parser = rates)]
    rates: Rates,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[arg(long, short, default_value_t = 64)]
    connections: usize,
    /// Measured time per point.
    #[arg(long, default_value = "3s")]
    duration: Dur,
    /// Load before each point's measurement starts.
    #[arg(long, default_value = "1s")]
    warmup: Dur,
    /// p99 above this marks an engine saturated (its sweep stops there).
    #[arg(long, default_value = "1ms")]
    slo: Dur,
    /// A point whose generator send-lag p99 exceeds this is invalid (the generator, not the
    /// server, was the bottleneck).
    #[arg(long, default_value = "200us")]
    max_send_lag: Dur,
    /// A point whose arrivals' Kolmogorov–Smirnov p-value (see --ks-timescale) falls below
    /// this is invalid: the server did not see Poisson load.
    #[arg(long, default_value_t = 0.01)]
    min_ks_p: f64,
    #[command(flatten)]
    arrivals_check: ArrivalsCheckArgs,
    /// A point where the generator was busy (not waiting for its next send) for more than
    /// this fraction of the run is invalid: its core, not the server, was the limit.
    #[arg(long, default_value_t = 0.9)]
    max_generator_busy: f64,
    /// Valid repeats of every point: each engine and rate is measured until K valid
    /// measurements agree (or a majority of K says the engine is over the SLO there), in
    /// rounds that interleave the engines, so a burst of machine noise falls on several of them
    /// once each instead of on one. Figures are medians over the repeats, with their spread.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    repeat: u32,
    /// Most measurements of one point, repeats and re-measurements of invalid ones together
    /// (default: twice --repeat). An invalid point is measured again in a later round.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=999))]
    max_tries: Option<u32>,
    /// A point during which the machine stalled (canary threads at real-time priority, one
    /// per CPU, saw stalls beyond half the SLO each) for more than this fraction of its
    /// measured time is invalid and measured again: such stalls alone can move a p99.
    #[arg(long, default_value_t = 0.0025)]
    max_stall: f64,
    /// Before each point, wait until the machine is quiet (no stall, every CPU idle),
    /// looking in 100 ms windows, at most this long.
    #[arg(long, default_value = "2s")]
    quiet_timeout: Dur,
    /// Start no new point after this much time; cells still unsettled then are reported as
    /// such.
    #[arg(long)]
    budget: Option<Dur>,
    /// CPUs for the server (default: 0).
    #[arg(long, value_parser = cpus)]
    server_cpus: Option<CpuList>,
    /// CPUs for the load generator, one driver thread each (default: 1).
    #[arg(long, value_parser = cpus)]
    load_cpus: Option<CpuList>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// After the sweep, the coordinated-omission lesson: load this engine (a spec as in
    /// --engines) at the first rate, once open loop and once closed loop (one request per
    /// connection, as wrk), while the server is stopped for 100 ms every second; the report
    /// sets the two tails side by side.
    #[arg(long)]
    compare_loops: Option<String>,
    /// Results folder (default: results/sweep-<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// How the generator judges whether its own arrivals were Poisson (shared by load and sweep).
#[derive(Args, Debug, Clone, Copy)]
struct ArrivalsCheckArgs {
    /// The arrivals check (Kolmogorov-Smirnov) judges the process at this timescale: it sums
    /// rate x timescale consecutive gaps and compares the sums with the Erlang distribution a
    /// Poisson process gives them. One sender cannot place single sends finer than its own
    /// cost and jitter (a few microseconds); at this scale a wrong rate, too-regular or
    /// too-bursty sending and stalls still show. The strict gap-by-gap test is reported too.
    #[arg(long, default_value = "200us")]
    ks_timescale: Dur,
    /// The check compares the distributions only from this length up.
    #[arg(long, default_value = "20us")]
    ks_resolution: Dur,
}

impl ArrivalsCheckArgs {
    fn apply(self, cfg: &mut iolab::loadgen::LoadConfig) {
        cfg.ks_timescale = self.ks_timescale.0;
        cfg.ks_resolution = self.ks_resolution.0;
    }
}

#[derive(Args, Debug)]
struct KneeArgs {
    /// A results folder written by `iolab sweep`.
    dir: PathBuf,
    /// The p99 bound.
    #[arg(long, default_value = "1ms")]
    slo: Dur,
    /// Print the table as JSON: per engine the knee in rps (null if none), whether it is a
    /// lower bound or uncertain, the p99 there with its spread, and which engines it cannot
    /// be told apart from.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// The I/O engine.
    #[arg(long, short)]
    engine: EngineKind,
    /// Address to listen on; port 0 picks a free port (printed on the first line).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Wire protocol: `frame` (the lab's binary frames) or `http` (HTTP/1.1 GET and HEAD of
    /// the files under --root, read into memory at start).
    #[arg(long, value_enum, default_value_t = Protocol::Frame)]
    protocol: Protocol,
    /// With --protocol http: the directory served. Nothing outside it is ever sent; symbolic
    /// links are followed only to targets inside it.
    #[arg(long, required_if_eq("protocol", "http"))]
    root: Option<PathBuf>,
    /// With --protocol http: the most the files under --root may hold in all.
    #[arg(long, default_value = "1GiB")]
    cache_limit: Size,
    /// Share-nothing event loops (select, poll, epoll, uring, tokio, monoio): each has its own SO_REUSEPORT
    /// listener and CPU, and a connection stays on the loop that accepted it.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pin to these CPUs (taskset syntax: 0, 0,2, 0-3). Event loop i runs on the i-th;
    /// thread-per-connection engines run all their threads on the set.
    /// Default: none, or 0..N-1 with --threads N > 1.
    #[arg(long, value_parser = cpus)]
    pin: Option<CpuList>,
    /// epoll: `edge` registers interest once and reads until EAGAIN; `level` keeps interest
    /// exact with epoll_ctl and may read less per wake-up.
    #[arg(long, value_enum, default_value_t = EpollMode::Edge)]
    epoll_mode: EpollMode,
    /// pool: worker threads that run the requests (the loop thread only does I/O).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    #[command(flatten)]
    frame: FrameArgs,
    #[command(flatten)]
    uring: UringArgs,
    #[command(flatten)]
    shm: ShmArgs,
    #[command(flatten)]
    userspace: UserspaceArgs,
    /// Longest spin a request may ask for; a peer asking more is disconnected.
    #[arg(long, default_value = "1s")]
    max_spin: Dur,
    /// On shutdown, how long connections get to flush their replies before being cut off.
    #[arg(long, default_value = "5s")]
    drain_timeout: Dur,
    /// Do not log one line per connection closed for a protocol error (still counted).
    #[arg(long)]
    quiet: bool,
}

/// Options of the `shm` engine.
#[derive(Args, Debug)]
#[command(next_help_heading = "Shared memory (--engine shm)")]
struct ShmArgs {
    /// The segment clients attach to: /dev/shm/iolab-NAME. A segment left by a server that
    /// died is replaced; one a running server owns is refused.
    #[arg(long)]
    shm: Option<String>,
    /// Connections the segment holds at once.
    #[arg(long, default_value_t = 64)]
    shm_slots: u32,
    /// Bytes of each ring (one per direction per connection; a power of two, at least 4 KiB).
    #[arg(long, default_value = "256KiB")]
    shm_ring: Size,
    /// How long the polling thread keeps spinning after its last work before it naps 50 us
    /// between polls. `auto`: four times the recent mean gap between requests, at least 1 ms
    /// (and just 1 ms once that exceeds 20 ms: requests that far apart are not near), so a
    /// steady load finds it awake and a quiet one lets the core rest.
    /// A duration fixes it (0: nap at once; a large value: always spin, the lowest latency).
    #[arg(long, default_value = "auto")]
    shm_spin: engine::ShmSpin,
}

/// Options of the `userspace` engine.
#[derive(Args, Debug)]
#[command(next_help_heading = "User-space TCP/IP (--engine userspace)")]
struct UserspaceArgs {
    /// The TAP device the server creates (one queue per --threads), and removes on exit. A
    /// name already in use in the namespace is refused.
    #[arg(long, default_value = "iolab0")]
    tap: String,
    /// The stack's address and the link's prefix; clients connect to this address (and the
    /// --addr port, 7000 if 0). The kernel's end of the link takes the subnet's first other
    /// host (10.77.0.2 for the default).
    #[arg(long, default_value = "10.77.0.1/24")]
    tap_ip: String,
    /// The link's IP MTU (1500: an Ethernet NIC's; up to 65000).
    #[arg(long, default_value_t = 1500)]
    tap_mtu: usize,
    /// Receive and send buffer of each connection, each (64 KiB: a full window unscaled).
    #[arg(long, default_value = "64KiB")]
    tap_buffer: Size,
    /// Listening sockets each queue keeps ready: a smoltcp listener takes one connection,
    /// so this bounds the connections a queue can take in one burst.
    #[arg(long, default_value_t = 64)]
    tap_backlog: usize,
    /// Run in this network namespace: joined if it exists, else created for the run and
    /// deleted on exit. Without it the server must already run inside one (ip netns exec):
    /// the TAP device never goes in the host's namespace.
    #[arg(long)]
    netns: Option<String>,
}

/// Options of the `uring` engine.
#[derive(Args, Debug)]
#[command(next_help_heading = "io_uring (--engine uring)")]
struct UringArgs {
    /// Submission queue entries per ring (a power of two). More lets one submit carry more
    /// operations: raise it when thousands of connections are busy at once.
    #[arg(long, default_value_t = 256)]
    ring_entries: u32,
    /// A kernel thread polls the submission queue, so submitting costs no syscall. Helps when
    /// the loop submits constantly and a spare core can run that thread; on a busy or
    /// single-core machine it competes with the loop instead.
    #[arg(long)]
    sqpoll: bool,
    /// How long the --sqpoll thread keeps polling an idle ring before it sleeps, in ms.
    #[arg(long, default_value_t = 1000, requires = "sqpoll")]
    sqpoll_idle: u32,
    /// Send replies of at least this many bytes with SEND_ZC: the kernel reads the pages in
    /// place instead of copying them, and they stay held until it says it is done. Pays off
    /// for large replies (tens of KiB and up); below that the notification costs more than
    /// the copy it saves.
    #[arg(long)]
    zero_copy_threshold: Option<Size>,
    /// Register each connection in the ring's fixed file table, so operations skip the
    /// per-call file lookup and reference count. Helps at high operation rates.
    #[arg(long)]
    register_files: bool,
    /// How the loop receives: multishot recv into a provided-buffer ring shared by all its
    /// connections (kernel ≥ 6.0), or one recv at a time into a buffer per connection.
    #[arg(long, value_enum, default_value_t = RecvMode::Auto)]
    recv: RecvMode,
    /// Buffers in the provided-buffer ring (a power of two). Raise it if the server reports
    /// that the ring ran empty.
    #[arg(long, default_value_t = 1024)]
    recv_buffers: u16,
    /// Size of each receive buffer.
    #[arg(long, default_value_t = Size(16 * 1024))]
    recv_buffer_size: Size,
}

impl UringArgs {
    fn options(&self) -> anyhow::Result<UringOptions> {
        if !self.ring_entries.is_power_of_two() || self.ring_entries > 32768 {
            anyhow::bail!(
                "--ring-entries must be a power of two up to 32768, not {}",
                self.ring_entries
            );
        }
        if !self.recv_buffers.is_power_of_two() || self.recv_buffers > 32768 {
            anyhow::bail!(
                "--recv-buffers must be a power of two up to 32768, not {}",
                self.recv_buffers
            );
        }
        let size = self.recv_buffer_size.0;
        if !(64..=(1 << 24)).contains(&size) {
            anyhow::bail!("--recv-buffer-size must be between 64 B and 16 MiB");
        }
        Ok(UringOptions {
            ring_entries: self.ring_entries,
            sqpoll: self.sqpoll,
            sqpoll_idle_ms: self.sqpoll_idle,
            zero_copy_threshold: self.zero_copy_threshold.map(|s| s.0 as usize),
            register_files: self.register_files,
            recv: self.recv,
            recv_buffers: self.recv_buffers,
            recv_buffer_size: size as usize,
        })
    }
}

/// Frame sizes, the same for both ends of a connection.
#[derive(Args, Debug)]
struct FrameArgs {
    /// Largest slice handed to one write (and the read buffer of the `threads` engine).
    #[arg(long, default_value_t = Size(DEFAULT_CHUNK_SIZE as u64))]
    chunk_size: Size,
    /// Largest legal frame payload; a peer announcing more is disconnected.
    #[arg(long, default_value_t = Size(DEFAULT_MAX_FRAME as u64))]
    max_frame: Size,
}

impl FrameArgs {
    fn sizes(&self) -> anyhow::Result<(usize, usize)> {
        let to_usize =
            |s: Size, what: &str| usize::try_from(s.0).map_err(|_| anyhow::anyhow!("{what} is too large"));
        Ok((
            to_usize(self.chunk_size, "--chunk-size")?,
            to_usize(self.max_frame, "--max-frame")?,
        ))
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// Kernel TCP sockets.
    Tcp,
    /// Shared-memory rings (serve --engine shm).
    Shm,
    /// A user-space TCP/IP stack (smoltcp) on a TAP device of the load's own, in --netns.
    Userspace,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// Length-prefixed binary frames (see the design document).
    Frame,
    /// HTTP/1.1: GET (and, serving, HEAD) of static files, keep-alive and pipelining.
    Http,
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// The server to load (TCP).
    #[arg(long, required_unless_present = "shm")]
    addr: Option<SocketAddr>,
    /// How requests reach the server: `tcp` (kernel sockets, to --addr), `shm` (through the
    /// shared-memory segment --shm of `iolab serve --engine shm`: no sockets, the driver
    /// polls the rings) or `userspace` (a smoltcp stack on a TAP device the load creates in
    /// --netns, to --addr: a kernel-socket server reached at the TAP's kernel side). shm and
    /// userspace always use the queue-API driver.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    transport: Transport,
    /// With --transport shm: the segment's name.
    #[arg(long, required_if_eq("transport", "shm"))]
    shm: Option<String>,
    /// Run the load in this network namespace (it must exist: `ip netns add`, or a server's
    /// --netns). Needed to reach `serve --engine userspace`, and for --transport userspace.
    #[arg(long)]
    netns: Option<String>,
    /// With --transport userspace: the load's TAP device (removed when the load ends).
    #[arg(long, default_value = "iolabc0")]
    tap: String,
    /// With --transport userspace: the load stack's address and prefix. The kernel's end
    /// takes the subnet's first other host: point --addr at it.
    #[arg(long, default_value = "10.78.0.1/24")]
    tap_ip: String,
    /// With --transport userspace: the link's IP MTU.
    #[arg(long, default_value_t = 1500)]
    tap_mtu: usize,
    /// With --transport userspace: receive and send buffer of each connection, each.
    #[arg(long, default_value = "64KiB")]
    tap_buffer: Size,
    /// Wire protocol. With `http`, each request is a GET of a page drawn at random from
    /// --paths (or --path), checked for status 200 and its body length; non-200 statuses are
    /// counted by status. The workload flags (--request-size, --reply, --work) are frame-only.
    #[arg(long, value_enum, default_value_t = Protocol::Frame)]
    protocol: Protocol,
    /// With --protocol http: the one page to ask for.
    #[arg(long, default_value = "/", conflicts_with = "paths")]
    path: String,
    /// With --protocol http: a file of pages, one per line, `PATH [BYTES]`; with BYTES, each
    /// response's length is checked against it (`iolab corpus` writes such a file).
    #[arg(long)]
    paths: Option<PathBuf>,
    /// With --protocol http: the Host field (default: --addr).
    #[arg(long)]
    host: Option<String>,
    /// Total offered load in requests per second, over all connections and threads
    /// (fractions are fine: 0.5 is one request every two seconds). Not with --closed-loop.
    #[arg(long, required_unless_present = "closed_loop", conflicts_with = "closed_loop")]
    rate: Option<f64>,
    /// How long to measure (after the warm-up), e.g. 10s. Optional with --requests.
    #[arg(long, required_unless_present = "requests")]
    duration: Option<Dur>,
    /// Stop after this many measured requests have been sent and answered (either loop), as
    /// the echo clients' --nrequests does; with --duration too, whichever comes first.
    #[arg(long)]
    requests: Option<u64>,
    /// Closed loop, as wrk and the echo clients of kernel-bypass stacks run: each connection
    /// keeps --depth requests outstanding and sends the next the moment a reply arrives. No
    /// schedule, so a server that stalls is simply sent less, and its stall barely shows in
    /// the latency (coordinated omission). The summary's "mode" says "closed".
    #[arg(long)]
    closed_loop: bool,
    /// With --closed-loop: requests each connection keeps outstanding [default: 1].
    #[arg(long, requires = "closed_loop")]
    depth: Option<usize>,
    /// No start line and no live progress line (they are shown only when stdout is a
    /// terminal anyway).
    #[arg(long, short)]
    quiet: bool,
    /// Load sent before measuring starts; its requests are not counted.
    #[arg(long, default_value = "0s")]
    warmup: Dur,
    /// Connections; each is an independent arrival process at rate/connections.
    #[arg(long, short, default_value_t = 16)]
    connections: usize,
    /// Driver threads; connections and rate are split over them.
    #[arg(long, short, default_value_t = 1)]
    threads: usize,
    /// Interarrival distribution.
    #[arg(long, value_enum, default_value_t = ArrivalKind::Poisson)]
    arrival: ArrivalKind,
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Seed for arrivals and request mix: the same seed gives the same schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests in flight per connection; a send beyond it is skipped and counted as overflow.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Extra connections opened before the run and held silent until its end (the cost of
    /// idle connections to the server's I/O model).
    #[arg(long, default_value_t = 0)]
    idle_connections: usize,
    /// Open connections one by one before starting, or all at once as the load starts.
    #[arg(long, value_enum, default_value_t = ConnectMode::Sequential)]
    connect: ConnectMode,
    /// How the driver threads move bytes: `epoll` (a wait and two reads per reply) or
    /// `uring` (multishot receives, no syscall per reply). `auto` takes uring for messages of
    /// 4 KiB or less on average where the kernel allows it, epoll otherwise: with 64 B echo at
    /// 150k rps uring kept the generator's send-lag p99 at 92 us where epoll's reached 330 us;
    /// with 16 KiB messages epoll was the steadier (docs/measurements.md).
    #[arg(long, value_enum, default_value_t = DriverKind::Auto)]
    driver: DriverKind,
    /// Print throughput, p50 and p99 every this many seconds.
    #[arg(long)]
    log_interval: Option<Dur>,
    /// After the last send, how long to wait for outstanding replies (then they count as lost).
    #[arg(long, default_value = "5s")]
    drain_timeout: Dur,
    /// Pin the driver threads to these CPUs (thread i on the i-th, round robin).
    #[arg(long, value_parser = cpus)]
    pin: Option<CpuList>,
    /// CPUs whose stalls a real-time canary thread each watches (every 1 ms; the summary's
    /// machine_stalls), or `none`. Default: every online CPU.
    #[arg(long, value_parser = watched_cpus)]
    watch_cpus: Option<CpuList>,
    #[command(flatten)]
    frame: FrameArgs,
    #[command(flatten)]
    arrivals_check: ArrivalsCheckArgs,
    /// Write the summary as JSON (keys are stable).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the actual interarrival times, in microseconds, one per line.
    #[arg(long)]
    interarrivals: Option<PathBuf>,
    /// Write per-interval latency histograms as an HdrHistogram interval log.
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// Write one CSV row per request: id, scheduled, sent, done (ns), sizes, ok.
    #[arg(long)]
    requests_log: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Offered rates, each engine walking up them until it saturates (a list, or a ladder as
    /// in `sweep --rates`).
    #[arg(long, value_parser = rates, default_value = "10000,40000,80000,150000")]
    rates: Rates,
    /// Measured time per point.
    #[arg(long, default_value = "800ms")]
    duration: Dur,
    /// Load before each point's measurement starts.
    #[arg(long, default_value = "300ms")]
    warmup: Dur,
    /// Connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Repeats per point: a point is settled once a majority of them agree.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    repeat: u32,
    /// Start no new point after this long (the report follows).
    #[arg(long, default_value = "150s")]
    budget: Dur,
    /// Only these engines (default: all).
    #[arg(long, value_delimiter = ',')]
    engines: Vec<EngineKind>,
    /// Results folder (default: results/demo-<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve(*a),
        Command::Load(a) => load(*a),
        Command::Demo(a) => run_demo(a),
        Command::Sweep(a) => sweep(*a),
        Command::Knee(a) => knee(a),
        Command::Report(a) => report(a),
        Command::Corpus(a) => corpus(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("iolab: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = ServeConfig::new(a.engine, a.addr);
    cfg.pin = a.pin.map(|c| c.0).unwrap_or_default();
    cfg.threads = a.threads;
    cfg.workers = a.workers;
    cfg.epoll_mode = a.epoll_mode;
    if a.workers == 0 {
        anyhow::bail!("--workers must be at least 1");
    }
    let (chunk_size, max_frame) = a.frame.sizes()?;
    cfg.session = SessionConfig {
        chunk_size,
        max_frame,
        max_spin: a.max_spin.0,
        ..SessionConfig::default()
    };
    match (a.protocol, &a.root) {
        (Protocol::Http, Some(root)) => {
            let files = iolab::sansio::static_files::StaticFiles::load(root, a.cache_limit.0)?;
            let s = files.summary();
            eprintln!(
                "http: {} file(s), {:.1} MiB in memory from {}{}",
                s.files,
                s.bytes as f64 / (1 << 20) as f64,
                root.display(),
                if s.skipped_links > 0 {
                    format!(" ({} link(s) leading outside it left out)", s.skipped_links)
                } else {
                    String::new()
                }
            );
            cfg.session.http = Some(std::sync::Arc::new(files));
        }
        (Protocol::Http, None) => anyhow::bail!("--protocol http needs --root DIR"),
        (Protocol::Frame, Some(_)) => {
            anyhow::bail!("--root serves files over HTTP: add --protocol http")
        }
        (Protocol::Frame, None) => {}
    }
    cfg.drain_timeout = a.drain_timeout.0;
    cfg.log_errors = !a.quiet;
    cfg.uring = a.uring.options()?;
    match (a.engine, &a.shm.shm) {
        (EngineKind::Shm, None) => {
            anyhow::bail!("--engine shm needs --shm NAME (the segment clients attach to)")
        }
        (EngineKind::Shm, Some(_)) if a.protocol != Protocol::Frame => {
            anyhow::bail!("--engine shm carries the frame protocol only")
        }
        (EngineKind::Shm, Some(name)) => {
            if name.is_empty() || name.contains('/') || name.len() > 200 {
                anyhow::bail!("--shm '{name}': a name of up to 200 characters, without '/'");
            }
            cfg.shm = engine::ShmOptions {
                name: Some(name.clone()),
                slots: a.shm.shm_slots,
                ring_bytes: usize::try_from(a.shm.shm_ring.0).unwrap_or(usize::MAX),
                spin: a.shm.shm_spin,
            };
        }
        (_, Some(_)) => anyhow::bail!("--shm names the segment of --engine shm"),
        (_, None) => {}
    }
    if a.engine == EngineKind::Userspace {
        let u = &a.userspace;
        cfg.userspace = engine::userspace::UserspaceOptions {
            link: link_options(&u.tap, &u.tap_ip, u.tap_mtu, u.tap_buffer)?,
            backlog: a.userspace.tap_backlog,
            netns: a.userspace.netns.clone(),
        };
    } else if a.userspace.netns.is_some() {
        anyhow::bail!("--netns, --tap and --tap-* set up the network of --engine userspace");
    }
    // Signals are routed to a thread of their own before any engine thread exists.
    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    let server = engine::start(cfg)?;
    println!("listening on {}", server.endpoint);
    std::io::stdout().flush()?;
    let shutdown = server.shutdown_handle();
    let handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("iolab: signal {sig}: finishing in-flight replies");
            shutdown.trigger();
        }
    });
    let summary = server.wait()?;
    handle.close();
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

/// A TAP link from the `--tap*` arguments `serve` and `load` both take.
fn link_options(
    tap: &str,
    tap_ip: &str,
    mtu: usize,
    buffer: Size,
) -> anyhow::Result<iolab::os::tap::LinkOptions> {
    let (ip, prefix) = iolab::os::tap::parse_cidr(tap_ip).map_err(anyhow::Error::msg)?;
    Ok(iolab::os::tap::LinkOptions {
        tap: tap.to_string(),
        ip,
        prefix,
        mtu,
        socket_buffer: usize::try_from(buffer.0).unwrap_or(usize::MAX),
    })
}

fn load(a: LoadArgs) -> anyhow::Result<ExitCode> {
    let addr = match (a.transport, a.addr, &a.shm) {
        (Transport::Tcp | Transport::Userspace, Some(addr), None) => addr,
        (Transport::Tcp | Transport::Userspace, _, Some(_)) => anyhow::bail!("--shm is for --transport shm"),
        (Transport::Shm, None, Some(_)) => SocketAddr::from(([0, 0, 0, 0], 0)),
        (Transport::Shm, Some(_), _) => {
            anyhow::bail!("--transport shm reaches the server by --shm NAME, not --addr")
        }
        _ => anyhow::bail!("--addr HOST:PORT (or --transport shm --shm NAME) says which server to load"),
    };
    // With --requests alone, the run ends when they are answered (a year is "unbounded").
    let duration = a.duration.map_or(Duration::from_secs(365 * 86_400), |d| d.0);
    let mut cfg = LoadConfig::new(addr, a.rate.unwrap_or(f64::NAN), duration);
    cfg.closed_loop = a.closed_loop.then_some(a.depth.unwrap_or(1));
    cfg.requests = a.requests;
    cfg.shm = a.shm.clone();
    cfg.netns = a.netns.clone();
    if a.transport == Transport::Userspace {
        if a.netns.is_none() {
            anyhow::bail!(
                "--transport userspace creates a TAP device: name the namespace it goes in with --netns NAME"
            );
        }
        cfg.userspace = Some(link_options(&a.tap, &a.tap_ip, a.tap_mtu, a.tap_buffer)?);
    }
    if a.protocol == Protocol::Http {
        let default = (SizeDist::Fixed(64), ReplyDist::Echo, WorkDist::None);
        if (a.workload.request_size, a.workload.reply, a.workload.work) != default {
            anyhow::bail!("--request-size, --reply and --work shape frame requests; an HTTP load asks for pages (--path, --paths)");
        }
        let host = a.host.clone().unwrap_or_else(|| addr.to_string());
        let pages = match &a.paths {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| anyhow::anyhow!("--paths {}: {e}", file.display()))?;
                loadgen::client::Pages::parse(&host, &text)
                    .map_err(|e| anyhow::anyhow!("--paths {}: {e}", file.display()))?
            }
            None => loadgen::client::Pages::new(&host, vec![(a.path.clone(), None)])
                .map_err(anyhow::Error::msg)?,
        };
        cfg.http = Some(std::sync::Arc::new(pages));
    } else if a.paths.is_some() || a.path != "/" || a.host.is_some() {
        anyhow::bail!("--path, --paths and --host are for --protocol http");
    }
    cfg.warmup = a.warmup.0;
    cfg.connections = a.connections;
    cfg.threads = a.threads;
    cfg.arrival = a.arrival;
    cfg.request_size = a.workload.request_size;
    cfg.reply = a.workload.reply;
    cfg.work = a.workload.work;
    cfg.seed = a.seed;
    cfg.max_in_flight = a.max_in_flight;
    cfg.connect = a.connect;
    cfg.driver = a.driver;
    cfg.idle_connections = a.idle_connections;
    cfg.drain_timeout = a.drain_timeout.0;
    cfg.pin = a.pin.map(|c| c.0).unwrap_or_default();
    if let Some(cpus) = a.watch_cpus {
        cfg.watch_cpus = cpus.0;
    }
    (cfg.chunk_size, cfg.max_frame) = a.frame.sizes()?;
    cfg.requests_log = a.requests_log.is_some();
    a.arrivals_check.apply(&mut cfg);
    let print_intervals = a.log_interval.is_some();
    cfg.log_interval = a
        .log_interval
        .map(|d| d.0)
        .or(a.hdr_log.as_ref().map(|_| Duration::from_secs(1)));
    cfg.validate().map_err(anyhow::Error::msg)?;
    if cfg.log_interval.is_some_and(|d| d < Duration::from_millis(1)) {
        anyhow::bail!("--log-interval must be at least 1ms");
    }

    // A terminal sees a start line and a live progress line; a pipe or --quiet sees neither.
    let live = !a.quiet && std::io::stdout().is_terminal();
    if live {
        println!("{}", start_line(&cfg, a.duration.is_some()));
    }
    let mut progress = |p: &loadgen::Progress| {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r\x1b[2K{}", p.describe());
        let _ = out.flush();
    };
    let report = loadgen::run_watched(
        cfg,
        &mut |line| {
            if print_intervals {
                if live {
                    print!("\r\x1b[2K");
                }
                println!("{}", line.describe());
            }
        },
        live.then_some(&mut progress as &mut dyn FnMut(&loadgen::Progress)),
    )?;
    if live {
        print!("\r\x1b[2K");
    }
    print!("{}", report.table());
    // Partial results are written even when the run failed: they are what was measured.
    if let Some(p) = &a.json {
        report.write_json(p)?;
    }
    if let Some(p) = &a.interarrivals {
        report.write_interarrivals(p, usize::MAX)?;
    }
    if let Some(p) = &a.hdr_log {
        report.write_hdr_log(p)?;
    }
    if let Some(p) = &a.requests_log {
        report.write_requests_log(p)?;
    }
    match &report.error {
        Some(e) => {
            eprintln!("iolab: error: {e}");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// What `iolab load` is about to do, for a terminal: target, rate (or loop), connections,
/// and how long.
fn start_line(cfg: &LoadConfig, timed: bool) -> String {
    let what = match cfg.closed_loop {
        Some(depth) => format!("closed loop, {depth} outstanding per connection"),
        None => format!("{} rps offered", cfg.rate),
    };
    let until = match (timed, cfg.requests) {
        (true, Some(n)) => format!("{:.1}s or {n} requests", cfg.duration.as_secs_f64()),
        (false, Some(n)) => format!("{n} requests"),
        _ => format!("{:.1}s", cfg.duration.as_secs_f64()),
    };
    format!(
        "iolab load -> {}: {what} over {} connection(s), {until} after {:.1}s of warm-up",
        cfg.endpoint(),
        cfg.connections,
        cfg.warmup.as_secs_f64()
    )
}

fn run_demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let engines = if a.engines.is_empty() {
        demo::engines()
    } else {
        a.engines
    };
    let out = a.out.unwrap_or_else(demo::default_out);
    let mut cfg = demo::config(&engines, a.rates.0, out.clone())?;
    cfg.duration = a.duration.0;
    cfg.warmup = a.warmup.0;
    cfg.connections = a.connections;
    cfg.repeat = a.repeat;
    cfg.max_tries = cfg.max_tries.max(a.repeat);
    cfg.budget = Some(a.budget.0);
    let ladder: Vec<String> = cfg.rates.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "iolab demo: {} engine(s), each point a fresh server process on CPU {:?}, the generator on CPU {:?};\n\
         64 B echo, {} connections, open-loop Poisson at {} rps, {} per point after {} warm-up;\n\
         each point measured until {} of {} repeats agree, in rounds that interleave the engines\n\
         (at most {:.0} s of points; a point during which the machine stalled is measured again)",
        cfg.engines.len(),
        cfg.server_cpus,
        cfg.load_cpus,
        cfg.connections,
        ladder.join(", "),
        Dur(cfg.duration),
        Dur(cfg.warmup),
        cfg.repeat / 2 + 1,
        cfg.repeat,
        a.budget.0.as_secs_f64()
    );
    run_sweep(&cfg)?;
    let rows = iolab::lab::results::read_points(&out)?;
    println!("{}", iolab::lab::results::knee_table(&rows, cfg.slo));
    let written = iolab::lab::report::write(
        &out,
        &out.join("report.html"),
        &iolab::lab::report::ReportOptions::default(),
    )?;
    println!(
        "Latency runs from each request's scheduled send to its full reply (no coordinated omission).\n\
         report:   {}\nnotebook: {}\ndata:     {}\n\
         Next: `iolab sweep --help` for your own ladder and workload; `iolab serve` and `iolab load` to measure one engine by hand.",
        written.html.display(),
        written.notebook.display(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs a sweep with a progress bar and one line per point.
fn run_sweep(cfg: &iolab::lab::sweep::SweepConfig) -> anyhow::Result<Vec<iolab::lab::results::Point>> {
    use iolab::lab::sweep::Progress;
    let per_point = cfg.duration + cfg.warmup;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} points, {elapsed} | {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Without a terminal the bar is hidden and would swallow its lines too; a log still
    // gets one line per point.
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    let points = iolab::lab::sweep::run(cfg, |p| match p {
        Progress::Round { round, points } => {
            bar.set_length(bar.position() + points as u64);
            say(format!("round {round}: up to {points} point(s)"));
        }
        Progress::Point {
            engine,
            rate,
            round,
            attempt,
        } => bar.set_message(format!(
            "round {round}: {engine} at {rate} rps, try {attempt} ({:.1}s)",
            per_point.as_secs_f64()
        )),
        Progress::Done(point) => {
            bar.inc(1);
            // The reasons in short; points.csv and the report have them in full.
            let why: Vec<&str> = [
                ("machine stalled", "machine stalled"),
                ("send-lag", "send lag"),
                ("busy", "busy"),
                ("Poisson", "K-S"),
            ]
            .into_iter()
            .filter(|(key, _)| point.invalid_reason.contains(key))
            .map(|(_, short)| short)
            .collect();
            let mark = if !point.valid {
                format!("  INVALID ({}: {})", point.blame, why.join(", "))
            } else if point.saturated {
                "  saturated".to_string()
            } else if point.over_slo {
                "  over SLO".to_string()
            } else {
                String::new()
            };
            say(format!(
                "  {:<12} {:>7.0} rps #{}  achieved {:>7.0}  p50 {:>8.1}us  p99 {:>8.1}us  lag99 {:>6.1}us  busy {:>3.0}%  stalls {:>5.1}ms{mark}",
                point.engine, point.offered_rps, point.attempt, point.achieved_rps, point.p50_us, point.p99_us,
                point.send_lag_p99_us, point.generator_busy * 100.0, point.stall_excess_us / 1e3
            ));
        }
        Progress::Skipped { engine, why } => say(format!("  {engine}: skipped, it did not start: {why}")),
        Progress::OutOfTime { unsettled } => say(format!(
            "  time budget spent: {unsettled} point(s) not settled; their knees say so"
        )),
    });
    bar.finish_and_clear();
    let points = points?;
    if let Some(spec) = &cfg.compare_loops {
        println!(
            "open vs closed loop: {}, open loop at {:.0} rps and then closed loop, {:.1} s each, the server stopped for {:.0} ms every {:.0} s",
            spec.join(" "),
            cfg.rates[0],
            (cfg.warmup + iolab::lab::results::LOOPS_DURATION).as_secs_f64(),
            iolab::lab::results::LOOPS_STALL.as_secs_f64() * 1e3,
            iolab::lab::results::LOOPS_STALL_EVERY.as_secs_f64()
        );
        // The lesson is extra: failing it costs the sweep nothing.
        match iolab::lab::sweep::compare_loops(cfg, spec)
            .map(|_| iolab::lab::results::LoopsComparison::read(&cfg.out, &spec.join(" ")))
        {
            Ok(Some(Ok(c))) => {
                for line in c.sentences() {
                    println!("  {line}");
                }
            }
            Ok(Some(Err(e))) | Err(e) => println!("  could not compare the loops: {e:#}"),
            Ok(None) => println!("  could not compare the loops: no results written"),
        }
    }
    Ok(points)
}

fn sweep(a: SweepArgs) -> anyhow::Result<ExitCode> {
    use iolab::lab::sweep::SweepConfig;
    let engines: Vec<Vec<String>> = a
        .engines
        .split(',')
        .map(|e| e.split_whitespace().map(String::from).collect::<Vec<_>>())
        .filter(|e| !e.is_empty())
        .collect();
    for e in &engines {
        <EngineKind as clap::ValueEnum>::from_str(&e[0], false)
            .map_err(|_| anyhow::anyhow!("unknown engine '{}' in --engines", e[0]))?;
    }
    let cpus = iolab::os::cpu::num_cpus();
    let server_cpus = a.server_cpus.map_or_else(|| vec![0], |c| c.0);
    let load_cpus = a
        .load_cpus
        .map_or_else(|| if cpus > 1 { vec![1] } else { vec![0] }, |c| c.0);
    let out = a.out.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("results/sweep-{now}"))
    });
    let mut cfg = SweepConfig::new(engines, a.rates.0, out.clone())?;
    cfg.request_size = a.workload.request_size;
    cfg.reply = a.workload.reply;
    cfg.work = a.workload.work;
    cfg.connections = a.connections;
    cfg.duration = a.duration.0;
    cfg.warmup = a.warmup.0;
    cfg.slo = a.slo.0;
    cfg.max_send_lag = a.max_send_lag.0;
    cfg.min_ks_p = a.min_ks_p;
    cfg.ks_timescale = a.arrivals_check.ks_timescale.0;
    cfg.ks_resolution = a.arrivals_check.ks_resolution.0;
    cfg.max_generator_busy = a.max_generator_busy;
    cfg.repeat = a.repeat;
    cfg.max_tries = a.max_tries.unwrap_or(2 * a.repeat).max(a.repeat);
    if !(0.0..1.0).contains(&a.max_stall) {
        anyhow::bail!("--max-stall is a fraction of a point's measured time, from 0 to below 1");
    }
    cfg.max_stall_fraction = a.max_stall;
    cfg.quiet.timeout = a.quiet_timeout.0;
    cfg.budget = a.budget.map(|b| b.0);
    cfg.server_cpus = server_cpus;
    cfg.load_cpus = load_cpus;
    cfg.seed = a.seed;
    if let Some(spec) = &a.compare_loops {
        let spec: Vec<String> = spec.split_whitespace().map(String::from).collect();
        match spec.first() {
            Some(name) if <EngineKind as clap::ValueEnum>::from_str(name, false).is_ok() => {}
            _ => anyhow::bail!(
                "--compare-loops takes an engine, as --engines does: not '{}'",
                spec.join(" ")
            ),
        }
        cfg.compare_loops = Some(spec);
    }
    let points = run_sweep(&cfg)?;
    let rows = iolab::lab::results::read_points(&out)?;
    println!("{}", iolab::lab::results::knee_table(&rows, cfg.slo));
    println!(
        "{} point(s) in {}; `iolab knee {}` prints the table again",
        points.len(),
        out.display(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn corpus(a: CorpusArgs) -> anyhow::Result<ExitCode> {
    let w = iolab::lab::corpus::write(&a.out, a.pages, a.seed)?;
    println!(
        "wrote {} pages, {:.1} MiB (median {:.1} KiB, p90 {:.1} KiB) into {}/pages, a 1 KiB page {}/one-kib.html,\n\
         and the list {}/paths.txt. Serve it: iolab serve --engine epoll --protocol http --root {}\n\
         Load it:  iolab load --protocol http --addr HOST:PORT --paths {}/paths.txt --rate 10000 --duration 10s",
        w.pages,
        w.bytes as f64 / (1 << 20) as f64,
        w.median as f64 / 1024.0,
        w.p90 as f64 / 1024.0,
        a.out.display(),
        a.out.display(),
        a.out.display(),
        a.out.display(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn knee(a: KneeArgs) -> anyhow::Result<ExitCode> {
    let rows = iolab::lab::results::read_points(&a.dir)?;
    if a.json {
        let json = iolab::lab::results::knee_json(&rows, a.slo.0);
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", iolab::lab::results::knee_table(&rows, a.slo.0));
    }
    Ok(ExitCode::SUCCESS)
}

fn report(a: ReportArgs) -> anyhow::Result<ExitCode> {
    let html = a.output.unwrap_or_else(|| a.dir.join("report.html"));
    let opts = iolab::lab::report::ReportOptions {
        slo_us: a.slo.map(|s| s.0.as_secs_f64() * 1e6),
        at_rate: a.at,
    };
    let w = iolab::lab::report::write(&a.dir, &html, &opts)?;
    println!(
        "report: {} ({} figures)\nnotebook: {}\nfigures: {}",
        w.html.display(),
        w.figures,
        w.notebook.display(),
        w.figures_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
