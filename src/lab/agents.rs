//! Load agents on other machines, driven over OpenSSH: `sweep --agents FILE`.
//!
//! iolab grows no cluster manager. An agent is a plain `iolab load --agent NAME --start-at
//! TIME` started by `ssh` (BatchMode: the user's own keys, agent and ~/.ssh/config; never a
//! password prompt). For each point the rate and the connections are split between the
//! agents, all are given one start time a little ahead, each writes its files into a
//! temporary folder on its host and sends them back as a tar stream on ssh's stdout, and
//! [`crate::loadgen::merge`] makes one run of them. Before the first point each host is
//! asked for its clock (`date +%s.%N`) and its iolab version, so an unreachable agent fails
//! the sweep at once, with its name, and each agent's clock offset is known.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::loadgen::merge::{self, AgentRun};
use crate::loadgen::{LoadConfig, LoadReport};

/// How far ahead of now a point's agents are told to start (after their warm-up): time for
/// ssh to connect and for every agent to open its connections.
pub const LEAD: Duration = Duration::from_secs(2);

/// Beyond its start, measured window and drain, how long an agent may take (ssh, its
/// connections, writing and sending its files) before it is taken for hung.
pub const AGENT_SLACK: Duration = Duration::from_secs(30);

/// One line of the agents file: `[user@]host[:cpus]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentHost {
    /// What ssh is given: `user@host`, `host`, or a Host alias of the ssh config.
    pub dest: String,
    /// CPUs the agent's driver threads are pinned to (one thread each); empty: one thread,
    /// unpinned.
    pub cpus: Vec<usize>,
}

/// Parses an agents file: one `[user@]host[:cpus]` per line (`cpus` as `--pin` takes them:
/// `1`, `2,3`, `0-3`); blank lines and `#` comments are skipped.
pub fn parse_agents(text: &str) -> Result<Vec<AgentHost>, String> {
    let mut hosts = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |why: String| format!("agents file line {}: {why}", i + 1);
        // An IPv6 address goes in brackets, which keep its colons: `user@[fd00::2]:1`.
        let (dest, cpus) = match line.find(']') {
            Some(close) => match &line[close + 1..] {
                "" => (&line[..=close], None),
                rest => match rest.strip_prefix(':') {
                    Some(c) => (&line[..=close], Some(c)),
                    None => return Err(at(format!("{line:?} is not [user@]host[:cpus]"))),
                },
            },
            None => match line.rsplit_once(':') {
                Some((d, c)) => (d, Some(c)),
                None => (line, None),
            },
        };
        if dest.is_empty()
            || dest.chars().any(|c| c.is_whitespace() || c.is_control())
            || dest.starts_with('-')
        {
            return Err(at(format!("{line:?} is not [user@]host[:cpus]")));
        }
        let cpus = match cpus {
            Some(c) => crate::os::cpu::parse_cpu_list(c).map_err(|e| at(format!("cpus {c:?}: {e}")))?,
            None => Vec::new(),
        };
        hosts.push(AgentHost {
            dest: dest.replace(['[', ']'], ""),
            cpus,
        });
    }
    if hosts.is_empty() {
        return Err("the agents file names no host (one [user@]host[:cpus] per line)".into());
    }
    Ok(hosts)
}

/// The agents of a sweep, checked reachable.
#[derive(Debug, Clone)]
pub struct Agents {
    pub hosts: Vec<AgentHost>,
    /// Each host's clock minus ours (s), measured once over ssh (to within half a round trip).
    pub offsets: Vec<f64>,
    /// `-F FILE` for ssh, if given.
    pub ssh_config: Option<PathBuf>,
    /// The iolab the agents run (a name on their PATH, or a path on their machine).
    pub iolab: String,
}

/// Quotes a word for a POSIX shell.
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn unix_now_s() -> f64 {
    merge::unix_ns(SystemTime::now()) as f64 / 1e9
}

impl Agents {
    fn ssh(&self, dest: &str, remote: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-T"]);
        if let Some(cfg) = &self.ssh_config {
            cmd.arg("-F").arg(cfg);
        }
        cmd.arg("--").arg(dest).arg(remote);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Reaches every host once: its clock and its iolab. The first that fails ends it, named.
    pub fn connect(
        hosts: Vec<AgentHost>,
        ssh_config: Option<PathBuf>,
        iolab: String,
    ) -> anyhow::Result<Agents> {
        let mut agents = Agents {
            hosts,
            offsets: Vec::new(),
            ssh_config,
            iolab,
        };
        // The clock is read over an open session, a line at a time, so the handshake does
        // not count; of a few readings the one with the shortest round trip is kept.
        let remote = format!(
            "{} --version >/dev/null || exit 127; for i in 1 2 3 4 5 6 7 8; do read x || exit 0; date +%s.%N; done",
            sh_quote(&agents.iolab)
        );
        for h in &agents.hosts {
            let mut child = agents
                .ssh(&h.dest, &remote)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("cannot run ssh (is OpenSSH's client installed?)")?;
            let mut best: Option<(f64, f64)> = None;
            if let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) {
                let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
                for _ in 0..8 {
                    let before = unix_now_s();
                    if std::io::Write::write_all(&mut stdin, b"\n").is_err() {
                        break;
                    }
                    let Some(Ok(line)) = lines.next() else {
                        break;
                    };
                    let after = unix_now_s();
                    let Ok(theirs) = line.trim().parse::<f64>() else {
                        break;
                    };
                    let rtt = after - before;
                    if best.is_none_or(|(r, _)| rtt < r) {
                        best = Some((rtt, theirs - (before + after) / 2.0));
                    }
                }
            }
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            let status = child.wait()?;
            let why = stderr
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string();
            match best {
                Some((_, offset)) if status.success() => agents.offsets.push(offset),
                _ if status.code() == Some(127) => anyhow::bail!(
                    "agent {}: cannot run {} there (--agent-iolab): {why}",
                    h.dest,
                    agents.iolab
                ),
                _ => anyhow::bail!(
                    "agent {} unreachable: {}",
                    h.dest,
                    if why.is_empty() {
                        format!("ssh exited with {status}")
                    } else {
                        why
                    }
                ),
            }
        }
        Ok(agents)
    }

    /// The name an agent's files and its summary carry.
    pub fn name(&self, i: usize) -> String {
        let host: String = self.hosts[i]
            .dest
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("a{i}-{host}")
    }

    /// Runs `load` on every agent, the rate and connections split between them, one start
    /// time for all; their files land in `dir/NAME/`; returns the merged run.
    pub fn run(&self, load: &LoadConfig, dir: &Path) -> anyhow::Result<LoadReport> {
        let n = self.hosts.len();
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let start_at = unix_now_s() + (LEAD + load.warmup).as_secs_f64();
        let mut children: Vec<std::process::Child> = Vec::with_capacity(n);
        for (i, h) in self.hosts.iter().enumerate() {
            let connections = load.connections / n + usize::from(i < load.connections % n);
            // The start on the agent's own clock.
            let theirs = start_at + self.offsets.get(i).copied().unwrap_or(0.0);
            let args = self.load_args(load, i, connections.max(1), theirs);
            let quoted: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
            let remote = format!(
                "d=$(mktemp -d) || exit 1; {} {} --json \"$d/run.json\" --quiet >\"$d/load.txt\" 2>&1; rc=$?; \
                 tar -C \"$d\" -cf - . ; rm -rf \"$d\"; exit $rc",
                sh_quote(&self.iolab),
                quoted.join(" ")
            );
            let child = self
                .ssh(&h.dest, &remote)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("cannot run ssh")?;
            children.push(child);
        }
        // Each agent's output is read on threads of its own (a full stderr pipe must not stall
        // its stdout), and no agent may take longer than its run could: a hung ssh is killed.
        let readers: Vec<_> = children
            .iter_mut()
            .map(|child| {
                let out = child.stdout.take();
                let err = child.stderr.take();
                (
                    std::thread::spawn(move || {
                        let mut tar = Vec::new();
                        if let Some(mut out) = out {
                            let _ = out.read_to_end(&mut tar);
                        }
                        tar
                    }),
                    std::thread::spawn(move || {
                        let mut text = String::new();
                        if let Some(mut err) = err {
                            let _ = err.read_to_string(&mut text);
                        }
                        text
                    }),
                )
            })
            .collect();
        let allowed = (start_at - unix_now_s()).max(0.0)
            + (load.duration + load.drain_timeout + AGENT_SLACK).as_secs_f64();
        let deadline = std::time::Instant::now() + Duration::from_secs_f64(allowed);
        let mut statuses = Vec::with_capacity(n);
        for (i, child) in children.iter_mut().enumerate() {
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break Some(status);
                }
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            match status {
                Some(s) => statuses.push(s),
                None => {
                    for c in children.iter_mut() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    anyhow::bail!(
                        "agent {} did not finish within {allowed:.0} s of being started (its ssh was killed)",
                        self.hosts[i].dest
                    );
                }
            }
        }
        let mut runs = Vec::with_capacity(n);
        let mut failure = None;
        for (i, ((out, err), status)) in readers.into_iter().zip(statuses).enumerate() {
            let name = self.name(i);
            let tar = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            let got = (|| -> anyhow::Result<AgentRun> {
                if status.code() == Some(255) {
                    anyhow::bail!("ssh failed: {}", stderr.lines().last().unwrap_or("").trim());
                }
                let here = dir.join(&name);
                std::fs::create_dir_all(&here)?;
                let mut untar = Command::new("tar")
                    .arg("-xf")
                    .arg("-")
                    .arg("-C")
                    .arg(&here)
                    .stdin(Stdio::piped())
                    .spawn()
                    .context("cannot run tar")?;
                if let Some(mut stdin) = untar.stdin.take() {
                    std::io::Write::write_all(&mut stdin, &tar)?;
                }
                if !untar.wait()?.success() {
                    anyhow::bail!("its files did not come back (ssh exited with {status})");
                }
                let json = here.join("run.json");
                if !json.exists() {
                    let said = std::fs::read_to_string(here.join("load.txt")).unwrap_or_default();
                    anyhow::bail!(
                        "its load wrote no summary: {}",
                        said.lines()
                            .rfind(|l| !l.trim().is_empty())
                            .unwrap_or("no message")
                    );
                }
                AgentRun::read(&json)
            })();
            match got {
                Ok(run) => runs.push(run),
                Err(e) => {
                    failure.get_or_insert(e.context(format!("agent {}", self.hosts[i].dest)));
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        merge::merge(&runs, merge::DEFAULT_MAX_SKEW)
    }

    /// The `iolab load` arguments of agent `i`'s share of `load`.
    fn load_args(&self, load: &LoadConfig, i: usize, connections: usize, start_at: f64) -> Vec<String> {
        let n = self.hosts.len() as f64;
        let h = &self.hosts[i];
        let dur = |d: Duration| format!("{}us", d.as_micros());
        let mut a: Vec<String> = vec![
            "load".into(),
            "--addr".into(),
            load.addr.to_string(),
            "--rate".into(),
            format!("{}", load.rate / n),
            "--duration".into(),
            dur(load.duration),
            "--warmup".into(),
            dur(load.warmup),
            "--connections".into(),
            connections.to_string(),
            "--request-size".into(),
            load.request_size.to_string(),
            "--reply".into(),
            load.reply.to_string(),
            "--work".into(),
            load.work.to_string(),
            "--seed".into(),
            load.seed.to_string(),
            "--agent".into(),
            self.name(i),
            "--start-at".into(),
            format!("{start_at:.6}"),
            "--clock-offset".into(),
            format!("{:.6}", self.offsets.get(i).copied().unwrap_or(0.0)),
            "--ks-timescale".into(),
            dur(load.ks_timescale),
            "--ks-resolution".into(),
            dur(load.ks_resolution),
        ];
        if let Some(d) = load.log_interval {
            a.extend(["--log-interval".into(), dur(d)]);
        }
        if !h.cpus.is_empty() {
            let list: Vec<String> = h.cpus.iter().map(usize::to_string).collect();
            a.extend([
                "--pin".into(),
                list.join(","),
                "--threads".into(),
                h.cpus.len().to_string(),
            ]);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_files_parse_and_bad_lines_are_named() {
        let hosts =
            parse_agents("# load machines\nroot@10.0.0.2:1\n\nlg-3   # an ssh alias\nuser@[fd00::2]:0-1\n")
                .unwrap();
        assert_eq!(
            hosts,
            vec![
                AgentHost {
                    dest: "root@10.0.0.2".into(),
                    cpus: vec![1]
                },
                AgentHost {
                    dest: "lg-3".into(),
                    cpus: vec![]
                },
                AgentHost {
                    dest: "user@fd00::2".into(),
                    cpus: vec![0, 1]
                },
            ]
        );
        let err = parse_agents("ok\n-oProxyCommand=x\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let err = parse_agents("host:abc\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("cpus"), "{err}");
        assert!(parse_agents("# nobody\n").is_err());
    }

    #[test]
    fn shell_words_survive_quoting() {
        assert_eq!(sh_quote("load"), "load");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
