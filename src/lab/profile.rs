//! Where the time goes: a server's costs per request and its CPU profile, from /proc and perf.
//!
//! A profiled cell is a run of its own on a fresh server at the cell's rate, after the
//! sweep's measurements, so that no tracing ever touches a latency figure. Two loads of the
//! profile's duration each, with no warm-up (every request of the run is counted):
//!
//! 1. **CPU**: the server's CPU time from perf's task-clock (exact; it hooks no system call),
//!    split into user and kernel by `/proc/PID/stat`'s ticks (its exited threads included);
//!    softirq time of the server's CPUs from `/proc/stat`.
//! 2. **perf**: `perf stat` counts system calls (every `sys_enter`, and those of the names in
//!    [`SYSCALLS`] one by one) and context switches (the involuntary ones are the switches
//!    that found the thread still runnable); `perf record` samples the server's CPUs
//!    (cpu-clock, DWARF call graphs, kernel frames too) meanwhile, keeping the server's
//!    samples. Counters and samples take in threads the server starts during the run (the
//!    thread-per-connection engines), and each run ends once they have exited.
//!
//! The samples are folded and drawn with inferno into an interactive flamegraph (search,
//! zoom) that works offline; two engines' folded stacks make a differential one.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::lab::results::{Profile, SyscallCost};

/// System calls counted by name: what the engines and runtimes make on their hot paths, and
/// the few they make around them. Any other lands in `other`.
pub const SYSCALLS: &[&str] = &[
    "read",
    "write",
    "readv",
    "writev",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_ctl",
    "select",
    "pselect6",
    "poll",
    "ppoll",
    "io_uring_enter",
    "futex",
    "accept",
    "accept4",
    "close",
    "shutdown",
    "sched_yield",
    "nanosleep",
    "clock_nanosleep",
    "mmap",
    "munmap",
    "madvise",
    "mprotect",
    "brk",
    "rt_sigprocmask",
    "clone3",
    "setsockopt",
    "fcntl",
    "ioctl",
];

/// perf, checked to work here: its binary and the system calls this kernel can trace.
#[derive(Debug, Clone)]
pub struct Perf {
    binary: PathBuf,
    syscalls: Vec<&'static str>,
}

/// perf's own sampling rate for the flamegraph (not a multiple of common timer rates).
const SAMPLE_HZ: u32 = 499;
/// How long perf stat may take to attach before the profile gives up on it.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

impl Perf {
    /// perf as this machine has it, or one line saying why it cannot run and how to fix it.
    pub fn probe() -> Result<Perf, String> {
        let binary = PathBuf::from(std::env::var_os("IOLAB_PERF").unwrap_or_else(|| "perf".into()));
        match Command::new(&binary).arg("--version").output() {
            Ok(o) if o.status.success() => {}
            _ => {
                return Err(format!(
                    "perf is not installed ({}): apt-get install linux-perf (Debian) or linux-tools (Ubuntu)",
                    binary.display()
                ))
            }
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let paranoid: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(2);
        if !root && paranoid > 1 {
            return Err(format!(
                "kernel.perf_event_paranoid is {paranoid}: run as root, or sysctl -w kernel.perf_event_paranoid=1"
            ));
        }
        let trial = Command::new(&binary)
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "--", "true"])
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run perf: {e}"))?;
        if !trial.status.success() {
            let why = String::from_utf8_lossy(&trial.stderr);
            let line = why
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no reason given");
            return Err(format!(
                "perf cannot count system calls here ({}): run as root with tracefs mounted \
                 (mount -t tracefs nodev /sys/kernel/tracing)",
                line.trim()
            ));
        }
        let traceable = |name: &str| {
            ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
                .iter()
                .any(|root| Path::new(&format!("{root}/events/syscalls/sys_enter_{name}")).exists())
        };
        let syscalls = SYSCALLS.iter().copied().filter(|n| traceable(n)).collect();
        Ok(Perf { binary, syscalls })
    }
}

/// CPU counters of a process and of some CPUs, at one moment.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    user_ticks: u64,
    system_ticks: u64,
    softirq_ticks: u64,
}

fn cpu_sample(pid: u32, cpus: &[usize]) -> anyhow::Result<CpuSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it start past the last ')'.
    let rest = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    let all = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let softirq_ticks = all
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let cpu: usize = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            let softirq = f.nth(6)?.parse::<u64>().ok()?;
            (cpus.is_empty() || cpus.contains(&cpu)).then_some(softirq)
        })
        .sum();
    Ok(CpuSample {
        // utime and stime are fields 14 and 15: 11 and 12 past the state.
        user_ticks: fields.get(11).copied().unwrap_or(0),
        system_ticks: fields.get(12).copied().unwrap_or(0),
        softirq_ticks,
    })
}

fn tick_us() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e6 / (hz.max(1) as f64)
}

/// One profiled cell's loads, as the sweep runs them: `load()` runs a load of the profile's
/// duration on the server and returns how many requests it had answered.
pub struct Target<'a> {
    pub engine: &'a str,
    pub rate: f64,
    pub pid: u32,
    pub server_cpus: &'a [usize],
    pub duration: Duration,
    pub connections: usize,
    pub dir: &'a Path,
}

impl Perf {
    /// Profiles one cell: the CPU run, then the perf run; writes `STEM.json`, and with
    /// samples `STEM.folded` and `STEM.svg`, into `dir`.
    pub fn profile(
        &self,
        t: &Target<'_>,
        mut load: impl FnMut() -> anyhow::Result<u64>,
    ) -> anyhow::Result<Profile> {
        let stem = Profile::stem(t.engine, t.rate);
        let mut profile = Profile {
            engine: t.engine.to_string(),
            offered_rps: t.rate,
            duration_s: t.duration.as_secs_f64(),
            connections: t.connections,
            ..Profile::default()
        };
        let mut notes = Vec::new();

        // 1. CPU: perf counts only task-clock (exact CPU time, no hook on any system call);
        // /proc's ticks split it into user and kernel.
        let threads = thread_count(t.pid);
        let clock_path = t.dir.join(format!("{stem}.clock"));
        let mut clock = self.start_stat(t.pid, &clock_path, &["task-clock".to_string()])?;
        wait_for_interval(&mut clock, &clock_path, "task-clock")?;
        let before = cpu_sample(t.pid, t.server_cpus)?;
        let requests = load();
        // Threads a connection started count once they have exited (the per-connection engines).
        wait_for_threads(t.pid, threads);
        let after = cpu_sample(t.pid, t.server_cpus)?;
        interrupt_and_wait(&mut clock);
        let requests = requests?;
        let task_clock_ms = read_stat(&clock_path)?
            .get("task-clock")
            .copied()
            .unwrap_or(f64::NAN);
        let _ = std::fs::remove_file(&clock_path);
        profile.requests_cpu_run = requests;
        let per_request = |us: f64| us / requests.max(1) as f64;
        let (user, system) = (
            after.user_ticks.saturating_sub(before.user_ticks),
            after.system_ticks.saturating_sub(before.system_ticks),
        );
        let cpu_us = if task_clock_ms.is_finite() {
            task_clock_ms * 1e3
        } else {
            (user + system) as f64 * tick_us()
        };
        let user_share = if user + system > 0 {
            user as f64 / (user + system) as f64
        } else {
            0.0
        };
        profile.cpu_ticks = user + system;
        profile.user_us_per_request = per_request(cpu_us * user_share);
        profile.kernel_us_per_request = per_request(cpu_us * (1.0 - user_share));
        profile.softirq_us_per_request =
            per_request(after.softirq_ticks.saturating_sub(before.softirq_ticks) as f64 * tick_us());

        // 2. perf: counts and samples.
        let stat_path = t.dir.join(format!("{stem}.stat"));
        let data_path = t.dir.join(format!("{stem}.perf.data"));
        let mut events = vec![
            "raw_syscalls:sys_enter".to_string(),
            "context-switches".to_string(),
        ];
        events.extend(self.syscalls.iter().map(|n| format!("syscalls:sys_enter_{n}")));
        let mut stat = self.start_stat(t.pid, &stat_path, &events)?;
        let mut record = self.start_record(t.server_cpus, &data_path);
        let attached = wait_for_interval(&mut stat, &stat_path, "raw_syscalls:sys_enter");
        let requests = match attached {
            Ok(()) => load(),
            Err(e) => Err(e),
        };
        wait_for_threads(t.pid, threads);
        let ended = [Some(&mut stat), record.as_mut().ok()]
            .into_iter()
            .flatten()
            .map(interrupt_and_wait)
            .collect::<Vec<_>>();
        let requests = requests?;
        profile.requests_perf_run = requests;
        if ended.iter().any(|ok| !ok) {
            notes.push("perf did not stop when asked and was killed".to_string());
        }
        let counts = read_stat(&stat_path)?;
        let _ = std::fs::remove_file(&stat_path);
        let per_request = |n: f64| n / requests.max(1) as f64;
        let total = counts.get("raw_syscalls:sys_enter").copied().unwrap_or(0.0);
        profile.syscalls_per_request = per_request(total);
        let mut named = 0.0;
        for name in &self.syscalls {
            let n = counts
                .get(&format!("syscalls:sys_enter_{name}"))
                .copied()
                .unwrap_or(0.0);
            if n > 0.0 {
                named += n;
                profile.syscalls.push(SyscallCost {
                    name: name.to_string(),
                    per_request: per_request(n),
                });
            }
        }
        if total - named > 0.5 {
            profile.syscalls.push(SyscallCost {
                name: "other".into(),
                per_request: per_request(total - named),
            });
        }
        profile
            .syscalls
            .sort_by(|a, b| b.per_request.total_cmp(&a.per_request).then(a.name.cmp(&b.name)));
        let switches = counts.get("context-switches").copied().unwrap_or(0.0);
        let involuntary = counts
            .get("sched:sched_switch")
            .copied()
            .unwrap_or(0.0)
            .min(switches);
        profile.context_switches_per_request = per_request(switches);
        profile.involuntary_switches_per_request = per_request(involuntary);
        profile.voluntary_switches_per_request = per_request(switches - involuntary);

        match record {
            Ok(_) => match self.flamegraph(t, &stem, &data_path) {
                Ok(ms) => {
                    profile.sampled_cpu_ms = ms;
                    profile.flamegraph = format!("{stem}.svg");
                    profile.folded = format!("{stem}.folded");
                }
                Err(e) => notes.push(format!("no flamegraph: {e:#}")),
            },
            Err(e) => notes.push(format!("no flamegraph: {e:#}")),
        }
        let _ = std::fs::remove_file(&data_path);
        profile.note = notes.join("; ");
        let json = serde_json::to_string_pretty(&profile)?;
        std::fs::write(t.dir.join(format!("{stem}.json")), json)
            .with_context(|| format!("cannot write the profile into {}", t.dir.display()))?;
        Ok(profile)
    }

    /// perf stat counting `events` of the process (and the threads it starts) into `out`;
    /// with the system call counts, also the switches that were preemptions.
    fn start_stat(&self, pid: u32, out: &Path, events: &[String]) -> anyhow::Result<Child> {
        let mut cmd = Command::new(&self.binary);
        // -I: an interval line every 100 ms; the first says the counters are attached.
        cmd.args(["stat", "-x,", "-I", "100", "-o"])
            .arg(out)
            .args(["-p", &pid.to_string()]);
        for e in events {
            cmd.args(["-e", e]);
        }
        if events.len() > 1 {
            // A switch whose outgoing thread is still runnable (state 0) was a preemption.
            cmd.args(["-e", "sched:sched_switch", "--filter", "prev_state == 0"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.spawn().context("cannot start perf stat")
    }

    /// perf record of the server's CPUs (all of them when it is not pinned): sampling the
    /// CPUs, not the process, takes in the threads it starts during the run (perf record
    /// attached to a process follows none of them); `perf script --pid` keeps its samples.
    fn start_record(&self, cpus: &[usize], out: &Path) -> anyhow::Result<Child> {
        let mut cmd = Command::new(&self.binary);
        cmd.args([
            "record",
            "-q",
            "-a",
            "-e",
            "cpu-clock",
            "-F",
            &SAMPLE_HZ.to_string(),
        ])
        .args(["--call-graph", "dwarf,16384"]);
        if !cpus.is_empty() {
            let list: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
            cmd.args(["-C", &list.join(",")]);
        }
        cmd.arg("-o")
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start perf record")
    }

    /// Folds the samples of `data` and draws them; returns the milliseconds of CPU sampled.
    fn flamegraph(&self, t: &Target<'_>, stem: &str, data: &Path) -> anyhow::Result<f64> {
        let script = Command::new(&self.binary)
            .args(["script", "--pid", &t.pid.to_string(), "-i"])
            .arg(data)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .context("cannot run perf script")?;
        if !script.status.success() {
            anyhow::bail!("perf script failed ({})", script.status);
        }
        let mut folded = Vec::new();
        let mut folder = inferno::collapse::perf::Folder::default();
        inferno::collapse::Collapse::collapse(&mut folder, &script.stdout[..], &mut folded)
            .context("cannot fold the samples")?;
        let folded_text = String::from_utf8_lossy(&folded).into_owned();
        // Each stack's count is its samples' period: nanoseconds of CPU.
        let sampled_ns: u64 = folded_text
            .lines()
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum();
        if sampled_ns == 0 {
            anyhow::bail!("perf took no samples of the server");
        }
        std::fs::write(t.dir.join(format!("{stem}.folded")), &folded_text)?;
        let title = format!(
            "{} at {} rps: {:.0} ms of the server's CPU, sampled at {} Hz over {:.1} s",
            t.engine,
            t.rate,
            sampled_ns as f64 / 1e6,
            SAMPLE_HZ,
            t.duration.as_secs_f64()
        );
        draw(&title, folded_text.lines(), &t.dir.join(format!("{stem}.svg")))?;
        Ok(sampled_ns as f64 / 1e6)
    }
}

/// Draws folded stacks as an interactive flamegraph SVG.
pub fn draw<'a>(title: &str, lines: impl IntoIterator<Item = &'a str>, out: &Path) -> anyhow::Result<()> {
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = "ns of CPU".to_string();
    let file = std::fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    inferno::flamegraph::from_lines(&mut options, lines, &mut w).context("cannot draw the flamegraph")?;
    w.flush()?;
    Ok(())
}

/// A differential flamegraph: `after`'s stacks, coloured by how much more (red) or less
/// (blue) of the samples each frame takes than in `before`.
pub fn draw_difference(title: &str, before: &Path, after: &Path, out: &Path) -> anyhow::Result<()> {
    let mut diff = Vec::new();
    inferno::differential::from_files(
        inferno::differential::Options {
            normalize: true,
            ..Default::default()
        },
        before,
        after,
        &mut diff,
    )
    .context("cannot compare the folded stacks")?;
    let text = String::from_utf8_lossy(&diff);
    draw(title, text.lines(), out)
}

/// `iolab report DIR --diff A,B`: a differential flamegraph of B against A at every rate
/// both were profiled at, into `DIR/profile/diff-A-B-RATE.svg`. Returns the files written.
pub fn write_differences(dir: &Path, pair: &str) -> anyhow::Result<Vec<PathBuf>> {
    use crate::lab::results::{read_profiles, PROFILE_DIR};
    let Some((a, b)) = pair.split_once(',').map(|(a, b)| (a.trim(), b.trim())) else {
        anyhow::bail!("--diff takes two profiled engines, A,B (e.g. epoll,uring), not '{pair}'");
    };
    let found = read_profiles(dir)?;
    if let Some(why) = &found.unavailable {
        anyhow::bail!("--diff: {} has no profiles ({why})", dir.display());
    }
    let folded = |engine: &str| -> Vec<(f64, String)> {
        found
            .profiles
            .iter()
            .filter(|p| p.engine == engine && !p.folded.is_empty())
            .map(|p| (p.offered_rps, p.folded.clone()))
            .collect()
    };
    let (fa, fb) = (folded(a), folded(b));
    let engines: Vec<&str> = {
        let mut e: Vec<&str> = found.profiles.iter().map(|p| p.engine.as_str()).collect();
        e.dedup();
        e
    };
    for (name, f) in [(a, &fa), (b, &fb)] {
        if f.is_empty() {
            anyhow::bail!(
                "--diff: no flamegraph of '{name}' in {} (profiled: {})",
                dir.display(),
                if engines.is_empty() {
                    "none".to_string()
                } else {
                    engines.join(", ")
                }
            );
        }
    }
    let pdir = dir.join(PROFILE_DIR);
    let mut written = Vec::new();
    for (rate, before) in &fa {
        let Some((_, after)) = fb.iter().find(|(r, _)| r == rate) else {
            continue;
        };
        // diff-epoll-uring-20000.svg (an engine's options, if any, in the stem's spelling).
        let out = pdir.join(format!(
            "diff-{}-{}.svg",
            Profile::stem(a, 0.0).trim_end_matches("-0"),
            Profile::stem(b, *rate)
        ));
        let title =
            format!("{b} against {a} at {rate:.0} rps: red where {b} spends more of its samples, blue less");
        draw_difference(&title, &pdir.join(before), &pdir.join(after), &out)?;
        written.push(out);
    }
    if written.is_empty() {
        anyhow::bail!("--diff: '{a}' and '{b}' were never profiled at the same rate");
    }
    Ok(written)
}

/// The threads a process has now.
fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Waits (at most two seconds) until the process is back to `threads` threads.
fn wait_for_threads(pid: u32, threads: usize) {
    let began = Instant::now();
    while thread_count(pid) > threads && began.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until perf stat has printed its first interval of `event` (it is attached).
fn wait_for_interval(stat: &mut Child, out: &Path, event: &str) -> anyhow::Result<()> {
    let began = Instant::now();
    while began.elapsed() < ATTACH_TIMEOUT {
        if let Ok(Some(status)) = stat.try_wait() {
            let mut why = String::new();
            if let Some(mut e) = stat.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut why);
            }
            let line = why
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string();
            anyhow::bail!("perf stat ended before the load ({status}): {line}");
        }
        let counted = std::fs::File::open(out)
            .map(|f| {
                std::io::BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .any(|l| l.contains(event))
            })
            .unwrap_or(false);
        if counted {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = stat.kill();
    anyhow::bail!("perf stat did not attach within {ATTACH_TIMEOUT:?}")
}

/// SIGINT, as a person would stop perf (it then writes its output), and a bounded wait;
/// returns whether it stopped by itself.
fn interrupt_and_wait(child: &mut Child) -> bool {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Sums perf stat's interval lines (`time,count,unit,event,...`) by event.
fn read_stat(path: &Path) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(sum_intervals(&text))
}

fn sum_intervals(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut sums = std::collections::BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 4 || line.starts_with('#') {
            continue;
        }
        let Ok(count) = f[1].trim().parse::<f64>() else {
            continue; // "<not counted>" and friends
        };
        *sums.entry(f[3].trim().to_string()).or_insert(0.0) += count;
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_stat_intervals_sum_by_event_and_skip_what_was_not_counted() {
        let text = "# started on Tue Dec  1 17:05:51 2026\n\n\
             0.100,120,,raw_syscalls:sys_enter,100,100.00,,\n\
             0.100,7,,context-switches,100,100.00,,\n\
             0.200,80,,raw_syscalls:sys_enter,100,100.00,,\n\
             0.200,<not counted>,,context-switches,0,0.00,,\n\
             0.200,3,,sched:sched_switch,100,100.00,,\n";
        let sums = sum_intervals(text);
        assert_eq!(sums.get("raw_syscalls:sys_enter"), Some(&200.0));
        assert_eq!(sums.get("context-switches"), Some(&7.0));
        assert_eq!(sums.get("sched:sched_switch"), Some(&3.0));
        assert_eq!(sums.len(), 3);
    }

    #[test]
    fn a_cpu_sample_sees_this_process_spend_cpu() {
        let before = cpu_sample(std::process::id(), &[]).unwrap();
        // 100 ms of this process's CPU time (not of the wall clock: the VM may stall us).
        let cpu = crate::os::sys::process_cpu_time;
        let (start, wall) = (cpu(), Instant::now());
        let mut x = 0u64;
        while cpu() - start < Duration::from_millis(100) && wall.elapsed() < Duration::from_secs(10) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let after = cpu_sample(std::process::id(), &[]).unwrap();
        let ticks = (after.user_ticks + after.system_ticks) - (before.user_ticks + before.system_ticks);
        assert!(ticks >= 2, "100 ms of CPU showed as {ticks} tick(s) ({x})");
        assert!(
            cpu_sample(u32::MAX, &[]).is_err(),
            "a process that does not exist"
        );
    }
}
