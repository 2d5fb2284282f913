//! Load agents on several "hosts": network namespaces joined by a bridge, each agent's running
//! a real OpenSSH server. `sweep --agents` drives them over ssh as it would real machines;
//! the merged figures are checked against the agents' own files, read here independently.

mod common;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

const BIN: &str = env!("CARGO_BIN_EXE_iolab");

/// Three namespaces (the server's, holding a bridge, and two agents' on veth pairs into it),
/// an sshd in each agent's; all of it gone on drop.
struct Hosts {
    server_ns: String,
    agent_ns: Vec<String>,
    sshd: Vec<Child>,
    dir: PathBuf,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a set-up command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Hosts {
    fn agent_addr(k: usize) -> String {
        format!("10.79.0.{}", k + 2)
    }

    /// `tag` keeps two tests' hosts apart (the subnet repeats, inside each one's namespaces).
    fn make(tag: &str) -> Hosts {
        let pid = std::process::id();
        let dir = common::scratch_dir(&format!("agents-{tag}"));
        let server_ns = format!("iolab-as{pid}-{tag}");
        let agent_ns: Vec<String> = (0..2).map(|k| format!("iolab-a{k}-{pid}-{tag}")).collect();
        let mut hosts = Hosts {
            server_ns: server_ns.clone(),
            agent_ns: Vec::new(),
            sshd: Vec::new(),
            dir: dir.clone(),
        };
        ip(&["netns", "add", &server_ns]);
        let s = server_ns.as_str();
        ip(&["-n", s, "link", "set", "lo", "up"]);
        ip(&["-n", s, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", s, "addr", "add", "10.79.0.1/24", "dev", "br0"]);
        ip(&["-n", s, "link", "set", "br0", "up"]);
        for (k, ns) in agent_ns.iter().enumerate() {
            ip(&["netns", "add", ns]);
            hosts.agent_ns.push(ns.clone());
            let veth = format!("v{k}");
            ip(&[
                "-n", s, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            ip(&["-n", s, "link", "set", &veth, "master", "br0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", Hosts::agent_addr(k)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        // Keys and configurations: a host key, a client key it authorises, an ssh config.
        let key = |name: &str| {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(name)));
        };
        key("host_key");
        key("id");
        std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        std::fs::write(
            dir.join("ssh_config"),
            format!(
                "Host *\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  \
                 UserKnownHostsFile /dev/null\n  LogLevel ERROR\n",
                dir.join("id").display()
            ),
        )
        .unwrap();
        for (k, ns) in agent_ns.iter().enumerate() {
            let conf = dir.join(format!("sshd_config_{k}"));
            std::fs::write(
                &conf,
                format!(
                    "ListenAddress {}\nPort 22\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                     PidFile {}\n",
                    Hosts::agent_addr(k),
                    dir.join("host_key").display(),
                    dir.join("authorized_keys").display(),
                    dir.join(format!("sshd_{k}.pid")).display()
                ),
            )
            .unwrap();
            let mut sshd = Command::new("ip")
                .args(["netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e", "-f"])
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start sshd");
            // Ready when it says it listens (bounded: a dead sshd closes the pipe at once).
            let stderr = sshd.stderr.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            hosts.sshd.push(sshd);
            let mut said = Vec::new();
            loop {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(line) if line.contains("Server listening") => break,
                    Ok(line) => said.push(line),
                    Err(_) => panic!("sshd in {ns} did not start: {said:?}"),
                }
            }
        }
        hosts
    }

    fn agents_file(&self, hosts: &[String]) -> PathBuf {
        let path = self.dir.join(format!("agents-{}.txt", hosts.len()));
        let lines: Vec<String> = hosts.iter().map(|h| format!("root@{h}:1\n")).collect();
        std::fs::write(&path, format!("# the agents\n{}", lines.concat())).unwrap();
        path
    }

    /// `iolab sweep` as the server's machine runs it: inside the server's namespace.
    fn sweep(&self, agents: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.server_ns,
                BIN,
                "sweep",
                "--engines",
                "epoll",
            ])
            .args(["--agents"])
            .arg(agents)
            .args(["--ssh-config"])
            .arg(self.dir.join("ssh_config"))
            .args(["--agent-iolab", BIN, "--server-addr", "10.79.0.1:0"])
            .args(extra)
            .arg("--out")
            .arg(out)
            .output()
            .expect("run iolab sweep")
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for s in &mut self.sshd {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in self.agent_ns.iter().chain([&self.server_ns]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `iolab load` against `addr` with these options, its canaries off (the tests check what it
/// writes, not the machine's stalls).
fn load_command(addr: &str, args: &[&str]) -> Command {
    let mut load = Command::new(BIN);
    load.args(["load", "--addr", addr, "--watch-cpus", "none"])
        .args(args);
    load
}

/// The histograms of a load's HdrHistogram log with this tag, added up: read here with the
/// hdrhistogram crate alone, not with iolab's merge.
fn tagged(path: &Path, tag: &str) -> Histogram<u64> {
    use base64::Engine as _;
    let bytes = std::fs::read(path).unwrap();
    let mut total = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
    for entry in IntervalLogIterator::new(&bytes) {
        if let Ok(LogEntry::Interval(i)) = entry {
            if i.tag().map(|t| t.as_str()) == Some(tag) {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(i.encoded_histogram())
                    .unwrap();
                let h: Histogram<u64> = Deserializer::new().deserialize(&mut raw.as_slice()).unwrap();
                total.add(&h).unwrap();
            }
        }
    }
    total
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_sweep_over_ssh_agents_merges_their_runs_exactly() {
    if !common::netns_available_or_skip() {
        return;
    }
    if !Path::new("/usr/sbin/sshd").exists() {
        common::missing_tool("OpenSSH's server (/usr/sbin/sshd)");
        return;
    }
    let hosts = Hosts::make("sweep");
    let out = hosts.dir.join("results");
    let agents = hosts.agents_file(&[Hosts::agent_addr(0), Hosts::agent_addr(1)]);
    let swept = hosts.sweep(
        &agents,
        &out,
        &[
            &common::CHECKS_NOISE_CANNOT_FAIL[..],
            &[
                "--rates",
                "400,800",
                "--duration",
                "1s",
                "--warmup",
                "300ms",
                "--connections",
                "8",
                "--repeat",
                "1",
                "--server-cpus",
                "0",
                // An SLO no run misses: the test checks the merge, not the machine's mood.
                "--slo",
                "60s",
            ],
        ]
        .concat(),
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&swept.stdout),
        String::from_utf8_lossy(&swept.stderr)
    );
    assert!(swept.status.success(), "{said}");
    let meta = json(&out.join("meta.json"));
    assert_eq!(
        meta["agents"],
        serde_json::json!(["root@10.79.0.2", "root@10.79.0.3"]),
        "{meta}"
    );
    let rows = iolab::lab::results::read_points(&out).unwrap();
    assert_eq!(rows.len(), 2, "{said}");
    for row in &rows {
        let merged = json(&out.join(&row.summary));
        let parts = merged["agents"]
            .as_array()
            .expect("a merged point lists its agents");
        assert_eq!(parts.len(), 2, "{merged}");
        let mut all = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        let (mut completed, mut sent) = (0, 0);
        let mut starts = Vec::new();
        for part in parts {
            let agent_json = PathBuf::from(part["json"].as_str().unwrap());
            let agent = json(&agent_json);
            completed += agent["completed"].as_u64().unwrap();
            sent += agent["sent"].as_u64().unwrap();
            let hlog = agent_json.with_file_name(agent["agent"]["hdr_log"].as_str().unwrap());
            let own = tagged(&hlog, "latency");
            assert_eq!(own.len(), agent["completed"].as_u64().unwrap(), "{agent}");
            all.add(&own).unwrap();
            let start = agent["agent"]["start_at_unix_s"].as_f64().unwrap();
            let offset = agent["agent"]["clock_offset_s"]
                .as_f64()
                .expect("the sweep measured the offset");
            // One machine, one clock: the measured offset is small.
            assert!(offset.abs() < 0.05, "clock offset {offset} s on one machine");
            let first = agent["agent"]["first_scheduled_unix_s"].as_f64().unwrap();
            // The first measured send is one exponential gap (mean 1/200 s at most) after the
            // common start; 100 ms is twenty means.
            assert!(
                (0.0..0.1).contains(&(first - start)),
                "first send {:.6} s after the start",
                first - start
            );
            starts.push(start - offset);
            // The agents' arrivals were independent: each its own seed.
            assert_eq!(agent["agent"]["name"], part["name"]);
        }
        // One start per point on the sweep's clock, each agent told it on its own.
        assert!(
            (starts[0] - starts[1]).abs() < 1e-5,
            "one start time per point: {starts:?}"
        );
        let seeds: Vec<_> = parts
            .iter()
            .map(|p| json(Path::new(p["json"].as_str().unwrap()))["config"]["seed"].clone())
            .collect();
        assert_ne!(seeds[0], seeds[1]);
        assert_eq!(merged["completed"].as_u64().unwrap(), completed, "{merged}");
        assert_eq!(merged["sent"].as_u64().unwrap(), sent);
        assert!(completed > 0);
        assert_eq!(merged["offered_rps"].as_f64().unwrap(), row.offered_rps);
        assert_eq!(merged["config"]["connections"], 8);
        let p99_us = all.value_at_quantile(0.99) as f64 / 1e3;
        assert_eq!(merged["latency_us"]["p99"].as_f64().unwrap(), p99_us, "{merged}");
        assert_eq!(merged["latency_us"]["count"].as_u64().unwrap(), all.len());
        // The arrivals were checked on the merged sends.
        assert!(merged["interarrival"]["ks_n"].as_u64().unwrap() > 0, "{merged}");
    }
}

#[test]
fn an_unreachable_agent_fails_the_sweep_at_once_naming_it() {
    if !common::netns_available_or_skip() {
        return;
    }
    if !Path::new("/usr/sbin/sshd").exists() {
        common::missing_tool("OpenSSH's server (/usr/sbin/sshd)");
        return;
    }
    let hosts = Hosts::make("unreachable");
    let out = hosts.dir.join("results-unreachable");
    // 10.79.0.9 is on the bridge's subnet, and nobody answers there.
    let agents = hosts.agents_file(&[Hosts::agent_addr(0), "10.79.0.9".into()]);
    let swept = hosts.sweep(&agents, &out, &["--rates", "400", "--duration", "1s"]);
    let stderr = String::from_utf8_lossy(&swept.stderr);
    assert!(!swept.status.success());
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.contains("agent root@10.79.0.9 unreachable"), "{stderr}");
    assert!(!out.join("points.csv").exists(), "no point was measured");
}

/// The Kubernetes Indexed Job parses, every `$(VAR)` of its arguments is defined, and the
/// arguments are ones `iolab load` accepts: two agents run them here (values filled in as
/// Kubernetes would, against a local server), and `iolab merge` reads what they wrote.
#[test]
fn the_kubernetes_job_runs_agents_that_merge() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let docs = |file: &str| -> Vec<serde_yaml::Value> {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
            .collect()
    };
    let config = docs("configmap.yaml").remove(0);
    assert_eq!(config["kind"], "ConfigMap");
    let data: std::collections::BTreeMap<String, String> =
        serde_yaml::from_value(config["data"].clone()).expect("string data");
    let job = docs("job.yaml")
        .into_iter()
        .find(|d| d["kind"] == "Job")
        .expect("job.yaml holds a Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(
        spec["parallelism"], spec["completions"],
        "every agent runs at once"
    );
    let container = &spec["template"]["spec"]["containers"][0];
    assert_eq!(container["command"][0], "iolab");
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"], config["metadata"]["name"],
        "the Job reads the ConfigMap"
    );
    let args: Vec<String> = serde_yaml::from_value(container["args"].clone()).unwrap();
    let mut defined: Vec<String> = data.keys().cloned().collect();
    for e in container["env"].as_sequence().unwrap() {
        defined.push(e["name"].as_str().unwrap().to_string());
    }
    for a in &args {
        let mut rest = a.as_str();
        while let Some(at) = rest.find("$(") {
            let name = &rest[at + 2..at + 2 + rest[at + 2..].find(')').unwrap()];
            assert!(
                defined.iter().any(|d| d == name),
                "{a}: $({name}) is defined nowhere"
            );
            rest = &rest[at + 2..];
        }
    }
    assert_eq!(args[0], "load");

    // Run two agents as the Job would, faster and against a server here.
    let (server, addr, stdout) = common::spawn_server(&["--engine".into(), "epoll".into()]);
    let out = common::scratch_dir("k8s");
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 2.0;
    let agents: Vec<_> = (0..2)
        .map(|index| {
            let mut values = data.clone();
            values.insert("SERVER_ADDR".into(), addr.to_string());
            values.insert("RATE_PER_AGENT".into(), "300".into());
            values.insert("DURATION".into(), "1s".into());
            values.insert("WARMUP".into(), "200ms".into());
            values.insert("CONNECTIONS".into(), "4".into());
            values.insert("START_AT".into(), format!("{start:.3}"));
            values.insert("AGENT_INDEX".into(), index.to_string());
            let filled: Vec<String> = args
                .iter()
                .map(|a| {
                    let mut a = a.clone();
                    for (k, v) in &values {
                        a = a.replace(&format!("$({k})"), v);
                    }
                    a.replace("/results/", &format!("{}/", out.display()))
                })
                .collect();
            Command::new(BIN)
                .args(&filled)
                .args(["--watch-cpus", "none"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run the Job's command")
        })
        .collect::<Vec<_>>();
    // All at once, as the Job's parallelism has them.
    let agents: Vec<_> = agents
        .into_iter()
        .map(|a| a.wait_with_output().unwrap())
        .collect();
    let _ = common::terminate(server, stdout);
    for a in &agents {
        assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    }
    let merged = Command::new(BIN)
        .args(["merge", "--json"])
        .arg(out.join("merged.json"))
        .arg(out.join("agent-0.json"))
        .arg(out.join("agent-1.json"))
        .output()
        .unwrap();
    assert!(
        merged.status.success(),
        "{}",
        String::from_utf8_lossy(&merged.stderr)
    );
    let m = json(&out.join("merged.json"));
    let sum: u64 = (0..2)
        .map(|i| {
            json(&out.join(format!("agent-{i}.json")))["completed"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(m["completed"].as_u64().unwrap(), sum);
    assert_eq!(m["agents"].as_array().map(Vec::len), Some(2));
    let _ = std::fs::remove_dir_all(&out);
}

/// What a person gets wrong says so in one line: a start already passed, a plain run given to
/// merge, a start time that is not one.
#[test]
fn agent_mistakes_are_explained() {
    let (server, addr, stdout) = common::spawn_server(&["--engine".into(), "epoll".into()]);
    let dir = common::scratch_dir("agent-mistakes");
    let plain = dir.join("plain.json");
    let addr = addr.to_string();
    let load = |extra: &[&str]| {
        load_command(&addr, &["--rate", "100", "--duration", "200ms"])
            .args(extra)
            .output()
            .unwrap()
    };
    let late = load(&[
        "--agent",
        "a",
        "--start-at",
        "1000000000",
        "--json",
        dir.join("late.json").to_str().unwrap(),
    ]);
    assert!(!late.status.success());
    let err = String::from_utf8_lossy(&late.stderr);
    assert!(err.contains("--start-at passed"), "{err}");
    let bad = load(&["--start-at", "next tuesday"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"));
    assert!(load(&["--json", plain.to_str().unwrap()]).status.success());
    let _ = common::terminate(server, stdout);
    let merged = Command::new(BIN).arg("merge").arg(&plain).output().unwrap();
    assert!(!merged.status.success());
    let err = String::from_utf8_lossy(&merged.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not an agent's run"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two agents' raw requests (their --requests-log) against the merged summary: the merged p99
/// is the p99 of all their requests together, to the histograms' precision (0.1%).
#[test]
fn merged_percentiles_are_those_of_all_requests() {
    let (server, addr, stdout) = common::spawn_server(&["--engine".into(), "epoll".into()]);
    let dir = common::scratch_dir("merge-raw");
    let addr = addr.to_string();
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    // One absolute start for both agents, as a sweep gives them, far enough ahead that two
    // debug binaries starting on a busy CI machine are connected and warmed up before it
    // (a relative "+1s" failed there by 0.18 s, and gave each agent its own start).
    let start_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 4.0;
    let start_at = format!("{start_at:.6}");
    let agents: Vec<_> = ["x", "y"]
        .iter()
        .map(|name| {
            load_command(&addr, &["--rate", "400", "--duration", "1s", "--warmup", "200ms"])
                .args(["--connections", "4", "--start-at", &start_at, "--agent", name])
                .args(["--json", &path(&format!("{name}.json"))])
                .args(["--requests-log", &path(&format!("{name}.csv"))])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for a in agents {
        let out = a.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = common::terminate(server, stdout);
    let merged = Command::new(BIN)
        .args([
            "merge",
            "--json",
            &path("merged.json"),
            &path("x.json"),
            &path("y.json"),
        ])
        .output()
        .unwrap();
    assert!(
        merged.status.success(),
        "{}",
        String::from_utf8_lossy(&merged.stderr)
    );
    let mut latencies: Vec<u64> = Vec::new();
    for name in ["x", "y"] {
        let text = std::fs::read_to_string(dir.join(format!("{name}.csv"))).unwrap();
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = |k: &str| head.iter().position(|h| *h == k).unwrap();
        let (sched, done, ok) = (col("scheduled_ns"), col("done_ns"), col("ok"));
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            if f[ok] == "true" {
                latencies.push(f[done].parse::<u64>().unwrap() - f[sched].parse::<u64>().unwrap());
            }
        }
    }
    latencies.sort_unstable();
    let m = json(&dir.join("merged.json"));
    assert_eq!(
        m["latency_us"]["count"].as_u64().unwrap(),
        latencies.len() as u64,
        "{m}"
    );
    let n = latencies.len();
    let rank = (0.99 * n as f64).ceil() as usize;
    let (low, high) = (latencies[rank.saturating_sub(2)], latencies[(rank).min(n - 1)]);
    let p99_ns = m["latency_us"]["p99"].as_f64().unwrap() * 1e3;
    assert!(
        p99_ns >= low as f64 * 0.999 && p99_ns <= high as f64 * 1.001 + 1e3,
        "merged p99 {p99_ns} ns, all requests' p99 between {low} and {high} ns"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
