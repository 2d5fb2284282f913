//! Helpers the socket-level test suites share: building request frames, reading and checking
//! replies with a bound on every wait, and running the real `iolab serve` binary.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use iolab::sansio::frame::{
    pattern_matches, Body, Frame, FrameDecoder, OutFrame, OutQueue, ReplyHeader, ReplySize, RequestHeader,
};

/// The longest any single wait may take: a bound on a broken engine, never a way to wait.
pub const BOUND: Duration = Duration::from_secs(20);

/// Sweep validity checks no machine noise can fail, for tests that check a results folder, a
/// schedule or a merge rather than the machine's speed or mood. Only a stall over most of a
/// point still makes it invalid.
pub const CHECKS_NOISE_CANNOT_FAIL: [&str; 8] = [
    "--max-stall",
    "0.9",
    "--max-send-lag",
    "10s",
    "--min-ks-p",
    "0",
    "--max-generator-busy",
    "1",
];

/// A fresh, empty folder under the temporary directory, named for the test and this process.
pub fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("iolab-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("make a scratch folder");
    dir
}

pub fn request(id: u64, len: usize, reply: ReplySize) -> Vec<u8> {
    request_with_spin(id, len, reply, 0)
}

pub fn request_with_spin(id: u64, len: usize, reply: ReplySize, spin_ns: u64) -> Vec<u8> {
    let mut q = OutQueue::new(1 << 20);
    q.push(OutFrame::new(
        RequestHeader {
            payload_len: 0,
            id,
            send_ns: id * 10,
            spin_ns,
            reply,
        },
        Body::Pattern { seed: id, len },
    ));
    let mut bytes = Vec::with_capacity(q.queued_bytes());
    while let Some(s) = q.front() {
        bytes.extend_from_slice(s);
        let n = s.len();
        q.advance(n);
    }
    bytes
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.set_write_timeout(Some(BOUND)).unwrap();
    s
}

/// Reads replies until `count` have arrived (or the bound expires, which fails the test).
pub fn read_replies(s: &mut impl Read, count: usize) -> Vec<Frame<ReplyHeader>> {
    let mut dec = FrameDecoder::<ReplyHeader>::new(64 << 20);
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while frames.len() < count {
        let n = s.read(&mut buf).expect("reply within the bound");
        assert!(n > 0, "server closed after {} of {count} replies", frames.len());
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let (used, f) = dec.decode(rest).expect("valid reply stream");
            rest = &rest[used..];
            frames.extend(f);
        }
    }
    frames
}

pub fn check_echo(f: &Frame<ReplyHeader>, id: u64, len: usize) {
    assert_eq!(f.header.id, id);
    assert_eq!(f.header.send_ns, id * 10, "send time echoed");
    assert_eq!(f.payload.len(), len, "reply {id} length");
    assert!(pattern_matches(id, 0, &f.payload), "reply {id} content");
}

/// The peer closed (or reset) the connection, within the bound.
pub fn assert_closed_by_server(s: &mut impl Read) {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the server to close the connection, got {e}"),
        }
    }
}

/// A client connection over either transport: TCP to `HOST:PORT`, or a shared-memory slot of
/// `shm:NAME`. Reads and writes are bounded by [`BOUND`] on both.
pub enum Client {
    Tcp(TcpStream),
    Shm(Box<iolab::shm::Connection>),
}

pub fn connect_to(endpoint: &str) -> Client {
    match endpoint.strip_prefix("shm:") {
        Some(name) => Client::Shm(Box::new(iolab::shm::Connection::connect(name).expect("attach"))),
        None => Client::Tcp(connect(endpoint.parse().expect("an address"))),
    }
}

impl Client {
    pub fn set_nodelay(&self) {
        if let Client::Tcp(s) = self {
            s.set_nodelay(true).unwrap();
        }
    }
}

impl Read for Client {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Client::Tcp(s) => s.read(buf),
            Client::Shm(c) => {
                let deadline = std::time::Instant::now() + BOUND;
                loop {
                    let n = c.down.pop(buf).map_err(std::io::Error::other)?;
                    // A server that ended the connection leaves what it sent readable first.
                    if n > 0 || buf.is_empty() || c.server_gone() {
                        return Ok(n);
                    }
                    if std::time::Instant::now() > deadline {
                        return Err(std::io::ErrorKind::TimedOut.into());
                    }
                    std::thread::yield_now();
                }
            }
        }
    }
}

impl std::io::Write for Client {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Client::Tcp(s) => s.write(buf),
            Client::Shm(c) => {
                let deadline = std::time::Instant::now() + BOUND;
                loop {
                    let n = c.up.push(buf).map_err(std::io::Error::other)?;
                    if n > 0 || buf.is_empty() {
                        return Ok(n);
                    }
                    if c.server_gone() {
                        return Err(std::io::ErrorKind::BrokenPipe.into());
                    }
                    if std::time::Instant::now() > deadline {
                        return Err(std::io::ErrorKind::TimedOut.into());
                    }
                    std::thread::yield_now();
                }
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn read_line(r: &mut impl Read) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 200 {
        if r.read(&mut b).unwrap() == 0 || b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// `iolab serve ARGS --addr 127.0.0.1:0` as a child process, once it is listening.
/// `BIN serve --engine ENGINE` on a free loopback port, stdout and stderr piped: for tests
/// that shape the child (limits, filters) before spawning it themselves.
pub fn serve_command(bin: &std::path::Path, engine: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--engine", engine, "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

pub fn spawn_server(args: &[String]) -> (Child, SocketAddr, ChildStdout) {
    spawn(args, Stdio::null())
}

/// As [`spawn_server`], keeping the server's stderr for [`terminate_with_stderr`].
pub fn spawn_server_with_stderr(args: &[String]) -> (Child, SocketAddr, ChildStdout) {
    spawn(args, Stdio::piped())
}

fn spawn(args: &[String], stderr: Stdio) -> (Child, SocketAddr, ChildStdout) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iolab"))
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn iolab serve");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let first = read_line(&mut stdout);
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line was {first:?}"))
        .parse()
        .expect("an address");
    (child, addr, stdout)
}

/// Sends SIGTERM and returns the exit status and the rest of stdout (the summary line).
pub fn terminate(mut child: Child, mut stdout: ChildStdout) -> (std::process::ExitStatus, String) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("read stdout");
    (child.wait().expect("wait for the server"), rest)
}

/// As [`terminate`], and the server's stderr too (spawned with [`spawn_server_with_stderr`]).
pub fn terminate_with_stderr(
    mut child: Child,
    stdout: ChildStdout,
) -> (std::process::ExitStatus, String, String) {
    let mut stderr = child.stderr.take().expect("spawned with a piped stderr");
    let (status, rest) = terminate(child, stdout);
    let mut err = String::new();
    stderr.read_to_string(&mut err).expect("read stderr");
    (status, rest, err)
}

/// As [`terminate_with_stderr`], but the server must be gone within `bound`: one that is
/// not is killed and the test fails (a drain that never ends would otherwise hang the suite).
pub fn terminate_within(
    mut child: Child,
    mut stdout: ChildStdout,
    bound: Duration,
) -> (std::process::ExitStatus, String, String) {
    let mut stderr = child.stderr.take().expect("spawned with a piped stderr");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        rest
    });
    let err = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let deadline = std::time::Instant::now() + bound;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the server") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server was still running {bound:?} after SIGTERM; stderr: {}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5)); // polling an exit, bounded above
    };
    (
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// CPU time (user + system, in clock ticks) of each event-loop thread of the server process
/// `pid`: the threads named `ENGINE-loop-I` (as the kernel keeps them, cut to 15 bytes).
/// Which loop served a connection shows nowhere else, and CPU time needs no clock in the
/// test: a loop that served no requests has spun for none.
pub fn loop_cpu_ticks(pid: u32, engine: &str) -> Vec<u64> {
    let name = format!("{engine}-loop-");
    let prefix = &name[..name.len().min(15)];
    let mut ticks = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's threads") {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is the 3rd, utime the 14th, stime the 15th.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        ticks.push(fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap());
    }
    ticks
}

/// Each loop's share of the loops' CPU time is at least `floor`, and the loops spent at least
/// `min_total` ticks between them.
pub fn assert_every_loop_worked(ticks: &[u64], loops: usize, min_total: u64, floor: f64, what: &str) {
    assert_eq!(ticks.len(), loops, "{what}: loop threads {ticks:?}");
    let total: u64 = ticks.iter().sum();
    assert!(
        total >= min_total,
        "{what}: the loops ran {total} ticks: {ticks:?}"
    );
    for &t in ticks {
        assert!(
            t as f64 >= floor * total as f64,
            "{what}: a loop served almost nothing: {ticks:?} ticks"
        );
    }
}

/// Why this machine cannot give a test a network namespace with a TAP device, if it cannot.
pub fn netns_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` command (iproute2)".into());
    }
    None
}

/// Whether this run is CI's, where nothing may be skipped (`.ci/run` exports CI=true and
/// installs every outside tool the tests use).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips the calling test because this machine lacks `why`; under CI=true that is a
/// failure. Outside CI it says so on the terminal (past the harness's capture, so a passing
/// run shows it too) with a count of the skips so far in this `cargo test`, which the test
/// binaries share through a file named after cargo's process.
pub fn skip(why: &str) {
    use std::io::Write as _;
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    assert!(!in_ci(), "CI=true, so {test} must run, but: {why}");
    // SAFETY: getppid has no preconditions.
    let cargo = unsafe { libc::getppid() };
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("skipped-{cargo}.txt"));
    let line = format!("{test}: {why}\n");
    let count = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .and_then(|()| std::fs::read_to_string(&log))
        .map_or(1, |all| all.lines().count());
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: {why} [{count} skipped so far in this cargo test, listed in {}; \
         CI=true turns skips into failures]",
        log.display()
    );
}

/// Whether namespace tests can run here; if not, says why and skips ([`skip`]).
pub fn netns_available_or_skip() -> bool {
    let Some(why) = netns_unavailable() else {
        return true;
    };
    skip(&format!("no network namespaces here: {why}"));
    false
}

/// Whether `tool` runs here; if not, skips ([`skip`]).
pub fn tool_or_skip(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        skip(&format!("{tool} is not installed (.ci/run installs it)"));
    }
    found
}

/// Runs `f` on a thread inside a network namespace made for it (and deleted after), so the
/// TAP devices and every connection `f` makes stay off the host's network. Where namespaces
/// cannot be made the test is skipped ([`netns_available_or_skip`]).
pub fn in_private_netns<R: Send>(tag: &str, f: impl FnOnce() -> R + Send) -> Option<R> {
    in_named_netns(tag, |_| f())
}

/// As [`in_private_netns`], handing `f` the namespace's name (for child processes that join
/// it by name, as `iolab load --netns NAME` does).
pub fn in_named_netns<R: Send>(tag: &str, f: impl FnOnce(&str) -> R + Send) -> Option<R> {
    if !netns_available_or_skip() {
        return None;
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("iolab-t{}-{tag}-{n}", std::process::id());
    std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            let ns = iolab::os::netns::Netns::create_or_join(&name).expect("create a network namespace");
            ns.enter().expect("enter it");
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&name)));
            drop(ns); // deleted even when the case failed
            result
        });
        match run.join().expect("the namespace thread") {
            Ok(r) => Some(r),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Says an outside tool is missing (a skip, or a failure under CI).
pub fn missing_tool(what: &str) {
    skip(&format!("{what} is not installed (.ci/run installs it)"));
}

/// Runs `cmd` with a deadline: success, stdout and stderr, or None if it could not start.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Option<(bool, String, String)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().ok()?;
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err_reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Some((
        status.success(),
        reader.join().unwrap(),
        err_reader.join().unwrap(),
    ))
}

/// The page at `path` as headless Chromium laid it out (its DOM after load), or None when
/// no Chromium is installed.
pub fn chromium_dom(path: &std::path::Path) -> Option<String> {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })?;
    let profile = std::env::temp_dir().join(format!(
        "iolab-chromium-{}-{}",
        std::process::id(),
        path.display().to_string().len()
    ));
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,3000",
        "--dump-dom",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("file://{}", path.display()));
    let (ok, dom, err) = run_bounded(cmd, Duration::from_secs(120)).expect("chromium starts");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(ok, "chromium failed: {err}");
    Some(dom)
}
