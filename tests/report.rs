//! The report as its readers meet it: opened in a real browser (headless Chromium), opened
//! as a notebook (validated by Python's nbformat), and rebuilt from a copied folder.
//!
//! Chromium and nbformat are outside tools. Where one is missing the test says so and passes,
//! except under CI=true, where `.ci/run` installs both and a missing one is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// One small sweep and its report, shared by the tests here.
fn report_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("iolab-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(env!("CARGO_BIN_EXE_iolab"))
            .args(["sweep", "--engines", "epoll,poll", "--rates", "300,600"])
            .args(["--duration", "0.3s", "--warmup", "0.1s", "--connections", "4"])
            // An SLO no run misses: these tests are about the report, not the machine.
            .args(["--slo", "60s", "--out"])
            .arg(&dir)
            .output()
            .expect("run iolab sweep");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = Command::new(env!("CARGO_BIN_EXE_iolab"))
            .arg("report")
            .arg(&dir)
            .output()
            .expect("run iolab report");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// The number of figures the report says it holds.
fn declared_figures(html: &str) -> usize {
    let at = html
        .find("name=\"iolab-figures\" content=\"")
        .expect("the page declares its figure count");
    let rest = &html[at + "name=\"iolab-figures\" content=\"".len()..];
    rest[..rest.find('"').unwrap()].parse().unwrap()
}

#[test]
fn chromium_renders_every_figure() {
    let dir = report_dir();
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let figures = declared_figures(&html);
    assert!(figures >= 7, "p50, p99, p99.9, CDF, two arrivals, CPU: {figures}");
    let Some(dom) = common::chromium_dom(&dir.join("report.html")) else {
        return common::missing_tool("chromium");
    };
    // The page's own script marks what the browser laid out with a size.
    assert!(
        dom.contains(&format!("data-figures-rendered=\"{figures}\"")),
        "not every figure rendered; chromium's view of the page:\n{}",
        &dom[..dom.len().min(2000)]
    );
    let sizes: Vec<&str> = dom
        .split("data-rendered=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    assert_eq!(sizes.len(), figures, "{sizes:?}");
    for size in sizes {
        let (w, h) = size.split_once('x').unwrap();
        assert!(
            w.parse::<u32>().unwrap() > 100 && h.parse::<u32>().unwrap() > 100,
            "{size}"
        );
    }
}

#[test]
fn the_notebook_is_valid_nbformat_4_with_every_figure() {
    let dir = report_dir();
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let figures = declared_figures(&html);
    let script = "import sys, nbformat\n\
                  nb = nbformat.read(sys.argv[1], as_version=4)\n\
                  nbformat.validate(nb)\n\
                  svgs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs\n\
                          if 'image/svg+xml' in o.get('data', {})]\n\
                  md = [c for c in nb.cells if c.cell_type == 'markdown']\n\
                  print(nb.nbformat, len(svgs), len(md))\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).arg(dir.join("report.ipynb"));
    let Some((ok, out, err)) = common::run_bounded(cmd, Duration::from_secs(60)) else {
        return common::missing_tool("python3");
    };
    if !ok && err.contains("No module named 'nbformat'") {
        return common::missing_tool("python3 nbformat");
    }
    assert!(ok, "nbformat rejected the notebook: {err}");
    let fields: Vec<usize> = out.split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields[0], 4);
    assert_eq!(fields[1], figures, "every figure is embedded");
    assert!(fields[2] >= 7, "markdown explains each section: {out}");
}

#[test]
fn a_copied_folder_reports_offline_and_the_page_fetches_nothing() {
    let dir = report_dir();
    let copy = std::env::temp_dir().join(format!("iolab-report-copy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(copy.join("points")).unwrap();
    for f in ["meta.json", "points.csv"] {
        std::fs::copy(dir.join(f), copy.join(f)).unwrap();
    }
    for entry in std::fs::read_dir(dir.join("points")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.join("points").join(path.file_name().unwrap())).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_iolab"))
        .arg("report")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let original = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let html = std::fs::read_to_string(copy.join("report.html")).unwrap();
    assert_eq!(declared_figures(&html), declared_figures(&original));
    // Nothing to fetch: no external sources, links, stylesheets or fonts. (The SVG namespace
    // URI is a name, not a fetch.)
    for needle in ["src=", "href=\"http", "url(", "@import", "<link"] {
        assert!(!html.contains(needle), "the page refers out: {needle}");
    }
    let _ = std::fs::remove_dir_all(&copy);
}

#[test]
fn a_rate_not_in_the_sweep_is_refused_with_the_ones_that_are() {
    let dir = report_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_iolab"))
        .arg("report")
        .arg(dir)
        .args(["--at", "12345", "-o"])
        .arg(std::env::temp_dir().join(format!("iolab-never-{}.html", std::process::id())))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("12345") && err.contains("300, 600"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A row of a table in the page: its cells (unescaped) and whether it is dimmed.
type HtmlRow = (Vec<String>, bool);

/// The rows of the page's table whose header holds `column`.
fn table_rows(html: &str, column: &str) -> Vec<HtmlRow> {
    let unescape = |s: &str| {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
    };
    let table = html
        .split("<table>")
        .skip(1)
        .map(|t| &t[..t.find("</table>").unwrap()])
        .find(|t| t.contains(&format!("<th>{column}</th>")))
        .unwrap_or_else(|| panic!("no table with a column {column}"));
    table
        .split("<tr")
        .skip(2) // before the header, the header
        .map(|row| {
            let cells = row
                .split("<td>")
                .skip(1)
                .map(|c| unescape(&c[..c.find("</td>").unwrap()]))
                .collect();
            (cells, row.starts_with(" class=\"dim\""))
        })
        .collect()
}

/// A folder made by hand, with a point of every kind (good, over the SLO, saturated,
/// invalid by the machine or the generator, re-measured in later rounds), rendered: the knee
/// table and the table of every point say, row by row, what points.csv says.
#[test]
fn a_hand_made_folder_renders_every_verdict_row_by_row() {
    use iolab::lab::results::{read_points, Point};
    let source = report_dir();
    let dir = std::env::temp_dir().join(format!("iolab-report-hand-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("points")).unwrap();
    std::fs::copy(source.join("meta.json"), dir.join("meta.json")).unwrap();
    // Every hand-made row borrows one real point's files (the CDF and arrival figures read
    // them); the tables read points.csv only.
    let real = read_points(source).unwrap().remove(0);
    for f in [&real.summary, &real.hdr_log, &real.gaps] {
        std::fs::copy(source.join(f), dir.join(f)).unwrap();
    }
    let point = |engine: &str, rate: f64, round: u32, attempt: u32, p99: f64| Point {
        engine: engine.into(),
        workload: real.workload.clone(),
        offered_rps: rate,
        achieved_rps: rate,
        p50_us: p99 / 2.0,
        p99_us: p99,
        p999_us: p99 * 1.5,
        p99_ci_low_us: p99 * 0.9,
        p99_ci_high_us: p99 * 1.1,
        valid: true,
        over_slo: p99 > 1000.0,
        attempt,
        round,
        summary: real.summary.clone(),
        hdr_log: real.hdr_log.clone(),
        gaps: real.gaps.clone(),
        quiet: true,
        ..Point::default()
    };
    let invalid = |mut p: Point, blame: &str, why: &str| {
        p.valid = false;
        p.blame = blame.into();
        p.invalid_reason = why.into();
        p
    };
    let saturated = |mut p: Point| {
        p.saturated = true;
        p.achieved_rps = p.offered_rps * 0.7;
        p
    };
    let rows = vec![
        // epoll at 300: good, measured again after a stall.
        point("epoll", 300.0, 1, 1, 200.0),
        point("poll", 300.0, 1, 1, 250.0),
        invalid(
            point("epoll", 300.0, 2, 2, 9_000.0),
            "machine",
            "the machine stalled",
        ),
        point("poll", 300.0, 2, 2, 240.0),
        point("epoll", 300.0, 3, 3, 210.0),
        // poll at 600: the generator could not drive it, twice. Knee "≥ 300".
        invalid(
            point("poll", 600.0, 1, 1, 300.0),
            "generator",
            "generator busy 99%",
        ),
        invalid(
            point("poll", 600.0, 2, 2, 300.0),
            "generator",
            "generator busy 98%",
        ),
        // epoll at 600: the first try invalid (under the SLO), the later valid ones over it,
        // saturated or not. The later ones count: the knee is 300, not "≥ 300".
        invalid(
            point("epoll", 600.0, 3, 1, 400.0),
            "machine",
            "the machine stalled",
        ),
        saturated(point("epoll", 600.0, 4, 2, 20_000.0)),
        point("epoll", 600.0, 5, 3, 30_000.0),
    ];
    let mut w = csv::Writer::from_path(dir.join("points.csv")).unwrap();
    for r in &rows {
        w.serialize(r).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let out = Command::new(env!("CARGO_BIN_EXE_iolab"))
        .arg("report")
        .arg(&dir)
        .args(["--slo", "1ms", "--at", "300"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();

    let knees = table_rows(&html, "what ended the walk");
    let engines: Vec<&str> = knees.iter().map(|(c, _)| c[0].as_str()).collect();
    assert_eq!(engines, ["epoll", "poll"]);
    let (epoll, dim) = &knees[0];
    assert_eq!(epoll[1], "300", "{epoll:?}");
    assert!(!dim);
    assert!(epoll[2].starts_with("205 us"), "median of 200 and 210: {epoll:?}");
    assert!(
        epoll[3].starts_with("p99 over 1.00 ms at 600 rps") && epoll[3].contains("(2 invalid"),
        "{epoll:?}"
    );
    let (poll, _) = &knees[1];
    assert_eq!(poll[1], "≥ 300", "{poll:?}");
    assert!(
        poll[3].contains("could not drive 600 rps") && poll[3].contains("(2 invalid"),
        "{poll:?}"
    );
    // 300 is settled for both and 600 is not measured for poll: the two can't be told apart.
    assert_eq!(epoll[4], "poll", "{epoll:?}");

    let every = table_rows(&html, "verdict");
    assert_eq!(every.len(), rows.len(), "one table row per points.csv row");
    for (r, (cells, dimmed)) in rows.iter().zip(&every) {
        assert_eq!(cells[0], r.engine);
        assert_eq!(cells[1], format!("{:.0}", r.offered_rps));
        assert_eq!(cells[2], r.round.to_string(), "{cells:?}");
        assert_eq!(cells[3], r.attempt.to_string(), "{cells:?}");
        assert_eq!(*dimmed, !r.valid, "greyed exactly when invalid: {cells:?}");
        let verdict = cells.last().unwrap();
        let want = match (r.valid, r.saturated, r.over_slo) {
            (false, _, _) => format!("invalid ({}): {}", r.blame, r.invalid_reason),
            (true, true, _) => "valid, saturated".into(),
            (true, false, true) => "valid, over the SLO".into(),
            (true, false, false) => "valid".into(),
        };
        assert_eq!(verdict, &want, "{cells:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
