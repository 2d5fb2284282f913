//! Building a ring, learning what the kernel offers, and saying plainly why it failed.
//!
//! io_uring can be missing (old or stripped kernel), switched off (`kernel.io_uring_disabled`),
//! denied by a seccomp profile (most container runtimes deny it by default) or short of
//! locked memory. Each shows up as a bare errno from `io_uring_setup`; [`explain`] turns it
//! into one line that says which it is and what to do.

use std::io;

use io_uring::{opcode, IoUring, Probe};

/// The kernel's limit on completion queue entries (IORING_MAX_CQ_ENTRIES).
const MAX_CQ_ENTRIES: u32 = 65_536;

/// What this kernel lets the engine use, probed once per ring.
#[derive(Debug, Clone, Copy)]
pub struct Features {
    /// Multishot recv into a provided-buffer ring (kernel ≥ 6.0 for multishot recv).
    pub multishot_recv: bool,
    pub send_zc: bool,
    pub sendmsg_zc: bool,
}

/// Builds the loop's ring with the options asked for, then the fastest set-up flags the
/// kernel accepts: a single issuer with deferred task work (6.1) lets the kernel run
/// completions only when the loop asks for them, in one batch, instead of interrupting it.
pub fn build_ring(entries: u32, sqpoll_idle_ms: Option<u32>) -> anyhow::Result<IoUring> {
    let attempt = |fast: bool| {
        let mut b = IoUring::builder();
        // Multishot operations post many completions per submission: room for them.
        b.setup_cqsize(entries.saturating_mul(4).min(MAX_CQ_ENTRIES));
        if let Some(idle) = sqpoll_idle_ms {
            b.setup_sqpoll(idle);
        } else if fast {
            b.setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag();
        }
        b.build(entries)
    };
    match attempt(true) {
        Ok(ring) => Ok(ring),
        // An older kernel refuses the flags it does not know; try once without them.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && sqpoll_idle_ms.is_none() => {
            attempt(false).map_err(|e| explain(e, entries))
        }
        Err(e) => Err(explain(e, entries)),
    }
}

/// Builds (and drops) a ring as [`build_ring`] would, to learn early whether io_uring can run
/// here and, if not, why.
///
/// On a thread of its own: tearing a ring down may post task work to the thread that made it,
/// which interrupts that thread's next blocking socket call that has a timeout (EINTR), and
/// the caller may be an application thread doing exactly that.
pub fn try_ring(entries: u32, sqpoll_idle_ms: Option<u32>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("uring-probe".into())
        .spawn(move || build_ring(entries, sqpoll_idle_ms).map(drop))?
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the io_uring probe panicked")))
}

pub fn probe(ring: &IoUring) -> Features {
    let mut p = Probe::new();
    let probed = ring.submitter().register_probe(&mut p).is_ok();
    let has = |code: u8| probed && p.is_supported(code);
    Features {
        // Multishot recv has no opcode of its own; the kernel version tells.
        multishot_recv: kernel_at_least(6, 0),
        send_zc: has(opcode::SendZc::CODE),
        sendmsg_zc: has(opcode::SendMsgZc::CODE),
    }
}

/// Whether the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    kernel_version().is_some_and(|v| v >= (major, minor))
}

fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_release(&release)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// One line for a failed `io_uring_setup`: what happened and how to fix it.
pub fn explain(e: io::Error, entries: u32) -> anyhow::Error {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|s| s.trim().to_string());
    anyhow::anyhow!(explain_errno(e, entries, sysctl.as_deref(), memlock_kib()))
}

fn explain_errno(e: io::Error, entries: u32, disabled: Option<&str>, memlock_kib: Option<u64>) -> String {
    let other = "or pick another --engine";
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => match disabled {
            Some("2") => format!(
                "io_uring is disabled on this machine (kernel.io_uring_disabled=2): enable it with \
                 `sysctl -w kernel.io_uring_disabled=0`, {other}"
            ),
            Some("1") => format!(
                "io_uring is limited to root and kernel.io_uring_group (kernel.io_uring_disabled=1): \
                 run as root or in that group, or `sysctl -w kernel.io_uring_disabled=0`, {other}"
            ),
            _ => format!(
                "io_uring_setup was denied ({e}) although the kernel allows io_uring: a seccomp \
                 profile or LSM forbids it (container runtimes do by default); allow io_uring_setup, \
                 io_uring_enter and io_uring_register (e.g. docker --security-opt seccomp=unconfined), \
                 {other}"
            ),
        },
        Some(libc::ENOSYS) => format!(
            "this kernel has no io_uring (io_uring_setup: {e}): it needs Linux ≥ 5.19 built with \
             CONFIG_IO_URING, and no seccomp profile hiding it; {other}"
        ),
        Some(libc::ENOMEM) => format!(
            "not enough locked memory for a ring of {entries} entries (io_uring_setup: {e}; \
             RLIMIT_MEMLOCK is {}): raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity) or use \
             a smaller --ring-entries",
            memlock_kib.map_or("unknown".to_string(), |k| format!("{k} KiB"))
        ),
        Some(libc::EINVAL) => format!(
            "the kernel refused this ring set-up ({e}); --ring-entries must be a power of two up to \
             32768, and --sqpoll needs Linux ≥ 5.11"
        ),
        _ => format!("cannot create an io_uring ({e}); {other}"),
    }
}

fn memlock_kib() -> Option<u64> {
    // SAFETY: getrlimit writes a plain struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        let ok = libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) == 0;
        ok.then_some(lim.rlim_cur / 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }

    #[test]
    fn each_failure_names_its_cause_and_fix() {
        let m = explain_errno(errno(libc::EPERM), 256, Some("2"), None);
        assert!(
            m.contains("kernel.io_uring_disabled=2") && m.contains("sysctl -w"),
            "{m}"
        );
        let m = explain_errno(errno(libc::EPERM), 256, Some("1"), None);
        assert!(m.contains("io_uring_group"), "{m}");
        let m = explain_errno(errno(libc::EPERM), 256, Some("0"), None);
        assert!(m.contains("seccomp"), "{m}");
        let m = explain_errno(errno(libc::ENOSYS), 256, Some("0"), None);
        assert!(m.contains("no io_uring"), "{m}");
        let m = explain_errno(errno(libc::ENOMEM), 4096, Some("0"), Some(64));
        assert!(
            m.contains("RLIMIT_MEMLOCK is 64 KiB") && m.contains("4096 entries"),
            "{m}"
        );
        for m in [
            explain_errno(errno(libc::EINVAL), 3, None, None),
            explain_errno(errno(libc::EIO), 3, None, None),
        ] {
            assert!(!m.contains('\n'), "one line: {m}");
        }
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v669\n"), Some((6, 18)));
        assert_eq!(parse_release("5.19.0"), Some((5, 19)));
        assert_eq!(parse_release("garbage"), None);
    }
}
