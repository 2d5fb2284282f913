//! CPUs and descriptor limits: pinning a thread, counting and naming CPUs, raising the
//! open-file limit, keeping idle CPUs out of their sleep states while something is measured.
//! The server, the generator and the sweep all need them, so they sit below all three.

/// Pins the calling thread to `cpus` (all of them; empty means no pinning).
pub fn pin_current_thread(cpus: &[usize]) -> anyhow::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &cpu in cpus {
            if cpu >= libc::CPU_SETSIZE as usize {
                anyhow::bail!("CPU {cpu} is out of range");
            }
            libc::CPU_SET(cpu, &mut set);
        }
        if let Err(e) = crate::syscall!(sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)) {
            anyhow::bail!(
                "cannot pin to CPUs {cpus:?}: {e} (this machine has {} CPUs)",
                num_cpus()
            );
        }
    }
    Ok(())
}

/// This machine's memory in bytes (MemTotal of /proc/meminfo), if it can be read.
pub fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How many CPUs this process may run on.
pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Parses a CPU list as taskset writes it: `0`, `0,2`, `0-3`, `0-1,4`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("'{s}' is not a CPU list (examples: 0, 0,2, 0-3)");
        if let Some((a, b)) = part.split_once('-') {
            let a: usize = a.trim().parse().map_err(|_| bad())?;
            let b: usize = b.trim().parse().map_err(|_| bad())?;
            if a > b || b >= 1024 {
                return Err(bad());
            }
            cpus.extend(a..=b);
        } else {
            cpus.push(part.parse().map_err(|_| bad())?);
        }
    }
    if cpus.is_empty() {
        return Err(format!("'{s}' names no CPU"));
    }
    Ok(cpus)
}

/// Raises this process's open-file soft limit to its hard limit, so thousands of connections
/// fit. Returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit read and write a plain struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// What an idle CPU may do while a measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuIdle {
    /// Poll, never halt: the kernel's CPU-latency QoS held at 0 µs ([`hold_cpus_awake`]).
    Awake,
    /// Whatever the kernel's idle governor picks (a halt, on a VM).
    Os,
}

impl CpuIdle {
    /// What idle CPUs did, in the words every report uses (after "idle CPUs").
    pub fn describe(self) -> &'static str {
        match self {
            CpuIdle::Awake => "held awake: polling, not halting (--cpu-idle)",
            CpuIdle::Os => "left to the kernel: a halted CPU wakes late on a VM (--cpu-idle)",
        }
    }
}

/// The kernel's CPU-latency QoS device: a value written here bounds the exit latency of the
/// idle states every CPU may enter, for as long as the file stays open.
const CPU_LATENCY_QOS: &str = "/dev/cpu_dma_latency";

/// While alive, no CPU enters an idle state it takes time to leave: an idle CPU polls.
///
/// Why a measurement wants this: a halted CPU is woken by an interrupt, and on a VM a halted
/// vCPU is descheduled by the host, which schedules it again when the host has a moment. On
/// the shared development VM that took a mean of 110–200 µs per wake-up and milliseconds at
/// the tail; with the CPUs held awake, 30–45 µs (docs/measurements.md). Every request to a
/// server that sleeps in its wait pays one such wake-up on each side, so the halt, not the
/// I/O model, decided the p99. Benchmarks on real hardware do the same (tuned's
/// latency-performance profile holds this very request). The cost is idle power, and on a VM
/// host CPU that the polling vCPUs no longer give back.
#[derive(Debug)]
pub struct AwakeGuard {
    _qos: std::fs::File,
}

/// Holds every CPU awake (see [`AwakeGuard`]) until the guard is dropped; the reason in one
/// line where this process may not (the device is root's).
pub fn hold_cpus_awake() -> Result<AwakeGuard, String> {
    use std::io::Write as _;
    let mut qos = std::fs::OpenOptions::new()
        .write(true)
        .open(CPU_LATENCY_QOS)
        .map_err(|e| format!("{CPU_LATENCY_QOS}: {e}"))?;
    qos.write_all(&0i32.to_ne_bytes())
        .map_err(|e| format!("{CPU_LATENCY_QOS}: {e}"))?;
    Ok(AwakeGuard { _qos: qos })
}

/// The CPU-latency bound in force now, in µs (2,000 s when nobody asked for one), if the
/// device can be read.
pub fn cpu_latency_bound_us() -> Option<i32> {
    use std::io::Read as _;
    let mut bytes = [0u8; 4];
    std::fs::File::open(CPU_LATENCY_QOS)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .ok()?;
    Some(i32::from_ne_bytes(bytes))
}

/// Holds the CPUs awake if `asked` says so: the guard, and what is in force (`Os` with the
/// reason where holding them was refused).
pub fn apply_cpu_idle(asked: CpuIdle) -> (Option<AwakeGuard>, CpuIdle, Option<String>) {
    match asked {
        CpuIdle::Os => (None, CpuIdle::Os, None),
        CpuIdle::Awake => match hold_cpus_awake() {
            Ok(guard) => (Some(guard), CpuIdle::Awake, None),
            Err(why) => (None, CpuIdle::Os, Some(why)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holding_the_cpus_awake_sets_the_latency_bound_to_zero_while_held() {
        match hold_cpus_awake() {
            Ok(guard) => {
                // Another test may hold it too; while this guard lives the bound is 0 regardless.
                assert_eq!(cpu_latency_bound_us(), Some(0));
                drop(guard);
            }
            // Not root, or no such device: the reason names the device.
            Err(why) => assert!(why.starts_with(CPU_LATENCY_QOS), "{why}"),
        }
        let (guard, in_force, why) = apply_cpu_idle(CpuIdle::Os);
        assert!(guard.is_none() && in_force == CpuIdle::Os && why.is_none());
        let (guard, in_force, why) = apply_cpu_idle(CpuIdle::Awake);
        assert_eq!(guard.is_some(), in_force == CpuIdle::Awake);
        assert_eq!(why.is_some(), in_force == CpuIdle::Os);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Ok(vec![0]));
        assert_eq!(parse_cpu_list("0,2"), Ok(vec![0, 2]));
        assert_eq!(parse_cpu_list("0-3"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_list("0-1,4"), Ok(vec![0, 1, 4]));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
