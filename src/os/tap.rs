//! A multi-queue TAP device, and one queue of it as a smoltcp [`Device`].
//!
//! A TAP device is an Ethernet link whose far end is a file descriptor: what the kernel
//! sends on the link is read from the descriptor, what is written to it arrives as if from a
//! wire. Opened with `IFF_MULTI_QUEUE` N times, it has N descriptors, and the kernel picks
//! one per flow (by its hash, then by where that flow's packets were last written), so a
//! thread that owns a queue owns its connections for their whole life.
//!
//! The one thing every queue must see is ARP: the kernel's answer to one thread's question
//! may arrive on another thread's queue. A queue that reads an ARP frame hands a copy to
//! every other queue (and wakes its thread), so each stack's neighbour cache fills.
//!
//! The device is created without `IFF_PERSIST`: it vanishes, with its addresses and routes,
//! when the last descriptor closes, even if the process is killed.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use smoltcp::phy::{Device, DeviceCapabilities, Medium};

use crate::os::sys::EventFd;

/// Ethernet header bytes on top of the IP MTU.
const ETHERNET_HEADER: usize = 14;
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
/// Longest interface name, without the NUL (IFNAMSIZ - 1).
pub const MAX_NAME: usize = 15;

// The interface ioctls (linux/sockios.h); libc has them only for some targets.
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCSIFNETMASK: libc::c_ulong = 0x891c;
const SIOCSIFMTU: libc::c_ulong = 0x8922;
const SIOCGIFINDEX: libc::c_ulong = 0x8933;

/// `struct ifreq`: a name, then a union of which each call uses one member.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut req = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }

    fn set_addr(&mut self, addr: Ipv4Addr) {
        // SAFETY: sockaddr_in is plain data; zeroed is a valid value.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(addr).to_be();
        // SAFETY: sockaddr_in (16 bytes) fits the union's 24; both are plain bytes.
        let bytes: [u8; 16] = unsafe { std::mem::transmute(sin) };
        self.data[..16].copy_from_slice(&bytes);
    }
}

/// A TAP link as iolab sets one up, server or load alike: the device, the stack's address
/// and prefix (the kernel's end takes another host), the IP MTU, and each connection's
/// receive and send buffer.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub tap: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mtu: usize,
    pub socket_buffer: usize,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            tap: "iolab0".into(),
            ip: Ipv4Addr::new(10, 77, 0, 1),
            prefix: 24,
            mtu: 1500,
            socket_buffer: 64 << 10,
        }
    }
}

impl LinkOptions {
    /// The kernel's address on the link: the subnet's first host that is not the stack's.
    pub fn kernel_side(&self) -> Ipv4Addr {
        let net = u32::from(self.ip) & prefix_mask(self.prefix);
        let first = Ipv4Addr::from(net + 1);
        if first == self.ip {
            Ipv4Addr::from(net + 2)
        } else {
            first
        }
    }

    /// Refuses the host's namespace, creates the device with `queues` queues and gives the
    /// kernel's end its address, in the calling thread's namespace.
    pub fn open(&self, queues: usize) -> anyhow::Result<Vec<OwnedFd>> {
        if self.socket_buffer < 1024 {
            anyhow::bail!("--tap-buffer must be at least 1 KiB");
        }
        if !(576..=65_000).contains(&self.mtu) {
            anyhow::bail!("--tap-mtu must be between 576 and 65000");
        }
        if crate::os::netns::in_host_namespace() {
            anyhow::bail!(
                "the user-space stack keeps its TAP device out of the host's network: add --netns NAME \
                 or run it under `ip netns exec NAME`"
            );
        }
        let fds = create(&self.tap, queues)?;
        configure_kernel_side(&self.tap, self.kernel_side(), self.prefix, self.mtu as u32)
            .map_err(|e| anyhow::anyhow!("cannot configure TAP device {}: {e}", self.tap))?;
        Ok(fds)
    }
}

/// Parses `A.B.C.D/P` as `--tap-ip` takes it.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("'{s}' is not an IPv4 address with a prefix (like 10.77.0.1/24)");
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.trim().parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.trim().parse().map_err(|_| bad())?;
    if !(8..=30).contains(&prefix) {
        return Err(format!(
            "--tap-ip {s}: the prefix must be 8 to 30 (the link needs two hosts)"
        ));
    }
    let mask = prefix_mask(prefix);
    let host = u32::from(addr) & !mask;
    if host == 0 || host == !mask {
        return Err(format!(
            "--tap-ip {s}: that is the subnet's network or broadcast address"
        ));
    }
    if addr.is_loopback() || addr.is_multicast() || addr.is_unspecified() {
        return Err(format!("--tap-ip {s}: not a unicast address for a link"));
    }
    Ok((addr, prefix))
}

/// Why a TAP device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP name '{0}' is not usable (1 to {MAX_NAME} letters, digits, '-', '_' or '.')")]
    BadName(String),
    #[error("TAP name {0} is taken: a network device by that name already exists in this namespace")]
    Taken(String),
    #[error("no /dev/net/tun: the kernel's tun module is missing (try `modprobe tun`)")]
    NoTun,
    #[error("cannot create TAP device {0}: {1} (creating one needs root or CAP_NET_ADMIN)")]
    NotPermitted(String, io::Error),
    #[error("cannot create TAP device {0}: {1}")]
    Io(String, io::Error),
}

/// Creates TAP device `name` with `queues` queues, one descriptor each (non-blocking).
pub fn create(name: &str, queues: usize) -> Result<Vec<OwnedFd>, TapError> {
    let usable = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !usable {
        return Err(TapError::BadName(name.into()));
    }
    let io_err = |e| TapError::Io(name.into(), e);
    // Asking the kernel, not /sys: /sys shows the namespace it was mounted in, not ours.
    if interface_exists(name).map_err(io_err)? {
        return Err(TapError::Taken(name.into()));
    }
    let mut fds = Vec::with_capacity(queues);
    for _ in 0..queues {
        // SAFETY: open with a constant NUL-terminated path.
        let opened = unsafe {
            crate::syscall!(open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            ))
        };
        let fd = opened.map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => TapError::NoTun,
            io::ErrorKind::PermissionDenied => TapError::NotPermitted(name.into(), e),
            _ => io_err(e),
        })?;
        // SAFETY: a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq::new(name);
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE) as i16;
        req.data[..2].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq we own.
        if let Err(e) = unsafe { crate::syscall!(ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req)) } {
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::NotPermitted(name.into(), e),
                // A device of that name appeared meanwhile, or is of another kind.
                Some(libc::EBUSY) | Some(libc::EINVAL) => TapError::Taken(name.into()),
                _ => io_err(e),
            });
        }
        fds.push(fd);
    }
    Ok(fds)
}

/// Gives the kernel's end of link `name` an address and MTU and brings it up. The subnet's
/// route comes with the address and goes with the device.
pub fn configure_kernel_side(name: &str, addr: Ipv4Addr, prefix: u8, mtu: u32) -> io::Result<()> {
    let sock = inet_socket()?;
    let ioctl = |request: libc::c_ulong, req: &mut IfReq| -> io::Result<()> {
        // SAFETY: an interface ioctl on our socket with an ifreq we own.
        unsafe { crate::syscall!(ioctl(sock.as_raw_fd(), request as _, req as *mut IfReq)) }.map(|_| ())
    };
    let mut req = IfReq::new(name);
    req.data[..4].copy_from_slice(&(mtu as i32).to_ne_bytes());
    ioctl(SIOCSIFMTU, &mut req)?;
    let mut req = IfReq::new(name);
    req.set_addr(addr);
    ioctl(SIOCSIFADDR, &mut req)?;
    let mut req = IfReq::new(name);
    req.set_addr(Ipv4Addr::from(prefix_mask(prefix)));
    ioctl(SIOCSIFNETMASK, &mut req)?;
    let mut req = IfReq::new(name);
    ioctl(SIOCGIFFLAGS, &mut req)?;
    let flags = i16::from_ne_bytes([req.data[0], req.data[1]]) | (libc::IFF_UP | libc::IFF_RUNNING) as i16;
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(SIOCSIFFLAGS, &mut req)
}

fn interface_exists(name: &str) -> io::Result<bool> {
    let sock = inet_socket()?;
    let mut req = IfReq::new(name);
    // SAFETY: SIOCGIFINDEX fills an ifreq we own.
    match unsafe { crate::syscall!(ioctl(sock.as_raw_fd(), SIOCGIFINDEX as _, &mut req)) } {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A socket to hang interface ioctls on, in the calling thread's namespace.
fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { crate::syscall!(socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)) }?;
    // SAFETY: a descriptor we just made and own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn prefix_mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// ARP frames passed between the queues of one device, and the eventfds that wake them.
#[derive(Debug)]
pub struct ArpShare {
    inboxes: Vec<Mutex<Vec<Vec<u8>>>>,
    mail: Vec<AtomicBool>,
    wakers: Vec<EventFd>,
}

impl ArpShare {
    pub fn new(queues: usize) -> io::Result<Arc<ArpShare>> {
        let wakers = (0..queues).map(|_| EventFd::new()).collect::<io::Result<_>>()?;
        Ok(Arc::new(ArpShare {
            inboxes: (0..queues).map(|_| Mutex::new(Vec::new())).collect(),
            mail: (0..queues).map(|_| AtomicBool::new(false)).collect(),
            wakers,
        }))
    }

    fn broadcast(&self, from: usize, frame: &[u8]) {
        for (i, inbox) in self.inboxes.iter().enumerate() {
            if i == from {
                continue;
            }
            if let Ok(mut q) = inbox.lock() {
                // A queue that is not reading must not grow without bound; ARP is repeated.
                if q.len() < 64 {
                    q.push(frame.to_vec());
                }
            }
            self.mail[i].store(true, Ordering::Release);
            self.wakers[i].notify();
        }
    }

    fn take(&self, index: usize) -> Option<Vec<u8>> {
        if !self.mail[index].load(Ordering::Acquire) {
            return None;
        }
        let mut q = self.inboxes[index].lock().ok()?;
        let frame = q.pop();
        if q.is_empty() {
            self.mail[index].store(false, Ordering::Release);
        }
        frame
    }
}

/// One queue of a TAP device, as the Ethernet device of one smoltcp interface.
pub struct TapQueue {
    index: usize,
    fd: OwnedFd,
    mtu: usize,
    rx: Vec<u8>,
    tx: Vec<u8>,
    share: Arc<ArpShare>,
}

impl TapQueue {
    /// Queue `index` of a device whose IP MTU is `mtu`.
    pub fn new(index: usize, fd: OwnedFd, mtu: usize, share: Arc<ArpShare>) -> TapQueue {
        let frame = mtu + ETHERNET_HEADER;
        TapQueue {
            index,
            fd,
            mtu,
            rx: vec![0; frame.max(2048)],
            tx: vec![0; frame.max(2048)],
            share,
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads the next frame: first those other queues passed on, then the device's own.
    fn read_frame(&mut self) -> Option<usize> {
        if let Some(frame) = self.share.take(self.index) {
            let n = frame.len().min(self.rx.len());
            self.rx[..n].copy_from_slice(&frame[..n]);
            return Some(n);
        }
        // SAFETY: read(2) into a buffer we own, at most its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), self.rx.as_mut_ptr().cast(), self.rx.len()) };
        if n <= 0 {
            return None;
        }
        let n = n as usize;
        if n >= ETHERNET_HEADER && self.rx[12..14] == ETHERTYPE_ARP && self.share.inboxes.len() > 1 {
            self.share.broadcast(self.index, &self.rx[..n]);
        }
        Some(n)
    }
}

pub struct RxToken<'a> {
    frame: &'a [u8],
}

pub struct TxToken<'a> {
    /// The queue's descriptor, alive as long as the borrowed queue is.
    fd: RawFd,
    buf: &'a mut Vec<u8>,
}

impl Device for TapQueue {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: smoltcp::time::Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let n = self.read_frame()?;
        let TapQueue { fd, rx, tx, .. } = self;
        Some((
            RxToken { frame: &rx[..n] },
            TxToken {
                fd: fd.as_raw_fd(),
                buf: tx,
            },
        ))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            fd: self.fd.as_raw_fd(),
            buf: &mut self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // For Ethernet smoltcp counts the header in the MTU.
        caps.max_transmission_unit = self.mtu + ETHERNET_HEADER;
        caps
    }
}

impl smoltcp::phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

impl smoltcp::phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let result = f(&mut self.buf[..len]);
        // A frame the kernel refuses (a full queue, a device going down) is lost as on a wire;
        // TCP sends it again.
        // SAFETY: write(2) of bytes we own.
        unsafe { libc::write(self.fd, self.buf.as_ptr().cast(), len) };
        result
    }
}

/// A smoltcp interface on `device` at `ip/prefix`, with a locally administered MAC made
/// from the address (every queue of a device answers with the same one).
pub fn interface(device: &mut TapQueue, ip: Ipv4Addr, prefix: u8) -> smoltcp::iface::Interface {
    use smoltcp::iface::{Config, Interface};
    use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
    let o = ip.octets();
    let mac = EthernetAddress([0x02, 0x00, o[0], o[1], o[2], o[3]]);
    let mut config = Config::new(HardwareAddress::Ethernet(mac));
    config.random_seed = crate::os::clock::now_ns() ^ ((device.raw_fd() as u64) << 32);
    let mut iface = Interface::new(config, device, smoltcp::time::Instant::now());
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ip), prefix));
    });
    iface
}

/// A TCP socket with `buffer` bytes each way and Nagle off (a reply goes when it is ready).
pub fn tcp_socket(buffer: usize) -> smoltcp::socket::tcp::Socket<'static> {
    use smoltcp::socket::tcp;
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buffer]),
        tcp::SocketBuffer::new(vec![0; buffer]),
    );
    socket.set_nagle_enabled(false);
    socket
}

/// A [`tcp_socket`] listening on `port`.
pub fn listening_socket(buffer: usize, port: u16) -> anyhow::Result<smoltcp::socket::tcp::Socket<'static>> {
    let mut socket = tcp_socket(buffer);
    socket
        .listen(port)
        .map_err(|e| anyhow::anyhow!("smoltcp cannot listen on port {port}: {e}"))?;
    Ok(socket)
}

/// Sleeps until the queue has a frame, another queue passed it an ARP frame, `extra` (if
/// any) is readable, or `timeout` passes.
pub fn wait(device: &TapQueue, extra: Option<RawFd>, timeout: std::time::Duration) -> io::Result<()> {
    let ev = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [
        ev(device.raw_fd()),
        ev(device.share.wakers[device.index].fd()),
        ev(extra.unwrap_or(-1)),
    ];
    // ppoll, not poll: a timeout in whole milliseconds would oversleep a send schedule.
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: ppoll(2) over an array we own; a negative fd is ignored by the kernel.
    let polled = unsafe {
        crate::syscall!(ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null()
        ))
    };
    // A signal is only an early wake-up: the caller polls again.
    match polled {
        Err(e) if e.kind() != io::ErrorKind::Interrupted => return Err(e),
        _ => {}
    }
    if fds[1].revents != 0 {
        device.share.wakers[device.index].drain();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(prefix_mask(24), 0xffff_ff00);
        assert_eq!(prefix_mask(32), u32::MAX);
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(30), 0xffff_fffc);
    }

    #[test]
    fn tap_addresses_parse() {
        assert_eq!(
            parse_cidr("10.77.0.1/24").unwrap(),
            (Ipv4Addr::new(10, 77, 0, 1), 24)
        );
        for bad in [
            "10.77.0.1",
            "10.77.0.1/31",
            "10.77.0.0/24",
            "10.77.0.255/24",
            "127.0.0.2/8",
            "x/24",
            "10.77.0.1/x",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_kernel_takes_another_host_of_the_subnet() {
        let side = |ip, prefix| {
            LinkOptions {
                ip,
                prefix,
                ..LinkOptions::default()
            }
            .kernel_side()
        };
        assert_eq!(side(Ipv4Addr::new(10, 77, 0, 1), 24), Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(side(Ipv4Addr::new(10, 77, 0, 9), 24), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(
            side(Ipv4Addr::new(192, 168, 5, 6), 30),
            Ipv4Addr::new(192, 168, 5, 5)
        );
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for bad in ["", "a-name-longer-than-15", "a/b", "tap 0"] {
            assert!(matches!(create(bad, 1), Err(TapError::BadName(_))), "{bad}");
        }
    }

    #[test]
    fn arp_frames_reach_the_other_queues_once() {
        let share = ArpShare::new(3).unwrap();
        share.broadcast(1, b"frame");
        assert_eq!(share.take(0).as_deref(), Some(&b"frame"[..]));
        assert_eq!(share.take(0), None);
        assert_eq!(share.take(1), None, "the reader keeps its own frame");
        assert_eq!(share.take(2).as_deref(), Some(&b"frame"[..]));
    }
}
