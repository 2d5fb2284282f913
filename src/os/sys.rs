//! Thin, checked wrappers over the few Linux calls the engines and the load generator share.
//!
//! One macro turns the C convention (-1 and errno) into `io::Result` (and `check_mapped`
//! does it for mmap's `MAP_FAILED`), so no file repeats it; `restarting` retries on EINTR.
//! Only I/O subsystems import this module; the session core and the codecs never do.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Calls a libc function and turns a -1 return into the thread's errno as an `io::Error`.
/// It expands to a raw call, so it is used inside an `unsafe` block whose SAFETY comment
/// says why the arguments are valid.
#[macro_export]
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        let res = libc::$fn($($arg),*);
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// Runs a checked call again for as long as a signal interrupts it (EINTR).
pub fn restarting<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// Checks an `mmap`: `MAP_FAILED` becomes the thread's errno.
pub fn check_mapped(p: *mut libc::c_void) -> io::Result<*mut libc::c_void> {
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p)
    }
}

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

/// Readiness interests, as epoll spells them.
pub mod interest {
    pub const READ: u32 = libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32;
    pub const WRITE: u32 = libc::EPOLLOUT as u32;
    pub const EDGE: u32 = libc::EPOLLET as u32;
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: no pointers involved.
        let fd = unsafe { syscall!(epoll_create1(libc::EPOLL_CLOEXEC)) }?;
        // SAFETY: a fresh descriptor we own.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    pub fn modify(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, events)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is a valid epoll_event for the duration of the call.
        unsafe { syscall!(epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev)) }?;
        Ok(())
    }

    /// Waits for events; `None` waits forever. The timeout has nanosecond resolution
    /// (epoll_pwait2, Linux 5.11): plain epoll_wait rounds up to whole milliseconds, far too
    /// coarse for a schedule paced in microseconds.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout: Option<Duration>) -> io::Result<usize> {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        loop {
            // SAFETY: events is writable for the length passed; ts_ptr is null or points to ts,
            // which outlives the call; a null sigmask means "leave the mask alone".
            let r = unsafe {
                syscall!(epoll_pwait2(
                    self.fd.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len().min(i32::MAX as usize) as libc::c_int,
                    ts_ptr,
                    std::ptr::null()
                ))
            };
            match r {
                Ok(n) => return Ok(n as usize),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A counter the kernel can wait on: one thread `notify`s, a loop polling the descriptor wakes.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: no pointers involved.
        let fd = unsafe { syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK)) }?;
        // SAFETY: a fresh descriptor we own.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes the descriptor readable (until [`EventFd::drain`]).
    pub fn notify(&self) {
        let one: u64 = 1;
        // A full counter (EAGAIN) is just as readable, so the result does not matter.
        // SAFETY: writes 8 bytes from a valid u64.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter: the descriptor is not readable until the next notify.
    pub fn drain(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; EAGAIN means it was already zero.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Lets this thread's timed sleeps end when asked instead of up to 50 us later (the default
/// timer slack), which matters to a generator that wakes just before each send.
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// The pending error on a socket (SO_ERROR), e.g. the outcome of a non-blocking connect.
/// Sends what the socket takes at once of `slices`, never waiting (even on a blocking
/// socket) and never raising SIGPIPE. Returns the bytes taken; 0 when the socket is full.
pub fn send_now(fd: RawFd, slices: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; zeroed is a valid empty header before the fields we set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec.
    msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = slices.len() as _;
    // SAFETY: msg points at `slices`, valid for the call; the kernel only reads them.
    match restarting(|| unsafe {
        crate::syscall!(sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL))
    }) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

pub fn take_socket_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err and len are valid for writes of the sizes passed.
    unsafe {
        syscall!(getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len
        ))
    }?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
