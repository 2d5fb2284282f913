//! Where the time goes: a profiled sweep of four engines writes every file and column, its
//! costs tell the I/O models apart by facts that do not depend on timing, the report's
//! section renders in headless Chromium with its flamegraphs, and without perf the sweep and
//! the report go on, saying why.
//!
//! perf is an outside tool: where it cannot run the test says so and passes, except under
//! CI=true, where `.ci/run` installs it and its absence is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use iolab::lab::results::{read_points, read_profiles, Profile};

/// One sweep at a time: profiles measure the machine.
static MACHINE: Mutex<()> = Mutex::new(());

fn iolab(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iolab"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run iolab");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fresh_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iolab-profile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const RATE: &str = "3000";

fn sweep(dir: &Path, engines: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = dir.to_string_lossy().into_owned();
    iolab(
        &[
            "sweep",
            "--engines",
            engines,
            "--rates",
            RATE,
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
            "--repeat",
            "1",
            "--max-tries",
            "1",
            "--connections",
            "64",
            "--profile",
            "--profile-duration",
            "700ms",
            "--quiet-timeout",
            "200ms",
            "--out",
            &dir,
        ],
        env,
    )
}

fn profile_of<'a>(profiles: &'a [Profile], engine: &str) -> &'a Profile {
    profiles
        .iter()
        .find(|p| p.engine == engine)
        .unwrap_or_else(|| panic!("no profile of {engine}"))
}

#[test]
fn a_profiled_sweep_writes_every_file_and_column_and_tells_the_models_apart() {
    let _machine = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(why) = iolab::lab::profile::Perf::probe() {
        return common::skip(&format!("perf cannot run here: {why}"));
    }
    let dir = fresh_dir("four");
    let (ok, out, err) = sweep(&dir, "threads,select,epoll,uring", &[]);
    assert!(ok, "the sweep failed: {err}\n{out}");
    let found = read_profiles(&dir).unwrap();
    assert!(found.unavailable.is_none(), "{:?}", found.unavailable);
    assert_eq!(found.profiles.len(), 4, "{out}");
    let pdir = dir.join("profile");
    for p in &found.profiles {
        assert!(p.note.is_empty(), "{}: {}", p.engine, p.note);
        let stem = Profile::stem(&p.engine, 3000.0);
        for ext in ["json", "svg", "folded"] {
            assert!(
                pdir.join(format!("{stem}.{ext}")).is_file(),
                "{stem}.{ext} missing"
            );
        }
        // The flamegraph is inferno's interactive one: it searches and zooms.
        let svg = std::fs::read_to_string(pdir.join(&p.flamegraph)).unwrap();
        assert!(
            svg.starts_with("<?xml") && svg.contains("function search"),
            "{}",
            p.engine
        );
        // Every request of both runs counted (no warm-up), at the rate asked: 0.7 s at 3000.
        for n in [p.requests_cpu_run, p.requests_perf_run] {
            assert!((1800..=2400).contains(&n), "{}: {n} requests", p.engine);
        }
        assert!(p.syscalls_per_request > 0.5 && p.user_us_per_request + p.kernel_us_per_request > 0.0);
        let named: f64 = p.syscalls.iter().map(|s| s.per_request).sum();
        assert!((named - p.syscalls_per_request).abs() < 1e-6 * p.syscalls_per_request.max(1.0));
        assert!(p.sampled_cpu_ms > 0.0);
        // The server's own frames are there, symbolized.
        let folded = std::fs::read_to_string(pdir.join(&p.folded)).unwrap();
        assert!(
            folded.contains("iolab::engine::"),
            "{}: no iolab frames",
            p.engine
        );
    }
    // The columns of points.csv are the cell's profile.
    // (CSV and JSON may print a float's last digit differently.)
    let same = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
    for row in read_points(&dir).unwrap() {
        let p = profile_of(&found.profiles, &row.engine);
        for (column, profiled) in [
            (row.syscalls_per_request, p.syscalls_per_request),
            (row.context_switches_per_request, p.context_switches_per_request),
            (row.user_us_per_request, p.user_us_per_request),
            (row.kernel_us_per_request, p.kernel_us_per_request),
        ] {
            assert!(
                same(column, profiled),
                "{}: {column} in points.csv, {profiled} profiled",
                row.engine
            );
        }
    }
    let header = std::fs::read_to_string(dir.join("points.csv")).unwrap();
    let header = header.lines().next().unwrap();
    for column in [
        "syscalls_per_request",
        "context_switches_per_request",
        "user_us_per_request",
        "kernel_us_per_request",
    ] {
        assert!(header.split(',').any(|c| c == column), "{column} not in {header}");
    }

    // Facts of the models, whatever the timing.
    let select = profile_of(&found.profiles, "select");
    assert!(
        select
            .calls(&["select", "pselect6"])
            .is_some_and(|c| c.per_request > 0.0),
        "select's own call is not among its system calls: {:?}",
        select.syscalls
    );
    let threads = profile_of(&found.profiles, "threads");
    assert!(
        threads
            .calls(&["recvfrom", "read"])
            .is_some_and(|c| c.per_request >= 0.9),
        "a blocking read per request: {:?}",
        threads.syscalls
    );
    // A thread per connection sleeps in its read between requests this far apart.
    assert!(
        threads.context_switches_per_request >= 0.5,
        "{}",
        threads.context_switches_per_request
    );
    let (uring, epoll) = (
        profile_of(&found.profiles, "uring"),
        profile_of(&found.profiles, "epoll"),
    );
    assert!(
        uring.syscalls_per_request < epoll.syscalls_per_request,
        "uring {} against epoll {} system calls per request",
        uring.syscalls_per_request,
        epoll.syscalls_per_request
    );
    assert!(
        uring.calls(&["io_uring_enter"]).is_some()
            && epoll
                .calls(&["epoll_pwait2", "epoll_wait", "epoll_pwait"])
                .is_some()
    );

    // The differential flamegraph, and the report's section as a browser shows it.
    let dir_arg = dir.to_string_lossy().into_owned();
    let (ok, out, err) = iolab(&["report", &dir_arg, "--diff", "epoll,uring"], &[]);
    assert!(ok, "{err}");
    let diff = pdir.join("diff-epoll-uring-3000.svg");
    assert!(out.contains(&diff.display().to_string()), "{out}");
    assert!(std::fs::read_to_string(&diff)
        .unwrap()
        .contains("function search"));
    let (ok, _, err) = iolab(&["report", &dir_arg, "--diff", "epoll,nginx"], &[]);
    assert!(
        !ok && err.contains("no flamegraph of 'nginx'") && err.contains("epoll"),
        "{err}"
    );
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<h2>Where the time goes</h2>"));
    assert!(
        html.contains("What io_uring saves: uring makes"),
        "the reading names what uring saves"
    );
    assert!(html.contains("select pays per wake-up"));
    let Some(dom) = common::chromium_dom(&dir.join("report.html")) else {
        return common::missing_tool("chromium");
    };
    assert!(
        dom.contains("data-flamegraphs-rendered=\"4\""),
        "the four flamegraphs did not render: {}",
        &dom[dom.find("<body").unwrap_or(0)..][..400.min(dom.len())]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_perf_the_sweep_and_the_report_go_on_and_say_why() {
    let _machine = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fresh_dir("noperf");
    let (ok, out, err) = sweep(&dir, "epoll", &[("IOLAB_PERF", "/nonexistent/perf")]);
    assert!(ok, "a sweep without perf must still succeed: {err}\n{out}");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("profile: none")).collect();
    assert_eq!(lines.len(), 1, "one line says why:\n{out}");
    assert!(
        lines[0].contains("perf is not installed") && lines[0].contains("apt-get install linux-perf"),
        "{}",
        lines[0]
    );
    assert!(
        !read_points(&dir).unwrap().is_empty(),
        "the points are measured all the same"
    );
    let found = read_profiles(&dir).unwrap();
    assert!(found.profiles.is_empty());
    let why = found.unavailable.expect("profile/unavailable.txt");
    let dir_arg = dir.to_string_lossy().into_owned();
    let (ok, _, err) = iolab(&["report", &dir_arg], &[]);
    assert!(ok, "{err}");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<h2>Where the time goes</h2>"));
    assert!(
        html.contains(&format!("No profiles were taken: {why}.")),
        "the section says why"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
