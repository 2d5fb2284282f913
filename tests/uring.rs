//! What is the `uring` engine's own: how it fails where io_uring cannot run, and how it copes
//! when its receive buffer ring runs dry. (Everything else it shares with every engine in the
//! conformance suite.)
//!
//! Where io_uring cannot run, the engines that need it say why in one line and exit non-zero.
//! The server is started under a seccomp filter that fails `io_uring_setup` with a chosen
//! errno, as a container runtime's default profile (EPERM) or a kernel without io_uring
//! (ENOSYS) would.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

/// Installs a filter failing `io_uring_setup` with `errno`; everything else is allowed.
fn deny_io_uring_setup(errno: u32) -> std::io::Result<()> {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let filter = [
        op(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(BPF_JMP_JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
        op(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno),
        op(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with a valid program; it only restricts this (child) process.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, 2, &prog as *const libc::sock_fprog) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `iolab serve --engine <engine>` with io_uring_setup failing with `errno`; returns
/// whether it succeeded, what it printed on stdout and its stderr.
fn serve_denied(engine: &str, errno: i32) -> (bool, String, String) {
    let mut cmd = common::serve_command(std::path::Path::new(env!("CARGO_BIN_EXE_iolab")), engine);
    // SAFETY: prctl is async-signal-safe; the filter is built before fork in the closure's
    // captured state only from constants.
    unsafe {
        cmd.pre_exec(move || deny_io_uring_setup(errno as u32));
    }
    let mut child = cmd.spawn().expect("spawn iolab serve");
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    (status.success(), out, err)
}

#[test]
fn denied_by_seccomp_says_so_in_one_line() {
    for engine in ["uring", "monoio"] {
        let (ok, out, err) = serve_denied(engine, libc::EPERM);
        assert!(!ok, "{engine} must fail");
        assert!(
            !out.contains("listening"),
            "{engine} failed before listening: {out}"
        );
        assert_eq!(err.lines().count(), 1, "{engine}: one line: {err}");
        assert!(
            err.contains("seccomp") && err.contains("--engine"),
            "{engine}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn missing_io_uring_says_so_in_one_line() {
    let (ok, _, err) = serve_denied("uring", libc::ENOSYS);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("no io_uring"), "{err}");
}

#[test]
fn other_engines_do_not_need_io_uring() {
    let mut cmd = common::serve_command(std::path::Path::new(env!("CARGO_BIN_EXE_iolab")), "epoll");
    cmd.stderr(Stdio::null());
    // SAFETY: as above.
    unsafe {
        cmd.pre_exec(|| deny_io_uring_setup(libc::EPERM as u32));
    }
    let mut child = cmd.spawn().expect("spawn iolab serve");
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 12];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"listening on");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// Unprivileged, with no locked memory allowed, the ring cannot be created: the line says so
/// and names the limit.
#[test]
fn too_little_locked_memory_says_so_in_one_line() {
    // The user `nobody` may not reach the build directory (a checkout under /root, say):
    // run a copy from a directory everyone can enter.
    let dir = std::env::temp_dir().join(format!("iolab-memlock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("iolab");
    std::fs::copy(env!("CARGO_BIN_EXE_iolab"), &bin).unwrap();
    for p in [&dir, &bin] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut cmd = common::serve_command(&bin, "uring");
    // SAFETY: setrlimit, setgid and setuid are async-signal-safe and affect only the child.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // As root, drop to nobody: root's CAP_IPC_LOCK would lift the limit.
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &none) != 0
                || (libc::geteuid() == 0 && (libc::setgid(65534) != 0 || libc::setuid(65534) != 0))
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run iolab serve as nobody");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("locked memory") && err.contains("RLIMIT_MEMLOCK is 0 KiB"),
        "{err}"
    );
}

/// Two receive buffers for sixteen busy connections: the multishot receives keep running the
/// ring dry (ENOBUFS), are re-armed, and every reply still arrives intact.
#[test]
fn an_empty_buffer_ring_slows_receives_but_loses_nothing() {
    use iolab::loadgen::{self, LoadConfig};
    let (child, addr, stdout) = common::spawn_server_with_stderr(&[
        "--engine".into(),
        "uring".into(),
        "--recv".into(),
        "multishot".into(),
        "--recv-buffers".into(),
        "2".into(),
        "--recv-buffer-size".into(),
        "256".into(),
    ]);
    let mut cfg = LoadConfig::new(addr, 4000.0, std::time::Duration::from_secs(1));
    cfg.connections = 16;
    cfg.request_size = "4KiB".parse().unwrap();
    let report = loadgen::run(cfg, &mut |_| {}).expect("load runs");
    let m = &report.m;
    assert!(m.completed > 1000, "completed {}", m.completed);
    assert_eq!((m.bad_replies, m.lost), (0, 0), "{:?}", report.error);
    let (status, summary, stderr) = common::terminate_with_stderr(child, stdout);
    assert!(status.success(), "{stderr}");
    assert!(summary.contains("protocol_errors=0 io_errors=0"), "{summary}");
    assert!(stderr.contains("ran empty"), "ENOBUFS was exercised: {stderr}");
}
