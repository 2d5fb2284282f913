#!/usr/bin/env python3
"""Headline figures, measured as medians of interleaved repeats and compared with a baseline.

Each figure is one small, fixed experiment (server pinned to one CPU, load to the other):

  shm_800k_p99_us       shm echo, 64 connections, 800k rps offered, server --shm-spin 10s
  shm_1600k_p99_us      the same at 1.6M rps
  shm_1k_p50_us         shm echo at 1k rps with the server's default flags (no tuning)
  shm_1k_cpu_us         the shm server's CPU per request at 1k rps, default flags
  echo_epoll_p99_us     64 B echo over TCP, 64 connections, 20k rps, epoll
  echo_uring_p99_us     the same, uring
  echo_epoll_cpu_us     server CPU per request in that run (utime + stime / completed)
  echo_uring_cpu_us     the same, uring
  http_epoll_wrk_rps    wrk -t1 -c64 on a 1 KiB page served by epoll (closed loop)
  generator_max_tcp_rps the highest rate of a ladder the generator still offers validly to
                        epoll (achieved within 1%, no errors, send-lag p99 <= 200 us,
                        busy <= 90%)
  rss_idle_epoll_B      server RSS per idle connection, 5,000 idle connections, epoll
  rss_idle_uring_B      the same, uring

Each repeat runs every figure once, in an order rotated from one repeat to the next (and with
--against, the two binaries alternate which goes first), so a slow stretch of the machine
lands on different figures each time. The verdict compares the median with the baseline by
the figure's own tolerance (kept in the baseline file, widened for the noisy ones): `ok`
inside it, `better` or `WORSE` outside it. A figure whose runs were not valid (errors, or the
offered rate not achieved) says so instead of a number.

Timings belong here and in sweeps, never in tests: this is not run by CI.
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = os.environ.get("SERVER_CPU", "0")
LOAD_CPU = os.environ.get("LOAD_CPU", "1")

# name: (unit, which way is better, default tolerance as a ratio)
FIGURES = {
    "shm_800k_p99_us": ("us", "lower", 1.0),
    "shm_1600k_p99_us": ("us", "lower", 1.0),
    "shm_1k_p50_us": ("us", "lower", 0.5),
    "shm_1k_cpu_us": ("us", "lower", 0.5),
    "echo_epoll_p99_us": ("us", "lower", 1.0),
    "echo_uring_p99_us": ("us", "lower", 1.0),
    "echo_epoll_cpu_us": ("us", "lower", 0.3),
    "echo_uring_cpu_us": ("us", "lower", 0.3),
    "http_epoll_wrk_rps": ("req/s", "higher", 0.25),
    "generator_max_tcp_rps": ("rps", "higher", 0.25),
    "rss_idle_epoll_B": ("B", "lower", 0.15),
    "rss_idle_uring_B": ("B", "lower", 0.15),
}


class Invalid(Exception):
    """A run that measured nothing trustworthy (errors, rate not achieved, no server)."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Server:
    """`iolab serve` pinned to SERVER_CPU; started, waited for, stopped."""

    def __init__(self, binary, args, out_dir, tag):
        self.out = open(out_dir / f"{tag}.serve.log", "w")
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, str(binary), "serve", *args],
            stdout=subprocess.PIPE, stderr=self.out, text=True)
        self.endpoint = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.match(r"listening on (\S+)", line)
            if m:
                self.endpoint = m.group(1)
                break
        if self.endpoint is None:
            self.stop()
            raise Invalid(f"the server ({' '.join(args)}) did not start; see {self.out.name}")

    def cpu_s(self):
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise Invalid("no VmRSS")

    def open_fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


_QUIET_FLAGS = {}


def quiet_flags(binary):
    """`--watch-cpus none` where the binary has it: the stall canaries wake on every CPU each
    millisecond, which near a generator's limit moves p50 and p99 by itself (measured: shm at
    800k rps, p50 28-131 us without them, 88-172 us with). A figure measures the I/O path,
    not the probe; older binaries have no canaries."""
    if binary not in _QUIET_FLAGS:
        help_text = subprocess.run([str(binary), "load", "--help"], capture_output=True, text=True).stdout
        _QUIET_FLAGS[binary] = ["--watch-cpus", "none"] if "--watch-cpus" in help_text else []
    return _QUIET_FLAGS[binary]


def load(binary, args, out_dir, tag):
    """`iolab load` pinned to LOAD_CPU; returns its JSON summary."""
    args = [*quiet_flags(binary), *args]
    path = out_dir / f"{tag}.json"
    with open(out_dir / f"{tag}.load.log", "w") as out:
        subprocess.run(["taskset", "-c", LOAD_CPU, str(binary), "load", *args, "--json", str(path)],
                       stdout=out, stderr=subprocess.STDOUT, timeout=120)
    if not path.exists():
        raise Invalid(f"the load wrote no summary; see {out_dir / (tag + '.load.log')}")
    return json.loads(path.read_text())


def achieved(summary, what):
    if summary.get("error"):
        raise Invalid(f"{what}: {summary['error']}")
    if summary["errors"] > 0:
        raise Invalid(f"{what}: {summary['errors']} errors")
    if summary["achieved_rps"] < 0.99 * summary["offered_rps"]:
        raise Invalid(f"{what}: achieved {summary['achieved_rps']:.0f} of {summary['offered_rps']:.0f} rps")
    return summary


def shm_run(binary, out_dir, tag, rate, serve_flags):
    name = f"bench{os.getpid()}{tag.replace('.', '')}"[:60]
    server = Server(binary, ["--engine", "shm", "--shm", name, *serve_flags], out_dir, tag)
    try:
        cpu0 = server.cpu_s()
        s = load(binary, ["--transport", "shm", "--shm", name, "--rate", str(rate), "--duration", "3s",
                          "--warmup", "1s", "--connections", "64"], out_dir, tag)
        cpu = server.cpu_s() - cpu0
    finally:
        server.stop()
    return achieved(s, f"shm at {rate} rps"), cpu


def echo_run(binary, out_dir, tag, engine):
    server = Server(binary, ["--engine", engine, "--addr", "127.0.0.1:0", "--quiet"], out_dir, tag)
    try:
        cpu0 = server.cpu_s()
        s = load(binary, ["--addr", server.endpoint, "--rate", "20000", "--duration", "3s", "--warmup", "1s",
                          "--connections", "64"], out_dir, tag)
        cpu = server.cpu_s() - cpu0
    finally:
        server.stop()
    achieved(s, f"{engine} echo")
    # The server's CPU over the whole load (warm-up included) per request it answered.
    return s, cpu / max(1, s["completed"] + round(s["achieved_rps"] * s["warmup_s"]))


def fig_shm_p99(rate):
    def run(binary, out_dir, tag):
        s, _ = shm_run(binary, out_dir, tag, rate, ["--shm-spin", "10s"])
        return s["latency_us"]["p99"]
    return run


def shm_1k(binary, out_dir, tag):
    s, cpu = shm_run(binary, out_dir, tag, 1000, [])
    return s["latency_us"]["p50"], cpu * 1e6 / max(1, s["completed"] + round(s["achieved_rps"] * s["warmup_s"]))


def fig_echo(engine, what):
    def run(binary, out_dir, tag):
        s, cpu_per_req = echo_run(binary, out_dir, tag, engine)
        return s["latency_us"]["p99"] if what == "p99" else cpu_per_req * 1e6
    return run


def fig_http_epoll_wrk_rps(binary, out_dir, tag):
    corpus = out_dir / "corpus"
    if not (corpus / "paths.txt").exists():
        subprocess.run([str(binary), "corpus", "--out", str(corpus)], check=True, stdout=subprocess.DEVNULL)
    server = Server(binary, ["--engine", "epoll", "--protocol", "http", "--root", str(corpus),
                             "--addr", "127.0.0.1:0", "--quiet"], out_dir, tag)
    try:
        out = subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c64", "-d3s",
                              f"http://{server.endpoint}/one-kib.html"],
                             capture_output=True, text=True, timeout=60).stdout
    finally:
        server.stop()
    (out_dir / f"{tag}.wrk").write_text(out)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or "Non-2xx" in out or "Socket errors" in out:
        raise Invalid(f"wrk: {out.strip().splitlines()[-1] if out.strip() else 'no output'}")
    return float(m.group(1))


LADDER = [50_000, 75_000, 100_000, 125_000, 150_000, 175_000, 200_000, 250_000, 300_000]


def fig_generator_max_tcp_rps(binary, out_dir, tag):
    server = Server(binary, ["--engine", "epoll", "--addr", "127.0.0.1:0", "--quiet"], out_dir, tag)
    best = 0
    try:
        for rate in LADDER:
            s = load(binary, ["--addr", server.endpoint, "--rate", str(rate), "--duration", "1s",
                              "--warmup", "300ms", "--connections", "64"], out_dir, f"{tag}.{rate}")
            valid = (not s.get("error") and s["errors"] == 0
                     and s["achieved_rps"] >= 0.99 * s["scheduled_rps"]
                     and s["send_lag_us"]["p99"] <= 200 and s["generator_busy"] <= 0.9)
            if not valid:
                break
            best = rate
    finally:
        server.stop()
    if best == 0:
        raise Invalid("not even the ladder's first rate was valid")
    return best


def settled_rss(server):
    """The server's RSS once it has stopped moving (three equal samples 100 ms apart, 5 s at most)."""
    samples = [server.rss_bytes()]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (len(samples) >= 3 and len(set(samples[-3:])) == 1):
        time.sleep(0.1)
        samples.append(server.rss_bytes())
    return samples[-1]


def fig_rss_idle(engine):
    idle = 5000

    def run(binary, out_dir, tag):
        server = Server(binary, ["--engine", engine, "--addr", "127.0.0.1:0", "--quiet"], out_dir, tag)
        try:
            # The loop sets itself up (buffer rings are faulted in) after it says it listens:
            # one connection through it, then RSS settled, is the before.
            host, port = server.endpoint.rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=5).close()
            before = settled_rss(server)
            fds_before = server.open_fds()
            proc = subprocess.Popen(
                # One request a second on one connection keeps the run going; the rest are idle.
                ["taskset", "-c", LOAD_CPU, str(binary), "load", "--addr", server.endpoint, "--rate", "1",
                 "--connections", "1", "--idle-connections", str(idle), "--duration", "6s",
                 "--connect", "concurrent"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            while server.open_fds() < fds_before + idle and time.monotonic() < deadline:
                time.sleep(0.05)
            if server.open_fds() < fds_before + idle:
                proc.kill()
                raise Invalid(f"only {server.open_fds() - fds_before} of {idle} idle connections arrived")
            after = settled_rss(server)
            proc.wait(timeout=60)
        finally:
            server.stop()
        return (after - before) / (idle + 1)
    return run


def figures_of(binary_runs):
    """Every figure's function. Some run once and yield two figures (kept in a cache)."""
    cache = {}

    def once(key, fn):
        def run(binary, out_dir, tag):
            # One run per binary and repeat (the tag ends in the repeat: "label.figure.rN").
            k = (key, str(binary), tag.rsplit(".", 1)[1])
            if k not in cache:
                cache[k] = fn(binary, out_dir, tag)
            return cache[k]
        return run

    shm1k = once("shm1k", shm_1k)
    return {
        "shm_800k_p99_us": fig_shm_p99(800_000),
        "shm_1600k_p99_us": fig_shm_p99(1_600_000),
        "shm_1k_p50_us": lambda b, o, t: shm1k(b, o, t)[0],
        "shm_1k_cpu_us": lambda b, o, t: shm1k(b, o, t)[1],
        "echo_epoll_p99_us": fig_echo("epoll", "p99"),
        "echo_uring_p99_us": fig_echo("uring", "p99"),
        "echo_epoll_cpu_us": fig_echo("epoll", "cpu"),
        "echo_uring_cpu_us": fig_echo("uring", "cpu"),
        "http_epoll_wrk_rps": fig_http_epoll_wrk_rps,
        "generator_max_tcp_rps": fig_generator_max_tcp_rps,
        "rss_idle_epoll_B": fig_rss_idle("epoll"),
        "rss_idle_uring_B": fig_rss_idle("uring"),
    }


def build(rev, log_to):
    """The release binary of this checkout, or of `rev` built in a worktree beside it."""
    if rev is None:
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True, stdout=log_to)
        return ROOT / "target/release/iolab"
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = ROOT / "target/bench-rev" / sha
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT, check=True,
                       stdout=log_to, stderr=log_to)
    log(f"building {rev} ({sha}) in {tree}")
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=tree, check=True, stdout=log_to,
                   env={**os.environ, "CARGO_TARGET_DIR": str(ROOT / f"target/bench-rev/target-{sha}")})
    return ROOT / f"target/bench-rev/target-{sha}/release/iolab"


def fmt(v, unit):
    if v is None:
        return "invalid"
    if unit in ("rps", "req/s", "B"):
        return f"{v:,.0f}"
    return f"{v:,.1f}" if v >= 10 else f"{v:.2f}"


def summarize(values):
    ok = [v for v in values if v is not None]
    if not ok:
        return None, None, None
    return statistics.median(ok), min(ok), max(ok)


def verdict(name, now, base, tolerance):
    if now is None:
        return "invalid"
    if base is None:
        return "no baseline"
    if base == 0:
        return "ok"
    better = FIGURES[name][1]
    ratio = now / base
    if better == "lower":
        return "WORSE" if ratio > 1 + tolerance else "better" if ratio < 1 / (1 + tolerance) else "ok"
    return "WORSE" if ratio < 1 / (1 + tolerance) else "better" if ratio > 1 + tolerance else "ok"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3, help="interleaved repeats per figure (default 3)")
    p.add_argument("--only", help="comma-separated figure names (default: all)")
    p.add_argument("--against", metavar="REV",
                   help="also measure the binary of git revision REV, interleaved, and compare the two")
    p.add_argument("--baseline", default=str(ROOT / "docs/baseline.json"), help="default docs/baseline.json")
    p.add_argument("--write-baseline", action="store_true",
                   help="store these medians as the new baseline (keeps each figure's tolerance)")
    p.add_argument("--out", help="where every run's raw output goes (default: a fresh /tmp folder)")
    p.add_argument("--cpu-idle", choices=("awake", "os"), default="awake",
                   help="awake (default): hold idle CPUs out of their halt for the whole run, for both "
                        "binaries alike, as `iolab load` does since 3 December (an older binary would "
                        "not); os: leave them to the kernel")
    a = p.parse_args()
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    names = list(FIGURES) if not a.only else [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        p.error(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    for tool in ("taskset", "wrk") if "http_epoll_wrk_rps" in names else ("taskset",):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not installed (apt-get install {'util-linux' if tool == 'taskset' else tool})")
    out_dir = Path(a.out or tempfile.mkdtemp(prefix="iolab-bench."))
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "build.log", "w") as build_log:
        binaries = {"now": build(None, build_log)}
        if a.against:
            binaries[a.against] = build(a.against, build_log)
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    except (ValueError, OSError):
        pass
    # Held here, for the whole run, so that both binaries of an A/B are measured alike: the
    # kernel's CPU-latency QoS stays at 0 while this file is open.
    awake = None
    if a.cpu_idle == "awake":
        try:
            awake = open("/dev/cpu_dma_latency", "wb", buffering=0)
            awake.write((0).to_bytes(4, sys.byteorder, signed=True))
        except OSError as e:
            log(f"cannot hold the CPUs awake (/dev/cpu_dma_latency: {e.strerror}); they may halt")
            awake = None
    idle_words = "idle CPUs held awake" if awake else "idle CPUs left to the kernel"
    funcs = figures_of(binaries)
    results = {label: {n: [] for n in names} for label in binaries}
    why = {label: {n: [] for n in names} for label in binaries}
    log(f"server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}, {idle_words}; {a.repeat} repeats of {len(names)} figures"
        f" x {len(binaries)} binaries; raw output in {out_dir}")
    started = time.monotonic()
    for r in range(a.repeat):
        order = names[r % len(names):] + names[:r % len(names)]
        labels = list(binaries) if r % 2 == 0 else list(binaries)[::-1]
        for i, name in enumerate(order):
            for label in labels:
                tag = f"{label.replace('/', '_')}.{name}.r{r}"
                try:
                    v = funcs[name](binaries[label], out_dir, tag)
                except (Invalid, subprocess.SubprocessError, OSError, KeyError, ValueError) as e:
                    v = None
                    why[label][name].append(str(e))
                results[label][name].append(v)
                log(f"  [{time.monotonic() - started:6.0f} s] repeat {r + 1}/{a.repeat}, "
                    f"{i + 1}/{len(order)} {name} ({label}): {fmt(v, FIGURES[name][0])}")
    baseline = {}
    if Path(a.baseline).exists():
        baseline = json.loads(Path(a.baseline).read_text()).get("figures", {})
    print(f"\nmedian [min-max] of {a.repeat} interleaved repeats; server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU},"
          f" {idle_words}")
    print(f"verdict: the median against {Path(a.baseline).name} within each figure's tolerance\n")
    cols = list(binaries)
    head = f"{'figure':<23} {'unit':<6} {'baseline':>10} " + " ".join(f"{c[:24]:>26}" for c in cols)
    head += f" {'ratio':>6} {'tolerance':>9}  verdict"
    print(head)
    worse = False
    medians = {}
    for name in names:
        unit = FIGURES[name][0]
        b = baseline.get(name, {})
        tol = b.get("tolerance", FIGURES[name][2])
        cells = []
        for label in cols:
            med, lo, hi = summarize(results[label][name])
            medians.setdefault(label, {})[name] = med
            cells.append("invalid" if med is None else f"{fmt(med, unit)} [{fmt(lo, unit)}-{fmt(hi, unit)}]")
        now = medians["now"][name]
        v = verdict(name, now, b.get("value"), tol)
        worse |= v == "WORSE"
        ratio = f"{now / b['value']:.2f}" if now is not None and b.get("value") else "-"
        print(f"{name:<23} {unit:<6} {fmt(b.get('value'), unit) if b else '-':>10} "
              + " ".join(f"{c:>26}" for c in cells) + f" {ratio:>6} {'x' + format(1 + tol, '.2f'):>9}  {v}")
    for label in cols:
        for name in names:
            if why[label][name]:
                print(f"  {label} {name}: {len(why[label][name])} invalid run(s): {why[label][name][0]}")
    if a.against:
        print(f"\nnow / {a.against} (medians):")
        for name in names:
            n, o = medians["now"][name], medians[a.against][name]
            if n is not None and o:
                print(f"  {name:<23} {n / o:6.2f}")
    if a.write_baseline:
        stored = {"measured": time.strftime("%Y-%m-%d"), "command": f"scripts/bench.sh --repeat {a.repeat}",
                  "machine": f"{os.cpu_count()} CPUs; server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}, {idle_words}",
                  "rule": "WORSE when the median is beyond the baseline by more than the figure's tolerance "
                          "(a ratio: x2.0 for tolerance 1.0) in the figure's bad direction",
                  "figures": {}}
        for name in names:
            old = baseline.get(name, {})
            med, lo, hi = summarize(results["now"][name])
            stored["figures"][name] = {"value": med, "min": lo, "max": hi, "unit": FIGURES[name][0],
                                       "better": FIGURES[name][1],
                                       "tolerance": old.get("tolerance", FIGURES[name][2])}
        for name, old in baseline.items():
            stored["figures"].setdefault(name, old)
        Path(a.baseline).write_text(json.dumps(stored, indent=2) + "\n")
        print(f"\nbaseline written to {a.baseline}")
    sys.exit(1 if worse else 0)


if __name__ == "__main__":
    main()
