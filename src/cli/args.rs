//! The command line's arguments: every subcommand's options as clap structs, their parsers,
//! and the help each option teaches. The commands that act on them are in `mod.rs`.

use clap::{Args, Parser, Subcommand};
use iolab::engine::{self, EngineKind, EpollMode, RecvMode, UringOptions};
use iolab::loadgen::spec::{ReplyDist, SizeDist, WorkDist};
use iolab::loadgen::{ArrivalKind, ConnectMode, DriverKind};
use iolab::sansio::frame::{DEFAULT_CHUNK_SIZE, DEFAULT_MAX_FRAME};
use iolab::sansio::units::{Dur, Size};
use std::net::SocketAddr;
use std::path::PathBuf;

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
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
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
    /// Agents' runs (`load --agent NAME --start-at TIME --json F`) in, one run out: counts
    /// summed, percentiles from the merged histograms (never averaged), arrivals checked on
    /// the merged sends.
    Merge(MergeArgs),
    /// Write a reproducible corpus of web pages (sizes as real pages' HTML) and its paths file.
    Corpus(CorpusArgs),
}

#[derive(Args, Debug)]
pub(super) struct CorpusArgs {
    /// Folder to write (pages/, one-kib.html, paths.txt); created if missing.
    #[arg(long)]
    pub(super) out: PathBuf,
    /// How many pages.
    #[arg(long, default_value_t = 500)]
    pub(super) pages: usize,
    /// The same seed writes the same bytes.
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
}

#[derive(Args, Debug)]
pub(super) struct ReportArgs {
    /// A results folder written by `iolab sweep`.
    pub(super) dir: PathBuf,
    /// Where to write the page (default: DIR/report.html). The notebook goes beside it with
    /// the extension .ipynb, and the figures as SVG files into figures/ beside them.
    #[arg(long, short)]
    pub(super) output: Option<PathBuf>,
    /// The p99 bound of the knee table (default: the sweep's --slo).
    #[arg(long)]
    pub(super) slo: Option<Dur>,
    /// Offered rate for the latency CDFs and the arrivals figures (default: the highest rate
    /// at which every engine has a valid point).
    #[arg(long)]
    pub(super) at: Option<f64>,
    /// Also draw a differential flamegraph of two profiled engines, A,B (`epoll,uring`), at
    /// every rate both were profiled at: B's stacks, red where B spends more of its samples
    /// than A, blue where less. Written to DIR/profile/diff-A-B-RATE.svg.
    #[arg(long, value_name = "A,B")]
    pub(super) diff: Option<String>,
}

/// What each request asks of the server, the same for `load` and `sweep`.
#[derive(Args, Debug)]
pub(super) struct WorkloadArgs {
    /// Request payload size: N, fixed:N, uniform:A-B, lognormal:MEDIAN,SIGMA.
    #[arg(long, default_value = "64")]
    pub(super) request_size: SizeDist,
    /// Reply wanted: echo, fixed:N, uniform:A-B, lognormal:MEDIAN,SIGMA.
    #[arg(long, default_value = "echo")]
    pub(super) reply: ReplyDist,
    /// Server CPU time per request: none, fixed:DUR, exp:MEAN, bimodal:P,DUR1,DUR2,
    /// lognormal:MEDIAN,SIGMA.
    #[arg(long, default_value = "none")]
    pub(super) work: WorkDist,
}

/// A CPU list (taskset syntax). A newtype, because clap reads `Option<Vec<T>>` as "several
/// values of T" and would not hand the whole list to the parser.
#[derive(Debug, Clone)]
pub(super) struct CpuList(pub(super) Vec<usize>);

pub(super) fn cpus(s: &str) -> Result<CpuList, String> {
    iolab::os::cpu::parse_cpu_list(s).map(CpuList)
}

pub(super) fn watched_cpus(s: &str) -> Result<CpuList, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(CpuList(Vec::new()));
    }
    cpus(s).map_err(|e| format!("{e}, or 'none'"))
}

/// A rate ladder (see `sweep --rates`).
#[derive(Debug, Clone)]
pub(super) struct Rates(pub(super) Vec<f64>);

pub(super) fn rates(s: &str) -> Result<Rates, String> {
    iolab::lab::sweep::parse_rates(s).map(Rates)
}

/// A number from 0 to 1.
pub(super) fn unit_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        Ok(x) => Err(format!("{x} is not between 0 and 1")),
        Err(_) => Err(format!("'{s}' is not a number")),
    }
}

#[derive(Args, Debug)]
pub(super) struct SweepArgs {
    /// Engines, comma-separated; options follow an engine's name after spaces:
    /// --engines "epoll,uring,uring --register-files".
    #[arg(long)]
    pub(super) engines: String,
    /// Offered rates: START..END:STEPS (evenly spaced) or START..ENDxFACTOR (geometric),
    /// e.g. 10000..200000:8 or 1000..256000x2.
    #[arg(long, value_parser = rates)]
    pub(super) rates: Rates,
    #[command(flatten)]
    pub(super) workload: WorkloadArgs,
    #[arg(long, short, default_value_t = 64)]
    pub(super) connections: usize,
    /// Measured time per point.
    #[arg(long, default_value = "3s")]
    pub(super) duration: Dur,
    /// Load before each point's measurement starts.
    #[arg(long, default_value = "1s")]
    pub(super) warmup: Dur,
    /// p99 above this marks an engine saturated (its sweep stops there).
    #[arg(long, default_value = "1ms")]
    pub(super) slo: Dur,
    /// A point whose generator send-lag p99 exceeds this is invalid (the generator, not the
    /// server, was the bottleneck).
    #[arg(long, default_value = "200us")]
    pub(super) max_send_lag: Dur,
    /// A point whose arrivals' Kolmogorov–Smirnov p-value (see --ks-timescale) falls below
    /// this is invalid (the server did not see Poisson load), if --max-ks-d also says so.
    #[arg(long, default_value_t = 0.01)]
    pub(super) min_ks_p: f64,
    /// The widest departure from the Poisson process (the K-S distance D: the largest gap
    /// between the arrivals' CDF and Poisson's) that still counts as Poisson, whatever the
    /// p-value. A point with thousands of samples fails the test on departures of 2 or 3%; a
    /// generator behind its schedule departs by 8% and more. 0 judges by the p-value alone.
    #[arg(long, default_value_t = iolab::lab::sweep::DEFAULT_MAX_KS_D, value_parser = unit_fraction)]
    pub(super) max_ks_d: f64,
    #[command(flatten)]
    pub(super) arrivals_check: ArrivalsCheckArgs,
    /// A point where the generator was busy (not waiting for its next send) for more than
    /// this fraction of the run is invalid: its core, not the server, was the limit.
    #[arg(long, default_value_t = 0.9)]
    pub(super) max_generator_busy: f64,
    /// Measure every rung. By default a rung is not measured when the generator, judged by
    /// how busy it was one rung below (the median over every engine it reaches the same way:
    /// kernel TCP, shared memory or the user-space stack), would be busier there than
    /// --generator-reach: it would be at its limit, and its luck would decide the point. The
    /// knee below such a rung is a lower bound that says so.
    #[arg(long)]
    pub(super) measure_beyond_reach: bool,
    /// The busy share past which a rung is beyond the generator's reach: the median busy
    /// share one rung below, scaled to the rung's rate (as rate^0.75: the generator's cost per
    /// request falls as the rate rises), must stay at or under it. Past about 70% the
    /// generator's own send lag decides the tail more often than not (on the development VM,
    /// its send-lag p99 broke 200 µs in 61% of such points).
    #[arg(long, default_value_t = iolab::lab::sweep::DEFAULT_GENERATOR_REACH, value_parser = unit_fraction)]
    pub(super) generator_reach: f64,
    /// Valid repeats of every point: each engine and rate is measured until K valid
    /// measurements agree (or a majority of K says the engine is over the SLO there), in
    /// rounds that interleave the engines, so a burst of machine noise falls on several of them
    /// once each instead of on one. Figures are medians over the repeats, with their spread.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub(super) repeat: u32,
    /// Most measurements of one point, repeats and re-measurements of invalid ones together
    /// (default: twice --repeat). An invalid point is measured again in a later round.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=999))]
    pub(super) max_tries: Option<u32>,
    /// A point over the SLO during which the machine stalled (canary threads at real-time
    /// priority, one per CPU, saw stalls beyond half the SLO each) for more than this
    /// fraction of its measured time is invalid and measured again: near the knee a stall's
    /// backlog drains ten times slower than it built, so 0.1% of the window stalled can reach
    /// the 1% tail. A point within the SLO counts whatever its stalls (a stall only delays).
    #[arg(long, default_value_t = iolab::lab::sweep::DEFAULT_MAX_STALL)]
    pub(super) max_stall: f64,
    /// Before each point, wait until the machine is quiet (no stall, every CPU idle),
    /// looking in 100 ms windows, at most this long.
    #[arg(long, default_value = "2s")]
    pub(super) quiet_timeout: Dur,
    /// Start no new point after this much time; cells still unsettled then are reported as
    /// such.
    #[arg(long)]
    pub(super) budget: Option<Dur>,
    #[command(flatten)]
    pub(super) idle: CpuIdleArgs,
    /// CPUs for the server (default: 0).
    #[arg(long, value_parser = cpus)]
    pub(super) server_cpus: Option<CpuList>,
    /// CPUs for the load generator, one driver thread each (default: 1).
    #[arg(long, value_parser = cpus)]
    pub(super) load_cpus: Option<CpuList>,
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// After the sweep, the coordinated-omission lesson: load this engine (a spec as in
    /// --engines) at the first rate, once open loop and once closed loop (one request per
    /// connection, as wrk), while the server is stopped for 100 ms every second; the report
    /// sets the two tails side by side.
    #[arg(long)]
    pub(super) compare_loops: Option<String>,
    /// After the sweep, where the time goes: profile every engine at every rate, each on a
    /// fresh server in runs of its own (never during a measured point): CPU per request,
    /// user and kernel, from /proc; system calls by name and context switches from perf
    /// stat; a flamegraph from perf record. Writes profile/ and the cost columns of
    /// points.csv; the report gets "Where the time goes". Needs perf (linux-perf) and root
    /// or kernel.perf_event_paranoid ≤ 1; without them the sweep goes on and says why.
    #[arg(long)]
    pub(super) profile: bool,
    /// Profile at these rates only (a list as --rates takes: 20000 or 10000,40000); implies
    /// --profile.
    #[arg(long)]
    pub(super) profile_at: Option<String>,
    /// Length of each of a profile's two loads (one for CPU, one under perf).
    #[arg(long, default_value = "1s")]
    pub(super) profile_duration: Dur,
    /// Run every point's load on these machines instead of here: a file of one
    /// `[user@]host[:cpus]` per line (cpus: the agent's driver threads, pinned). Each point's
    /// rate and connections are split between them, all start at one instant, and their
    /// histograms are merged exactly (`iolab merge`). Reached with `ssh -o BatchMode=yes`:
    /// your own keys, agent and ~/.ssh/config, never a password prompt. Each needs iolab
    /// (--agent-iolab) and tar. Give --server-addr an address the agents can reach.
    /// --load-cpus is then unused; --compare-loops and --profile still load from here.
    #[arg(long)]
    pub(super) agents: Option<PathBuf>,
    /// With --agents: the iolab the agents run (a name on their PATH, or a path there).
    #[arg(long, default_value = "iolab", requires = "agents")]
    pub(super) agent_iolab: String,
    /// With --agents: an ssh configuration file to use instead of ~/.ssh/config (ssh -F).
    #[arg(long, requires = "agents")]
    pub(super) ssh_config: Option<PathBuf>,
    /// Where each engine's server listens (port 0: a free one). With --agents, an address
    /// of this machine (or of the engine's --netns) that the agents reach.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(super) server_addr: SocketAddr,
    /// Results folder (default: results/sweep-<unix time>).
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
}

/// What idle CPUs do while a measurement runs (shared by load, sweep and demo).
#[derive(Args, Debug, Clone, Copy)]
pub(super) struct CpuIdleArgs {
    /// What idle CPUs do while this runs. `awake`: they poll instead of halting (the kernel's
    /// CPU-latency QoS, /dev/cpu_dma_latency, held at 0 as tuned's latency-performance
    /// profile does; needs root, and says so where refused). On a VM a halted vCPU waits for
    /// the host to run it again: 110-200 us per wake-up on average and milliseconds at the
    /// tail on the development VM, against 30-45 us held awake, and every request to a
    /// sleeping server pays a wake-up. `os`: leave it to the kernel.
    #[arg(long, value_enum, default_value_t = iolab::os::cpu::CpuIdle::Awake)]
    pub(super) cpu_idle: iolab::os::cpu::CpuIdle,
}

/// How the generator judges whether its own arrivals were Poisson (shared by load and sweep).
#[derive(Args, Debug, Clone, Copy)]
pub(super) struct ArrivalsCheckArgs {
    /// The arrivals check (Kolmogorov-Smirnov) judges the process at this timescale: it sums
    /// rate x timescale consecutive gaps and compares the sums with the Erlang distribution a
    /// Poisson process gives them. One sender cannot place single sends finer than its own
    /// cost and jitter (a few microseconds); at this scale a wrong rate, too-regular or
    /// too-bursty sending and stalls still show. The strict gap-by-gap test is reported too.
    #[arg(long, default_value = "200us")]
    pub(super) ks_timescale: Dur,
    /// The check compares the distributions only from this length up.
    #[arg(long, default_value = "20us")]
    pub(super) ks_resolution: Dur,
}

impl ArrivalsCheckArgs {
    pub(super) fn apply(self, cfg: &mut iolab::loadgen::LoadConfig) {
        cfg.ks_timescale = self.ks_timescale.0;
        cfg.ks_resolution = self.ks_resolution.0;
    }
}

#[derive(Args, Debug)]
pub(super) struct MergeArgs {
    /// The agents' JSON summaries; each names its HdrHistogram log and sends file, looked for
    /// beside it first.
    #[arg(required = true)]
    pub(super) inputs: Vec<PathBuf>,
    /// Write the merged summary here, with the same keys as `load --json` (plus `agents`, each
    /// agent's own figures, and `merge_warnings`).
    #[arg(long)]
    pub(super) json: Option<PathBuf>,
    /// Write the merged per-interval and whole-window histograms as an HdrHistogram log.
    #[arg(long)]
    pub(super) hdr_log: Option<PathBuf>,
    /// Write the merged interarrival times, in microseconds, one per line.
    #[arg(long)]
    pub(super) interarrivals: Option<PathBuf>,
    /// Warn when agents' window starts or measured durations differ by more than this.
    #[arg(long, default_value = "10ms")]
    pub(super) max_skew: Dur,
}

#[derive(Args, Debug)]
pub(super) struct KneeArgs {
    /// A results folder written by `iolab sweep`.
    pub(super) dir: PathBuf,
    /// The p99 bound.
    #[arg(long, default_value = "1ms")]
    pub(super) slo: Dur,
    /// Print the table as JSON: per engine the knee in rps (null if none), whether it is a
    /// lower bound or uncertain, the p99 there with its spread, and which engines it cannot
    /// be told apart from.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub(super) struct ServeArgs {
    /// The I/O engine.
    #[arg(long, short)]
    pub(super) engine: EngineKind,
    /// Address to listen on; port 0 picks a free port (printed on the first line).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(super) addr: SocketAddr,
    /// Wire protocol: `frame` (the lab's binary frames) or `http` (HTTP/1.1 GET and HEAD of
    /// the files under --root, read into memory at start).
    #[arg(long, value_enum, default_value_t = Protocol::Frame)]
    pub(super) protocol: Protocol,
    /// With --protocol http: the directory served. Nothing outside it is ever sent; symbolic
    /// links are followed only to targets inside it.
    #[arg(long, required_if_eq("protocol", "http"))]
    pub(super) root: Option<PathBuf>,
    /// With --protocol http: the most the files under --root may hold in all.
    #[arg(long, default_value = "1GiB")]
    pub(super) cache_limit: Size,
    /// Share-nothing event loops (select, poll, epoll, uring, tokio, monoio): each has its own SO_REUSEPORT
    /// listener and CPU, and a connection stays on the loop that accepted it.
    #[arg(long, default_value_t = 1)]
    pub(super) threads: usize,
    /// Pin to these CPUs (taskset syntax: 0, 0,2, 0-3). Event loop i runs on the i-th;
    /// thread-per-connection engines run all their threads on the set.
    /// Default: none, or 0..N-1 with --threads N > 1.
    #[arg(long, value_parser = cpus)]
    pub(super) pin: Option<CpuList>,
    #[command(flatten)]
    pub(super) frame: FrameArgs,
    /// Longest spin a request may ask for; a peer asking more is disconnected.
    #[arg(long, default_value = "1s")]
    pub(super) max_spin: Dur,
    /// On shutdown, how long connections get to flush their replies before being cut off.
    #[arg(long, default_value = "5s")]
    pub(super) drain_timeout: Dur,
    /// The most that all connections together may hold for unfinished requests and unsent
    /// replies, beyond 64 KiB each. A frame that would take its connection past that reserves
    /// its whole payload before any of it is read; when the budget is full such frames wait,
    /// unread (TCP flow control holds their clients back), until replies give memory back.
    /// Nothing is closed, no reply lost. Default: a quarter of this machine's memory, at most
    /// 1 GiB (printed at start).
    #[arg(long)]
    pub(super) memory_budget: Option<Size>,
    /// Longest a request may take to arrive once its first byte has (a frame, or an HTTP
    /// head): a client that trickles or stalls half-way is closed, and counted
    /// (request_timeouts in the summary). Idle connections between requests are not touched.
    /// Not applied to shm (its clients are local processes, watched for liveness).
    #[arg(long, default_value = "30s")]
    pub(super) request_timeout: Dur,
    /// Do not log one line per connection closed for a protocol error (still counted).
    #[arg(long)]
    pub(super) quiet: bool,
    // Each engine's own options, under a heading of their own (and refused for the others).
    /// `edge` registers interest once and reads until EAGAIN; `level` keeps interest exact
    /// with epoll_ctl and may read less per wake-up.
    #[arg(long, value_enum, default_value_t = EpollMode::Edge, help_heading = "epoll (--engine epoll)")]
    pub(super) epoll_mode: EpollMode,
    /// Worker threads that run the requests (the loop thread only does I/O).
    #[arg(long, default_value_t = 4, help_heading = "Thread pool (--engine pool)")]
    pub(super) workers: usize,
    #[command(flatten)]
    pub(super) uring: UringArgs,
    #[command(flatten)]
    pub(super) shm: ShmArgs,
    #[command(flatten)]
    pub(super) userspace: UserspaceArgs,
}

/// Options of the `shm` engine.
#[derive(Args, Debug)]
#[command(next_help_heading = "Shared memory (--engine shm)")]
pub(super) struct ShmArgs {
    /// The segment clients attach to: /dev/shm/iolab-NAME. A segment left by a server that
    /// died is replaced; one a running server owns is refused.
    #[arg(long)]
    pub(super) shm: Option<String>,
    /// Connections the segment holds at once.
    #[arg(long, default_value_t = 64)]
    pub(super) shm_slots: u32,
    /// Bytes of each ring (one per direction per connection; a power of two, at least 4 KiB).
    #[arg(long, default_value = "256KiB")]
    pub(super) shm_ring: Size,
    /// How long the polling thread keeps spinning after its last work before it naps 50 us
    /// between polls. `auto`: four times the recent mean gap between requests, at least 1 ms
    /// (and just 1 ms once that exceeds 20 ms: requests that far apart are not near), so a
    /// steady load finds it awake and a quiet one lets the core rest.
    /// A duration fixes it (0: nap at once; a large value: always spin, the lowest latency).
    #[arg(long, default_value = "auto")]
    pub(super) shm_spin: engine::ShmSpin,
}

/// Options of the `userspace` engine.
#[derive(Args, Debug)]
#[command(next_help_heading = "User-space TCP/IP (--engine userspace)")]
pub(super) struct UserspaceArgs {
    /// The TAP device the server creates (one queue per --threads), and removes on exit. A
    /// name already in use in the namespace is refused.
    #[arg(long, default_value = "iolab0")]
    pub(super) tap: String,
    /// The stack's address and the link's prefix; clients connect to this address (and the
    /// --addr port, 7000 if 0). The kernel's end of the link takes the subnet's first other
    /// host (10.77.0.2 for the default).
    #[arg(long, default_value = "10.77.0.1/24")]
    pub(super) tap_ip: String,
    /// The link's IP MTU (1500: an Ethernet NIC's; up to 65000).
    #[arg(long, default_value_t = 1500)]
    pub(super) tap_mtu: usize,
    /// Receive and send buffer of each connection, each (64 KiB: a full window unscaled).
    #[arg(long, default_value = "64KiB")]
    pub(super) tap_buffer: Size,
    /// Listening sockets each queue keeps ready: a smoltcp listener takes one connection,
    /// so this bounds the connections a queue can take in one burst.
    #[arg(long, default_value_t = 64)]
    pub(super) tap_backlog: usize,
    /// Run in this network namespace: joined if it exists, else created for the run and
    /// deleted on exit. Without it the server must already run inside one (ip netns exec):
    /// the TAP device never goes in the host's namespace.
    #[arg(long)]
    pub(super) netns: Option<String>,
}

/// Options of the `uring` engine.
#[derive(Args, Debug)]
#[command(next_help_heading = "io_uring (--engine uring; --ring-entries also monoio)")]
pub(super) struct UringArgs {
    /// Submission queue entries per ring (a power of two). More lets one submit carry more
    /// operations: raise it when thousands of connections are busy at once.
    #[arg(long, default_value_t = 256)]
    pub(super) ring_entries: u32,
    /// A kernel thread polls the submission queue, so submitting costs no syscall. Helps when
    /// the loop submits constantly and a spare core can run that thread; on a busy or
    /// single-core machine it competes with the loop instead.
    #[arg(long)]
    pub(super) sqpoll: bool,
    /// How long the --sqpoll thread keeps polling an idle ring before it sleeps, in ms.
    #[arg(long, default_value_t = 1000, requires = "sqpoll")]
    pub(super) sqpoll_idle: u32,
    /// Send replies of at least this many bytes with SEND_ZC: the kernel reads the pages in
    /// place instead of copying them, and they stay held until it says it is done. Pays off
    /// for large replies (tens of KiB and up); below that the notification costs more than
    /// the copy it saves.
    #[arg(long)]
    pub(super) zero_copy_threshold: Option<Size>,
    /// Register each connection in the ring's fixed file table, so operations skip the
    /// per-call file lookup and reference count. Helps at high operation rates.
    #[arg(long)]
    pub(super) register_files: bool,
    /// How the loop receives: multishot recv into a provided-buffer ring shared by all its
    /// connections (kernel ≥ 6.0), or one recv at a time into a buffer per connection.
    #[arg(long, value_enum, default_value_t = RecvMode::Auto)]
    pub(super) recv: RecvMode,
    /// Buffers in the provided-buffer ring (a power of two). Raise it if the server reports
    /// that the ring ran empty.
    #[arg(long, default_value_t = 1024)]
    pub(super) recv_buffers: u16,
    /// Size of each receive buffer.
    #[arg(long, default_value_t = Size(16 * 1024))]
    pub(super) recv_buffer_size: Size,
}

impl UringArgs {
    pub(super) fn options(&self) -> anyhow::Result<UringOptions> {
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
pub(super) struct FrameArgs {
    /// Largest slice handed to one write (and the read buffer of the `threads` engine).
    #[arg(long, default_value_t = Size(DEFAULT_CHUNK_SIZE as u64))]
    pub(super) chunk_size: Size,
    /// Largest legal frame payload; a peer announcing more is disconnected.
    #[arg(long, default_value_t = Size(DEFAULT_MAX_FRAME as u64))]
    pub(super) max_frame: Size,
}

impl FrameArgs {
    pub(super) fn sizes(&self) -> anyhow::Result<(usize, usize)> {
        let to_usize =
            |s: Size, what: &str| usize::try_from(s.0).map_err(|_| anyhow::anyhow!("{what} is too large"));
        Ok((
            to_usize(self.chunk_size, "--chunk-size")?,
            to_usize(self.max_frame, "--max-frame")?,
        ))
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Transport {
    /// Kernel TCP sockets.
    Tcp,
    /// Shared-memory rings (serve --engine shm).
    Shm,
    /// A user-space TCP/IP stack (smoltcp) on a TAP device of the load's own, in --netns.
    Userspace,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Protocol {
    /// Length-prefixed binary frames (see the design document).
    Frame,
    /// HTTP/1.1: GET (and, serving, HEAD) of static files, keep-alive and pipelining.
    Http,
}

#[derive(Args, Debug)]
pub(super) struct LoadArgs {
    /// The server to load (TCP).
    #[arg(long, required_unless_present = "shm")]
    pub(super) addr: Option<SocketAddr>,
    /// How requests reach the server: `tcp` (kernel sockets, to --addr), `shm` (through the
    /// shared-memory segment --shm of `iolab serve --engine shm`: no sockets, the driver
    /// polls the rings) or `userspace` (a smoltcp stack on a TAP device the load creates in
    /// --netns, to --addr: a kernel-socket server reached at the TAP's kernel side). shm and
    /// userspace always use the queue-API driver.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub(super) transport: Transport,
    /// With --transport shm: the segment's name.
    #[arg(long, required_if_eq("transport", "shm"))]
    pub(super) shm: Option<String>,
    /// Run the load in this network namespace (it must exist: `ip netns add`, or a server's
    /// --netns). Needed to reach `serve --engine userspace`, and for --transport userspace.
    #[arg(long)]
    pub(super) netns: Option<String>,
    /// With --transport userspace: the load's TAP device (removed when the load ends).
    #[arg(long, default_value = "iolabc0")]
    pub(super) tap: String,
    /// With --transport userspace: the load stack's address and prefix. The kernel's end
    /// takes the subnet's first other host: point --addr at it.
    #[arg(long, default_value = "10.78.0.1/24")]
    pub(super) tap_ip: String,
    /// With --transport userspace: the link's IP MTU.
    #[arg(long, default_value_t = 1500)]
    pub(super) tap_mtu: usize,
    /// With --transport userspace: receive and send buffer of each connection, each.
    #[arg(long, default_value = "64KiB")]
    pub(super) tap_buffer: Size,
    /// Wire protocol. With `http`, each request is a GET of a page drawn at random from
    /// --paths (or --path), checked for status 200 and its body length; non-200 statuses are
    /// counted by status. The workload flags (--request-size, --reply, --work) are frame-only.
    #[arg(long, value_enum, default_value_t = Protocol::Frame)]
    pub(super) protocol: Protocol,
    /// With --protocol http: the one page to ask for.
    #[arg(long, default_value = "/", conflicts_with = "paths")]
    pub(super) path: String,
    /// With --protocol http: a file of pages, one per line, `PATH [BYTES]`; with BYTES, each
    /// response's length is checked against it (`iolab corpus` writes such a file).
    #[arg(long)]
    pub(super) paths: Option<PathBuf>,
    /// With --protocol http: the Host field (default: --addr).
    #[arg(long)]
    pub(super) host: Option<String>,
    /// Total offered load in requests per second, over all connections and threads
    /// (fractions are fine: 0.5 is one request every two seconds). Not with --closed-loop.
    #[arg(long, required_unless_present = "closed_loop", conflicts_with = "closed_loop")]
    pub(super) rate: Option<f64>,
    /// How long to measure (after the warm-up), e.g. 10s. Optional with --requests.
    #[arg(long, required_unless_present = "requests")]
    pub(super) duration: Option<Dur>,
    /// Stop after this many measured requests have been sent and answered (either loop), as
    /// the echo clients' --nrequests does; with --duration too, whichever comes first.
    #[arg(long)]
    pub(super) requests: Option<u64>,
    /// Closed loop, as wrk and the echo clients of kernel-bypass stacks run: each connection
    /// keeps --depth requests outstanding and sends the next the moment a reply arrives. No
    /// schedule, so a server that stalls is simply sent less, and its stall barely shows in
    /// the latency (coordinated omission). The summary's "mode" says "closed".
    #[arg(long)]
    pub(super) closed_loop: bool,
    /// With --closed-loop: requests each connection keeps outstanding [default: 1].
    #[arg(long, requires = "closed_loop")]
    pub(super) depth: Option<usize>,
    /// No start line and no live progress line (they are shown only when stdout is a
    /// terminal anyway).
    #[arg(long, short)]
    pub(super) quiet: bool,
    /// Load sent before measuring starts; its requests are not counted.
    #[arg(long, default_value = "0s")]
    pub(super) warmup: Dur,
    /// Connections; each is an independent arrival process at rate/connections.
    #[arg(long, short, default_value_t = 16)]
    pub(super) connections: usize,
    /// Driver threads; connections and rate are split over them.
    #[arg(long, short, default_value_t = 1)]
    pub(super) threads: usize,
    /// Interarrival distribution.
    #[arg(long, value_enum, default_value_t = ArrivalKind::Poisson)]
    pub(super) arrival: ArrivalKind,
    #[command(flatten)]
    pub(super) workload: WorkloadArgs,
    /// Seed for arrivals and request mix: the same seed gives the same schedule.
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// Requests in flight per connection; a send beyond it is skipped and counted as overflow.
    #[arg(long, default_value_t = 1024)]
    pub(super) max_in_flight: usize,
    /// Extra connections opened before the run and held silent until its end (the cost of
    /// idle connections to the server's I/O model).
    #[arg(long, default_value_t = 0)]
    pub(super) idle_connections: usize,
    /// Open connections one by one before starting, or all at once as the load starts.
    #[arg(long, value_enum, default_value_t = ConnectMode::Sequential)]
    pub(super) connect: ConnectMode,
    /// How the driver threads move bytes: `epoll` (a wait and two reads per reply) or
    /// `uring` (multishot receives, no syscall per reply). `auto` takes uring for messages of
    /// 4 KiB or less on average where the kernel allows it, epoll otherwise: with 64 B echo at
    /// 150k rps uring kept the generator's send-lag p99 at 92 us where epoll's reached 330 us;
    /// with 16 KiB messages epoll was the steadier (docs/measurements.md).
    #[arg(long, value_enum, default_value_t = DriverKind::Auto)]
    pub(super) driver: DriverKind,
    /// Print throughput, p50 and p99 every this many seconds.
    #[arg(long)]
    pub(super) log_interval: Option<Dur>,
    /// After the last send, how long to wait for outstanding replies (then they count as lost).
    #[arg(long, default_value = "5s")]
    pub(super) drain_timeout: Dur,
    /// Pin the driver threads to these CPUs (thread i on the i-th, round robin).
    #[arg(long, value_parser = cpus)]
    pub(super) pin: Option<CpuList>,
    /// CPUs whose stalls a real-time canary thread each watches (every 1 ms; the summary's
    /// machine_stalls), or `none`. Default: every online CPU.
    #[arg(long, value_parser = watched_cpus)]
    pub(super) watch_cpus: Option<CpuList>,
    #[command(flatten)]
    pub(super) idle: CpuIdleArgs,
    #[command(flatten)]
    pub(super) frame: FrameArgs,
    #[command(flatten)]
    pub(super) arrivals_check: ArrivalsCheckArgs,
    /// Write the summary as JSON (keys are stable).
    #[arg(long)]
    pub(super) json: Option<PathBuf>,
    /// Write the actual interarrival times, in microseconds, one per line.
    #[arg(long)]
    pub(super) interarrivals: Option<PathBuf>,
    /// Write per-interval latency histograms as an HdrHistogram interval log (untagged),
    /// then the whole measured window's latency, uncorrected latency and send lag, tagged
    /// `latency`, `uncorrected` and `send_lag` (what `iolab merge` adds up).
    #[arg(long)]
    pub(super) hdr_log: Option<PathBuf>,
    /// Write one CSV row per request: id, scheduled, sent, done (ns), sizes, ok.
    #[arg(long)]
    pub(super) requests_log: Option<PathBuf>,
    /// Start the measured window at this wall-clock instant, the warm-up before it: Unix
    /// seconds (1767225600.5), RFC 3339 (2026-12-01T22:00:00Z) or +DURATION from now (+5s).
    /// Agents on several machines given the same instant measure the same window; their
    /// clocks must agree (NTP, PTP) to well under the window's length.
    #[arg(long, value_parser = start_at)]
    pub(super) start_at: Option<std::time::SystemTime>,
    /// Run as one agent of several, labelled NAME: the seed is mixed with the name (agents
    /// given one --seed draw independent arrivals), and with --json the HdrHistogram log
    /// (--hdr-log, default: the JSON's name with .hlog) and the send times (.sends) are
    /// written beside it for `iolab merge`.
    #[arg(long, value_name = "NAME")]
    pub(super) agent: Option<String>,
    /// This host's clock minus the reference clock, in seconds, if measured: recorded in the
    /// JSON and used by `iolab merge` to line up the agents' sends.
    #[arg(long, requires = "agent", allow_negative_numbers = true)]
    pub(super) clock_offset: Option<f64>,
}

fn start_at(s: &str) -> Result<std::time::SystemTime, String> {
    iolab::loadgen::merge::parse_start_at(s)
}

#[derive(Args, Debug)]
pub(super) struct DemoArgs {
    /// Offered rates, each engine walking up them until it saturates (a list, or a ladder as
    /// in `sweep --rates`).
    #[arg(long, value_parser = rates, default_value = "10000,40000,80000,150000")]
    pub(super) rates: Rates,
    /// Measured time per point.
    #[arg(long, default_value = "800ms")]
    pub(super) duration: Dur,
    /// Load before each point's measurement starts.
    #[arg(long, default_value = "300ms")]
    pub(super) warmup: Dur,
    /// Connections.
    #[arg(long, default_value_t = 64)]
    pub(super) connections: usize,
    /// Most valid repeats of a point. A point is settled once one verdict (within the SLO, or
    /// over it) leads the other by two: two agreeing repeats settle a clear point, and a split
    /// one is measured again, up to this many, instead of being decided by one toss.
    #[arg(long, default_value_t = iolab::lab::demo::REPEAT, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub(super) repeat: u32,
    /// Start no new point after this long (the closed-loop lesson, the profiles and the
    /// report follow).
    #[arg(long, default_value = "125s")]
    pub(super) budget: Dur,
    /// Only these engines (default: all).
    #[arg(long, value_delimiter = ',')]
    pub(super) engines: Vec<EngineKind>,
    #[command(flatten)]
    pub(super) idle: CpuIdleArgs,
    /// Results folder (default: results/demo-<unix time>).
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
}
