//! Network namespaces: a private network for the engines that bring their own.
//!
//! The `userspace` engine owns a TAP device and addresses of its own. They, and every client
//! that talks to them, live in a namespace made for the run (the `ip netns` kind, a file
//! under `/run/netns`), so nothing is ever routed in the host's namespace and no packet can
//! leave the machine. A namespace is per thread in Linux: [`Netns::enter`] moves the calling
//! thread, and threads it starts afterwards are born inside.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

/// A named network namespace; deleted on drop if this process created it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    created: bool,
}

impl Netns {
    /// Joins namespace `name` if it exists, else creates it (with its loopback up) and
    /// deletes it again when dropped.
    pub fn create_or_join(name: &str) -> anyhow::Result<Netns> {
        check_name(name)?;
        if path_of(name).exists() {
            return Ok(Netns {
                name: name.into(),
                created: false,
            });
        }
        ip(&["netns", "add", name]).with_context(|| format!("cannot create network namespace {name}"))?;
        let ns = Netns {
            name: name.into(),
            created: true,
        };
        ip(&["-n", name, "link", "set", "lo", "up"])
            .with_context(|| format!("cannot bring up loopback in network namespace {name}"))?;
        Ok(ns)
    }

    /// An existing namespace, never deleted by this handle.
    pub fn existing(name: &str) -> anyhow::Result<Netns> {
        check_name(name)?;
        if !path_of(name).exists() {
            anyhow::bail!(
                "network namespace {name} does not exist (no {})",
                path_of(name).display()
            );
        }
        Ok(Netns {
            name: name.into(),
            created: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) -> anyhow::Result<()> {
        enter_path(&path_of(&self.name))
            .with_context(|| format!("cannot enter network namespace {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.created {
            if let Err(e) = ip(&["netns", "delete", &self.name]) {
                eprintln!("iolab: could not delete network namespace {}: {e:#}", self.name);
            }
        }
    }
}

/// Whether the calling thread may be in the machine's own network namespace. A thread is
/// known to be elsewhere when its namespace is one of the named ones (`/run/netns/*`, made
/// by `ip netns add` or by iolab), or differs from that of pid 1 where that can be read.
pub fn in_host_namespace() -> bool {
    let id = |p: &std::path::Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let Some(mine) = id(std::path::Path::new("/proc/thread-self/ns/net")) else {
        return true;
    };
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        if entries.flatten().any(|e| id(&e.path()) == Some(mine)) {
            return false;
        }
    }
    match id(std::path::Path::new("/proc/1/ns/net")) {
        Some(host) => mine == host,
        // Cannot tell (pid 1 is not ours to look at): assume the worst.
        None => true,
    }
}

/// Saves the calling thread's namespace, to return to it with [`Saved::restore`].
pub struct Saved(File);

impl Saved {
    pub fn current() -> anyhow::Result<Saved> {
        Ok(Saved(
            File::open("/proc/thread-self/ns/net").context("cannot open this thread's network namespace")?,
        ))
    }

    pub fn restore(&self) -> anyhow::Result<()> {
        setns(&self.0).context("cannot return to the original network namespace")
    }
}

/// The calling thread's stay in a namespace: it returns to where it was when dropped.
pub struct Visit(Saved);

impl Visit {
    /// Moves the calling thread into existing namespace `name` until the visit is dropped.
    pub fn enter(name: &str) -> anyhow::Result<Visit> {
        let saved = Saved::current()?;
        Netns::existing(name)?.enter()?;
        Ok(Visit(saved))
    }
}

impl Drop for Visit {
    fn drop(&mut self) {
        if let Err(e) = self.0.restore() {
            eprintln!("iolab: {e:#}");
        }
    }
}

fn path_of(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

fn enter_path(path: &std::path::Path) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    setns(&file)?;
    Ok(())
}

fn setns(file: &File) -> anyhow::Result<()> {
    // SAFETY: setns on a descriptor we hold open; it changes only this thread's namespace.
    if let Err(e) = unsafe { crate::syscall!(setns(file.as_raw_fd(), libc::CLONE_NEWNET)) } {
        if e.raw_os_error() == Some(libc::EPERM) {
            anyhow::bail!("setns: {e} (entering a network namespace needs root or CAP_SYS_ADMIN)");
        }
        anyhow::bail!("setns: {e}");
    }
    Ok(())
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        anyhow::bail!("'{name}' is not a usable namespace name (letters, digits, '-', '_', '.'; up to 64)");
    }
    Ok(())
}

/// Runs `ip ARGS`, turning a failure into its own message.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("the `ip` command (iproute2) is not installed")
        } else {
            anyhow::anyhow!("cannot run ip: {e}")
        }
    })?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!("ip {}: {}", args.join(" "), why.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", ".x", "a/b", "a b", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for good in ["iolab", "iolab-test.1_x"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn missing_namespace_is_refused() {
        let e = Netns::existing("iolab-no-such-namespace").unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
