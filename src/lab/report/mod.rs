//! `iolab report`: a results folder in, a self-contained HTML page and a Jupyter notebook out.
//!
//! Reports read files, never processes: everything here comes from the folder a sweep wrote
//! (`meta.json`, `points.csv`, and per point its summary, HdrHistogram log and gaps), so a
//! copied folder renders the same report offline. The report is built once as a list of
//! sections (text, SVG figures drawn with plotters, tables) and then written twice: as one HTML
//! page that fetches nothing, and as `report.ipynb` (nbformat 4) with the same figures
//! embedded and the text as markdown. The figures also land in `figures/` beside them.

mod figures;
mod notebook;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::lab::results::{
    cell, comparisons, engine_order, fmt_spread, knees, offered_rates, read_points, Cell, Point, Spread,
};
use crate::sansio::stats::{fmt_p, gaps_per_sample, new_histogram};
use figures::Distribution;

/// Which latency a plot shows: over a cell's repeats, and of one raw point.
type CellPick = fn(&Cell<'_>) -> Option<Spread>;
type Pick = fn(&Point) -> f64;

/// What to report on.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// The knee table's p99 bound (default: the sweep's SLO from meta.json, else 1 ms).
    pub slo_us: Option<f64>,
    /// The offered rate for the latency CDFs and the arrivals figures (default: the highest
    /// rate at which every engine has a valid point).
    pub at_rate: Option<f64>,
}

/// Where the report went.
#[derive(Debug)]
pub struct Written {
    pub html: PathBuf,
    pub notebook: PathBuf,
    pub figures_dir: PathBuf,
    pub figures: usize,
}

/// A part of the report: a heading, paragraphs of explanation, then figures and tables.
struct Section {
    title: String,
    text: Vec<String>,
    blocks: Vec<Block>,
}

enum Block {
    /// An SVG figure and the file name it is saved under.
    Figure {
        name: String,
        svg: String,
    },
    Table(Table),
    /// Flamegraphs: a picture of each (embedded) that opens the interactive SVG.
    Flamegraphs(Vec<Flame>),
}

struct Flame {
    caption: String,
    /// The interactive SVG, relative to the page (or absolute when the page is elsewhere).
    href: String,
    /// The same SVG as a data URI, so the page shows it offline on its own.
    data_uri: String,
}

struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Rows to show dimmed (invalid points).
    dimmed: Vec<bool>,
}

/// Writes the report for the sweep in `dir`: the page to `html`, the notebook beside it with
/// the extension `.ipynb`, and each figure as SVG into `figures/` beside them.
pub fn write(dir: &Path, html: &Path, opts: &ReportOptions) -> anyhow::Result<Written> {
    let rows = read_points(dir)?;
    if rows.is_empty() {
        anyhow::bail!("{} has no points", dir.join("points.csv").display());
    }
    let meta = std::fs::read_to_string(dir.join("meta.json")).unwrap_or_default();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap_or(serde_json::Value::Null);
    let slo_us = opts
        .slo_us
        .or_else(|| meta.get("slo_us").and_then(|v| v.as_f64()))
        .unwrap_or(1000.0);
    let at_rate = match opts.at_rate {
        Some(r) if rows.iter().any(|p| p.offered_rps == r) => r,
        Some(r) => {
            let list: Vec<String> = offered_rates(&rows).iter().map(|r| format!("{r:.0}")).collect();
            anyhow::bail!("no point at {r:.0} rps; this sweep has {}", list.join(", "));
        }
        None => default_rate(&rows),
    };
    let out_dir = html
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut sections = build(dir, &rows, &meta, slo_us, at_rate)?;
    if let Some(section) = profile_section(dir, out_dir)? {
        // Before the knee table and the table of every point, which close the report.
        let at = sections.len().saturating_sub(2);
        sections.insert(at, section);
    }
    let figures_dir = out_dir.join("figures");
    std::fs::create_dir_all(&figures_dir)
        .with_context(|| format!("cannot create {}", figures_dir.display()))?;
    let mut figures = 0;
    for block in sections.iter().flat_map(|s| &s.blocks) {
        if let Block::Figure { name, svg } = block {
            let path = figures_dir.join(format!("{name}.svg"));
            std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
            figures += 1;
        }
    }
    let title = "iolab report";
    let intro = describe(&meta);
    std::fs::write(html, render_html(title, &intro, &sections, figures))
        .with_context(|| format!("cannot write {}", html.display()))?;
    let notebook = html.with_extension("ipynb");
    let data_dir = if same_dir(dir, out_dir) {
        ".".to_string()
    } else {
        std::fs::canonicalize(dir)
            .unwrap_or_else(|_| dir.to_path_buf())
            .display()
            .to_string()
    };
    std::fs::write(&notebook, notebook::render(title, &intro, &sections, &data_dir)?)
        .with_context(|| format!("cannot write {}", notebook.display()))?;
    Ok(Written {
        html: html.to_path_buf(),
        notebook,
        figures_dir,
        figures,
    })
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The highest rate at which every engine has a valid point; failing that, the rate with
/// the most valid points (the higher on a tie).
fn default_rate(rows: &[Point]) -> f64 {
    let engines = engine_order(rows).len();
    let rates = offered_rates(rows);
    // Engines, not rows: a rate measured twice has two rows.
    let valid_at = |rate: f64| {
        let mut engines: Vec<&str> = rows
            .iter()
            .filter(|r| r.offered_rps == rate && r.valid)
            .map(|r| r.engine.as_str())
            .collect();
        engines.sort_unstable();
        engines.dedup();
        engines.len()
    };
    rates
        .iter()
        .rev()
        .find(|&&r| valid_at(r) == engines)
        .copied()
        .or_else(|| rates.iter().copied().max_by_key(|&r| (valid_at(r), r as u64)))
        .unwrap_or(0.0)
}

fn build(
    dir: &Path,
    rows: &[Point],
    meta: &serde_json::Value,
    slo_us: f64,
    at_rate: f64,
) -> anyhow::Result<Vec<Section>> {
    let engines = engine_order(rows);
    let mut sections = Vec::new();

    let mut latency = Section {
        title: "Throughput and latency".into(),
        text: vec![
            "Each engine's latency, from the scheduled send to the full reply (so a late \
             generator or a queue in the server both count), against the throughput it \
             achieved, as the offered load steps up. One plot per percentile: p50 is the \
             typical request, p99 and p99.9 the tail a user notices."
                .into(),
            "Every point was measured several times, in rounds that interleave the engines \
             (A, B, C, then B, C, A, ...), each time with a fresh server process after the \
             machine was seen to be quiet. A marker is the median of a rate's valid repeats \
             and its bar spans them, so one repeat hit by a stall of the machine moves neither \
             the marker nor the verdict. A hollow marker is a rate never measured validly."
                .into(),
            "A measurement is invalid, and measured again in a later round, when it cannot be \
             trusted: the machine stalled inside it (canary threads at real-time priority, one \
             per CPU, saw more stall time than could leave the p99 alone), or the generator \
             was late or busy, or its arrivals failed the Poisson check. A stall only ever \
             delays, so a measurement that met the SLO with every reply in despite the stalls \
             counts as within it (its figures an upper bound). Saturated means the \
             server fell behind (a backlog growing through the window, fewer replies than \
             requests, errors); a line ends where most repeats were saturated or over the SLO."
                .into(),
            format!(
                "The latency axis stops at {}: a point far above it (a queue growing for the \
                 whole run) is drawn on the top edge, and its value is in the table at the end.",
                fmt_us(latency_cap(slo_us))
            ),
        ],
        blocks: Vec::new(),
    };
    let percentiles: [(&str, &str, CellPick, Pick); 3] = [
        ("p50", "latency-p50", |c| c.p50(), |r| r.p50_us),
        ("p99", "latency-p99", |c| c.p99(), |r| r.p99_us),
        ("p99.9", "latency-p999", |c| c.p999(), |r| r.p999_us),
    ];
    for (name, file, pick, raw) in percentiles {
        let slo = (name == "p99").then_some(slo_us);
        latency.blocks.push(Block::Figure {
            name: file.into(),
            svg: figures::latency_vs_throughput(rows, &engines, name, pick, raw, slo, latency_cap(slo_us))?,
        });
    }
    sections.push(latency);

    sections.push(cdf_section(dir, rows, &engines, at_rate)?);
    if let Some(section) = loops_section(dir, meta)? {
        sections.push(section);
    }
    sections.push(arrivals_section(dir, rows, meta, at_rate)?);

    sections.push(Section {
        title: "Server CPU per request".into(),
        text: vec![
            "Server process CPU time (user + system, read from /proc before and after each \
             point, warm-up included) divided by the requests it served. It shows what each \
             I/O model costs per request, apart from how fast it answers. An engine with a \
             fixed cost per wake-up (select and poll rebuild and scan their sets, pool hands \
             every request to a worker thread) spreads it over few requests at low load; at \
             high load each wake-up serves many, and the costs converge on the kernel's."
                .into(),
        ],
        blocks: vec![Block::Figure {
            name: "cpu-per-request".into(),
            svg: figures::cpu_per_request(rows, &engines)?,
        }],
    });

    let knee_rows = knees(rows, slo_us);
    sections.push(Section {
        title: format!("Knee: the highest rate with p99 under {}", fmt_us(slo_us)),
        text: vec![
            format!(
                "Per engine, walking up the ladder, the highest offered rate at which most valid \
                 repeats had p99 ≤ {} with the server keeping up; the p99 there is the median of \
                 the repeats with the envelope of their 95% confidence intervals (order \
                 statistics of each repeat, widened by the spread between repeats).",
                fmt_us(slo_us)
            ),
            "\"≥\" marks a lower bound: the rate above could not be measured validly (the \
             generator's own limit) or the ladder ends there. \"uncertain\" marks a knee whose \
             deciding rate is shaky: its repeats disagree, or the p99 interval crosses the SLO, \
             so the true knee may be a step away. The last column lists the engines whose knees \
             cannot be told apart from this one (their possible ladder steps overlap); only \
             engines not listed there are called different."
                .into(),
        ],
        blocks: vec![Block::Table(Table {
            header: [
                "engine",
                "highest rate (rps)",
                "p99 there [95% interval] (us)",
                "what ended the walk",
                "cannot be told apart from",
            ]
            .map(String::from)
            .to_vec(),
            dimmed: knee_rows.iter().map(|k| k.rate.is_none()).collect(),
            rows: knee_rows
                .iter()
                .map(|k| {
                    let rate = match (k.rate, k.lower_bound) {
                        (None, true) => "not measured".to_string(),
                        (None, false) => "none met it".to_string(),
                        (Some(r), true) => format!("≥ {r:.0}"),
                        (Some(r), false) => format!("{r:.0}"),
                    };
                    let rate = if k.uncertain {
                        format!("{rate} (uncertain)")
                    } else {
                        rate
                    };
                    let same: Vec<&str> = knee_rows
                        .iter()
                        .filter(|o| o.engine != k.engine && !o.told_apart(k))
                        .map(|o| o.engine.as_str())
                        .collect();
                    vec![
                        k.engine.clone(),
                        rate,
                        k.p99_at_knee.as_ref().map_or("-".into(), fmt_spread),
                        format!("{} ({} invalid measurement(s) left out)", k.why, k.invalid),
                        if same.is_empty() {
                            "-".into()
                        } else {
                            same.join(", ")
                        },
                    ]
                })
                .collect(),
        })],
    });

    sections.push(comparison_section(rows, &engines, at_rate));

    let header: Vec<String> = [
        "engine",
        "offered",
        "round",
        "try",
        "achieved",
        "p50 us",
        "p99 us [95% CI]",
        "p99.9 us",
        "send lag p99 us",
        "busy",
        "stalls ms",
        "K-S p",
        "verdict",
    ]
    .map(String::from)
    .to_vec();
    sections.push(Section {
        title: "Every point".into(),
        text: vec![
            "Each measurement, as in points.csv, in the order it was made. \"round\" and \
             \"try\" place it in the interleaved schedule; \"busy\" is the share of the run \
             the generator spent working rather than waiting for its next send; \"stalls\" is \
             the machine's stall time beyond half the SLO, seen by the canaries; \"K-S p\" is \
             the arrivals check. Invalid measurements are greyed, with the reason and whose \
             fault it was."
                .into(),
        ],
        blocks: vec![Block::Table(Table {
            header: header.clone(),
            dimmed: rows.iter().map(|r| !r.valid).collect(),
            rows: rows
                .iter()
                .map(|r| {
                    if r.beyond_reach {
                        // Not measured: a dash in every column between the round and the verdict.
                        let mut row = vec![r.engine.clone(), format!("{:.0}", r.offered_rps)];
                        row.push(r.round.to_string());
                        row.extend(std::iter::repeat_n("-".to_string(), header.len() - 4));
                        row.push(r.invalid_reason.clone());
                        return row;
                    }
                    let verdict = match (r.valid, r.saturated, r.over_slo) {
                        (true, true, _) if r.over_despite_noise => {
                            "valid, saturated despite the noise (the median waited past the SLO)".to_string()
                        }
                        (true, false, true) if r.over_despite_noise => {
                            "valid, over the SLO despite the noise (the median waited past it)".to_string()
                        }
                        (true, true, _) => "valid, saturated".to_string(),
                        (true, false, true) => "valid, over the SLO".to_string(),
                        (true, false, false) if r.met_despite_lag => {
                            "valid: within the SLO despite a late generator (an upper bound)".to_string()
                        }
                        (true, false, false) if r.met_despite_stalls => {
                            "valid: within the SLO despite the machine's stalls (an upper bound)".to_string()
                        }
                        (true, false, false) => "valid".to_string(),
                        (false, _, _) => format!("invalid ({}): {}", r.blame, r.invalid_reason),
                    };
                    let bound = |v: f64| {
                        if v.is_nan() {
                            "∞".to_string()
                        } else {
                            format!("{v:.0}")
                        }
                    };
                    vec![
                        r.engine.clone(),
                        format!("{:.0}", r.offered_rps),
                        r.round.to_string(),
                        r.attempt.to_string(),
                        format!("{:.0}", r.achieved_rps),
                        format!("{:.1}", r.p50_us),
                        format!(
                            "{:.1} [{}, {}]",
                            r.p99_us,
                            bound(r.p99_ci_low_us),
                            bound(r.p99_ci_high_us)
                        ),
                        format!("{:.1}", r.p999_us),
                        format!("{:.1}", r.send_lag_p99_us),
                        format!("{:.0}%", r.generator_busy * 100.0),
                        format!("{:.1}", r.stall_excess_us / 1e3),
                        format!("{:.3}", r.ks_p_value),
                        verdict,
                    ]
                })
                .collect(),
        })],
    });
    Ok(sections)
}

/// For every two engines at `rate`: is the difference in p99 larger than the noise?
fn comparison_section(rows: &[Point], engines: &[String], rate: f64) -> Section {
    let pairs = comparisons(rows, rate);
    let mut ranked: Vec<(String, Spread)> = engines
        .iter()
        .filter_map(|e| Some((e.clone(), cell(rows, e, rate)?.p99()?)))
        .collect();
    ranked.sort_by(|a, b| a.1.median.total_cmp(&b.1.median));
    let mut text = vec![format!(
        "Engine against engine at {rate:.0} rps offered, fastest p99 first: the median of the \
         valid repeats and the envelope of their 95% confidence intervals. Two engines are \
         called different only when their intervals do not overlap; otherwise the data cannot \
         tell them apart, however different the medians look."
    )];
    for w in ranked.windows(2) {
        if let Some(c) = pairs
            .iter()
            .find(|c| (c.a == w[0].0 && c.b == w[1].0) || (c.a == w[1].0 && c.b == w[0].0))
        {
            text.push(c.sentence() + ".");
        }
    }
    if ranked.len() < 2 {
        text.push("Fewer than two engines have valid repeats at this rate.".into());
    }
    let rows_out = ranked
        .iter()
        .map(|(e, s)| {
            let same: Vec<&str> = pairs
                .iter()
                .filter(|c| !c.different && (&c.a == e || &c.b == e))
                .map(|c| if &c.a == e { c.b.as_str() } else { c.a.as_str() })
                .collect();
            vec![
                e.clone(),
                fmt_spread(s),
                s.repeats.to_string(),
                if same.is_empty() {
                    "-".into()
                } else {
                    same.join(", ")
                },
            ]
        })
        .collect::<Vec<_>>();
    Section {
        title: format!("Which differences are real, at {rate:.0} rps"),
        text,
        blocks: vec![Block::Table(Table {
            header: [
                "engine",
                "p99 [95% interval] (us)",
                "valid repeats",
                "indistinguishable from",
            ]
            .map(String::from)
            .to_vec(),
            dimmed: vec![false; rows_out.len()],
            rows: rows_out,
        })],
    }
}

fn cdf_section(dir: &Path, rows: &[Point], engines: &[String], rate: f64) -> anyhow::Result<Section> {
    let mut loaded = Vec::new();
    for (i, engine) in engines.iter().enumerate() {
        let Some(c) = cell(rows, engine, rate) else {
            continue;
        };
        // Every valid repeat's histogram, merged (exact, sample for sample); a rate never
        // measured validly shows its last try, dashed.
        let valid: Vec<&&Point> = c.valid().collect();
        let chosen: Vec<&Point> = if valid.is_empty() {
            c.points
                .iter()
                .rev()
                .find(|p| !p.beyond_reach)
                .copied()
                .into_iter()
                .collect()
        } else {
            valid.into_iter().copied().collect()
        };
        if chosen.is_empty() {
            continue; // beyond the generator's reach: never measured
        }
        let mut merged = new_histogram();
        for p in &chosen {
            let _ = merged.add(read_hlog(&dir.join(&p.hdr_log))?);
        }
        loaded.push((engine.as_str(), i, chosen.iter().all(|p| p.valid), merged));
    }
    let missing: Vec<&str> = engines
        .iter()
        .filter(|e| !loaded.iter().any(|l| l.0 == e.as_str()))
        .map(String::as_str)
        .collect();
    let dists: Vec<Distribution<'_>> = loaded
        .iter()
        .map(|(engine, color, valid, h)| Distribution {
            engine,
            color: *color,
            valid: *valid,
            latency_ns: h,
        })
        .collect();
    let mut text = vec![format!(
        "The whole latency distribution of every engine at {rate:.0} rps offered (choose \
         another with `iolab report --at RATE`), read back from the HdrHistogram logs of \
         its valid repeats and merged. The vertical axis is in nines: 90%, 99%, 99.9% are evenly spaced, so the tail \
         gets the room. A curve further left is faster; where two cross, one engine wins the \
         typical request and the other the tail. Dashed curves are invalid points."
    )];
    if !missing.is_empty() {
        text.push(format!(
            "Not at this rate (stopped earlier): {}.",
            missing.join(", ")
        ));
    }
    Ok(Section {
        title: format!("Latency distribution at {rate:.0} rps"),
        text,
        blocks: vec![Block::Figure {
            name: "latency-cdf".into(),
            svg: figures::latency_cdfs(&format!("Latency distribution at {rate:.0} rps offered"), &dists)?,
        }],
    })
}

/// The coordinated-omission lesson (`sweep --compare-loops`), if the sweep made it.
/// "Where the time goes": the costs per request of every profiled cell, a reading of them,
/// and the flamegraphs. Present when the sweep was asked to profile (saying why it is empty
/// when perf could not run), absent otherwise.
fn profile_section(dir: &Path, out_dir: &Path) -> anyhow::Result<Option<Section>> {
    use crate::lab::results::{read_profiles, PROFILE_DIR};
    let found = read_profiles(dir)?;
    let mut text = vec![
        "Each engine profiled in runs of its own, on a fresh server at the rate shown, after \
         the measurements (so no tracing touched a latency above). CPU time per request is \
         perf's task-clock of the server process (exact, hooking no system call), split into \
         user and kernel by /proc's 10 ms ticks; softirq is the server's CPUs' (network \
         processing, whoever it served). System calls and context switches are perf stat's \
         counts in a second run; a switch is involuntary when the thread was preempted, \
         voluntary when it went to sleep. The flamegraphs are perf record's CPU samples of \
         that second run, kernel frames included. On loopback, a send runs the receiving \
         side's TCP in the sender's softirq: a server's kernel time includes delivering its \
         replies into the client's socket."
            .to_string(),
    ];
    if let Some(why) = &found.unavailable {
        text.push(format!("No profiles were taken: {why}."));
        return Ok(Some(Section {
            title: "Where the time goes".into(),
            text,
            blocks: Vec::new(),
        }));
    }
    if found.profiles.is_empty() {
        return Ok(None);
    }
    text.extend(profile_reading(&found.profiles));
    let mut rows = Vec::new();
    for p in &found.profiles {
        let top: Vec<String> = p
            .syscalls
            .iter()
            .take(3)
            .map(|c| format!("{} {:.2}", c.name, c.per_request))
            .collect();
        rows.push(vec![
            p.engine.clone(),
            format!("{:.0}", p.offered_rps),
            format!("{:.2}", p.syscalls_per_request),
            top.join(", "),
            format!(
                "{:.2} ({:.2} invol.)",
                p.context_switches_per_request, p.involuntary_switches_per_request
            ),
            format!("{:.2}", p.user_us_per_request),
            format!("{:.2}", p.kernel_us_per_request),
            format!("{:.2}", p.softirq_us_per_request),
            format!("{:.0}%", p.kernel_share() * 100.0),
        ]);
    }
    let dimmed = vec![false; rows.len()];
    let pdir = dir.join(PROFILE_DIR);
    let base = if same_dir(dir, out_dir) {
        PathBuf::from(PROFILE_DIR)
    } else {
        std::fs::canonicalize(&pdir).unwrap_or(pdir.clone())
    };
    let mut flames = Vec::new();
    for p in found.profiles.iter().filter(|p| !p.flamegraph.is_empty()) {
        let Ok(svg) = std::fs::read(pdir.join(&p.flamegraph)) else {
            continue;
        };
        use base64::Engine as _;
        flames.push(Flame {
            caption: format!(
                "{} at {:.0} rps, {:.0} ms of CPU sampled",
                p.engine, p.offered_rps, p.sampled_cpu_ms
            ),
            href: base.join(&p.flamegraph).display().to_string(),
            data_uri: format!(
                "data:image/svg+xml;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(svg)
            ),
        });
    }
    let mut blocks = vec![Block::Table(Table {
        header: [
            "engine",
            "rps",
            "syscalls / req",
            "most made, per req",
            "switches / req",
            "user µs / req",
            "kernel µs / req",
            "softirq µs / req",
            "kernel share",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        dimmed,
    })];
    if !flames.is_empty() {
        blocks.push(Block::Flamegraphs(flames));
    }
    Ok(Some(Section {
        title: "Where the time goes".into(),
        text,
        blocks,
    }))
}

/// A few sentences drawn from the profiles at the rate most engines were profiled at.
fn profile_reading(profiles: &[crate::lab::results::Profile]) -> Vec<String> {
    use crate::lab::results::Profile;
    let mut rates: Vec<f64> = profiles.iter().map(|p| p.offered_rps).collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let count = |r: f64| profiles.iter().filter(|p| p.offered_rps == r).count();
    let Some(rate) = rates.iter().copied().max_by_key(|&r| (count(r), r as u64)) else {
        return Vec::new();
    };
    let at: Vec<&Profile> = profiles
        .iter()
        .filter(|p| p.offered_rps == rate && p.requests_cpu_run > 0)
        .collect();
    let mut out = Vec::new();
    let by = |f: fn(&Profile) -> f64| {
        let mut v: Vec<&Profile> = at.iter().copied().filter(|p| f(p).is_finite()).collect();
        v.sort_by(|a, b| f(a).total_cmp(&f(b)));
        v
    };
    let share = by(Profile::kernel_share);
    if let (Some(lo), Some(hi)) = (share.first(), share.last()) {
        if share.len() > 1 {
            out.push(format!(
                "At {rate:.0} rps, {} spends the largest share of its CPU in the kernel ({:.0}% of {:.1} µs per \
                 request), {} the smallest ({:.0}% of {:.1} µs).",
                hi.engine,
                hi.kernel_share() * 100.0,
                hi.user_us_per_request + hi.kernel_us_per_request,
                lo.engine,
                lo.kernel_share() * 100.0,
                lo.user_us_per_request + lo.kernel_us_per_request
            ));
        }
    }
    let calls = by(|p| p.syscalls_per_request);
    if let (Some(lo), Some(hi)) = (calls.first(), calls.last()) {
        if calls.len() > 1 {
            out.push(format!(
                "{} makes the fewest system calls per request ({:.2}), {} the most ({:.2}).",
                lo.engine, lo.syscalls_per_request, hi.engine, hi.syscalls_per_request
            ));
        }
    }
    let find = |name: &str| at.iter().copied().find(|p| p.engine == name);
    for (engine, waits) in [
        ("select", &["select", "pselect6"][..]),
        ("poll", &["poll", "ppoll"][..]),
    ] {
        if let Some(c) = find(engine).and_then(|p| p.calls(waits)) {
            out.push(format!(
                "{engine} pays per wake-up: {:.2} {} calls per request, each rebuilding and scanning its \
                 whole set of descriptors, busy or not.",
                c.per_request, c.name
            ));
        }
    }
    let switching: Vec<String> = at
        .iter()
        .filter(|p| p.context_switches_per_request >= 0.5)
        .map(|p| {
            let why = match p.engine.split_whitespace().next().unwrap_or("") {
                "threads" | "iovec" => ": a thread per connection sleeps in read between requests",
                "pool" => ": every request goes to a worker thread and its reply back to the loop",
                _ => "",
            };
            format!("{} ({:.2}{why})", p.engine, p.context_switches_per_request)
        })
        .collect();
    if !switching.is_empty() {
        out.push(format!(
            "A context switch per request or more: {}. A readiness or completion loop that \
             finds work waiting switches far less.",
            switching.join("; ")
        ));
    }
    if let (Some(u), Some(e)) = (find("uring"), find("epoll")) {
        let enter = u.calls(&["io_uring_enter"]).map_or(0.0, |c| c.per_request);
        out.push(format!(
            "What io_uring saves: uring makes {:.2} system calls per request ({enter:.2} io_uring_enter) \
             against epoll's {:.2}, one submit carrying the receives and sends of many requests; its \
             kernel time per request is {:.2} µs against {:.2}.",
            u.syscalls_per_request, e.syscalls_per_request, u.kernel_us_per_request, e.kernel_us_per_request
        ));
    }
    out
}

fn loops_section(dir: &Path, meta: &serde_json::Value) -> anyhow::Result<Option<Section>> {
    let engine = meta["compare_loops"].as_str().unwrap_or("the server");
    let Some(comparison) = crate::lab::results::LoopsComparison::read(dir, engine) else {
        return Ok(None);
    };
    let c = comparison?;
    let folder = dir.join(crate::lab::results::LOOPS_DIR);
    let open = read_hlog(&folder.join("open.hlog"))?;
    let closed = read_hlog(&folder.join("closed.hlog"))?;
    let dists = [
        Distribution {
            engine: "open loop",
            color: 0,
            valid: true,
            latency_ns: &open,
        },
        Distribution {
            engine: "closed loop",
            color: 3,
            valid: true,
            latency_ns: &closed,
        },
    ];
    let mut text = vec![
        "Most load tools run a closed loop: each connection sends a request, waits for its reply,          and only then sends the next. The same server, loaded both ways while it stalls now and          then, shows what that hides."
            .to_string(),
    ];
    text.extend(c.sentences());
    Ok(Some(Section {
        title: "What a closed loop hides".into(),
        text,
        blocks: vec![Block::Figure {
            name: "open-vs-closed-loop".into(),
            svg: figures::latency_cdfs(
                &format!(
                    "Open vs closed loop, the server stopped {:.0} ms every {:.0} s",
                    c.stall_ms, c.every_s
                ),
                &dists,
            )?,
        }],
    }))
}

fn arrivals_section(
    dir: &Path,
    rows: &[Point],
    meta: &serde_json::Value,
    rate: f64,
) -> anyhow::Result<Section> {
    // The arrivals do not depend on the engine (same schedule, same generator); show the
    // first valid point at this rate, or the first at all.
    let at_rate = || rows.iter().filter(|r| r.offered_rps == rate);
    let point = at_rate()
        .find(|r| r.valid)
        .or_else(|| at_rate().next())
        .context("no point at the chosen rate")?;
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(&point.summary))
            .with_context(|| format!("cannot read {}", dir.join(&point.summary).display()))?,
    )
    .with_context(|| format!("{} is not a load summary", point.summary))?;
    let ia = &summary["interarrival"];
    let num = |k: &str| ia.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let timescale_us = num("ks_timescale_us");
    let timescale_us = if timescale_us.is_finite() {
        timescale_us
    } else {
        meta.get("ks_timescale_us")
            .and_then(|v| v.as_f64())
            .unwrap_or(200.0)
    };
    let k = gaps_per_sample(rate, std::time::Duration::from_secs_f64(timescale_us / 1e6));
    let gaps = read_gaps(&dir.join(&point.gaps))?;
    let mean = 1e6 / rate;
    let sums: Vec<f64> = gaps.chunks_exact(k).map(|w| w.iter().sum()).collect();
    let gap_fig = figures::histogram_with_model(
        "Gaps between sends",
        "gap (us)",
        &gaps,
        mean * 5.0,
        "exponential of the offered rate",
        &|x| figures::erlang_density(x, 1, mean),
    )?;
    let spread = (k as f64).sqrt() * mean;
    let window = k as f64 * mean;
    let sum_fig = figures::histogram_with_model(
        &format!("Sums of {k} consecutive gaps"),
        "sum (us)",
        &sums,
        window + 4.0 * spread,
        &format!("Erlang-{k} (Poisson)"),
        &|x| figures::erlang_density(x, k, mean),
    )?;
    let verdict = if point.valid { "valid" } else { "invalid" };
    Ok(Section {
        title: format!("Arrivals at {rate:.0} rps"),
        text: vec![
            format!(
                "Did the server see Poisson load? Left: the gaps between the generator's actual \
                 sends (the first {} of the run at the {} point), with the exponential density of the \
                 offered rate. One sender cannot place two sends closer than what one send costs \
                 it (a few us on loopback), so the shortest gaps are missing and show up a little \
                 later; gap by gap, the strict K-S test sees that (p {}).",
                gaps.len(),
                point.engine,
                fmt_p(num("ks_strict_p_value")),
            ),
            format!(
                "Right: what the check judges, sums of {k} consecutive gaps (about {timescale_us:.0} us, \
                 the timescale of the check) against the Erlang-{k} density a Poisson process gives \
                 them. Over the whole run: K-S D = {:.4}, p {} on n = {} sums; mean gap \
                 {:.2} us against {:.2} us offered, coefficient of variation {:.3} (1 for Poisson). \
                 This point is {verdict}.",
                num("ks_d"),
                fmt_p(num("ks_p_value")),
                ia.get("ks_n").and_then(|v| v.as_u64()).unwrap_or(0),
                num("mean_us"),
                mean,
                num("cv"),
            ),
        ],
        blocks: vec![
            Block::Figure {
                name: "arrivals-gaps".into(),
                svg: gap_fig,
            },
            Block::Figure {
                name: "arrivals-windows".into(),
                svg: sum_fig,
            },
        ],
    })
}

/// All intervals of an HdrHistogram interval log (as `load --hdr-log` writes it), added up.
/// The sum of a load's per-interval latency histograms (the untagged entries of its log).
pub fn read_hlog(path: &Path) -> anyhow::Result<Histogram<u64>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (total, _) = crate::sansio::stats::parse_hlog(&bytes, None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(total)
}

fn read_gaps(path: &Path) -> anyhow::Result<Vec<f64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            l.trim()
                .parse()
                .with_context(|| format!("{} line {}: not a number", path.display(), i + 1))
        })
        .collect()
}

/// Where the latency plots' axis stops: far enough above the SLO to show how an engine
/// crosses it, near enough that one runaway queue does not flatten every other curve.
fn latency_cap(slo_us: f64) -> f64 {
    slo_us * 10.0
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 && (us / 1000.0).fract() == 0.0 {
        format!("{:.0} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn describe(meta: &serde_json::Value) -> String {
    let get = |k: &str| {
        meta.get(k)
            .map(|v| v.to_string().trim_matches('"').to_string())
            .unwrap_or_else(|| "?".into())
    };
    let num = |k: &str| meta.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let list = |k: &str| {
        meta.get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .map(|v| v.to_string().trim_matches('"').to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let agents = list("agents");
    let offsets: Vec<f64> = meta
        .get("agent_clock_offsets_s")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    let generator = if agents.is_empty() {
        format!("generator on CPU {}", list("load_cpus").join(","))
    } else {
        let each: Vec<String> = agents
            .iter()
            .enumerate()
            .map(|(i, a)| match offsets.get(i) {
                Some(o) => format!("{a} (clock {:+.1} ms)", o * 1e3),
                None => a.clone(),
            })
            .collect();
        format!(
            "load from {} agents over ssh, each point's rate split between them and their \
             histograms merged exactly (never averaged): {}",
            agents.len(),
            each.join(", ")
        )
    };
    format!(
        "Workload: {}; {} connections; {} s per point after {} s of warm-up; seed {}. \
         Machine: {} ({} CPUs, {}), kernel {}; server on CPU {}, {}. \
         A point is invalid when the generator's send-lag p99 exceeds {:.0} µs, it was busy \
         more than {:.0}% of the time, or its arrivals' K-S p fell below {} at the {:.0} µs \
         timescale{}. iolab {}, run as: {}.",
        get("workload"),
        get("connections"),
        get("duration_s"),
        get("warmup_s"),
        get("seed"),
        get("hostname"),
        get("cpus"),
        get("cpu_model"),
        get("kernel"),
        list("server_cpus").join(","),
        generator,
        num("max_send_lag_us"),
        num("max_generator_busy") * 100.0,
        get("min_ks_p"),
        num("ks_timescale_us"),
        // Results from before the bound have no max_ks_d: they judged by p alone.
        match meta.get("max_ks_d").and_then(|v| v.as_f64()) {
            Some(d) if d > 0.0 => format!(" with a departure D above {d}"),
            _ => String::new(),
        },
        get("iolab_version"),
        list("command_line").join(" "),
    )
}

fn render_html(title: &str, intro: &str, sections: &[Section], figures: usize) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"iolab-figures\" content=\"{figures}\"><title>{}</title>\
         <style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}}\
         table{{border-collapse:collapse;font-size:0.9em;margin:0.5em 0}}\
         td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}\
         td:first-child,th:first-child,td:last-child,th:last-child{{text-align:left}}\
         th{{background:#f4f4f4}}tr.dim td{{color:#888;font-style:italic}}\
         .note{{color:#555;font-size:0.9em}}.figs{{display:flex;flex-wrap:wrap;gap:8px}}\
         svg{{max-width:100%;height:auto}}</style></head><body>\
         <h1>{}</h1><p class=\"note\">{}</p>",
        escape(title),
        escape(title),
        escape(intro)
    );
    for s in sections {
        let _ = write!(html, "<h2>{}</h2>", escape(&s.title));
        for p in &s.text {
            let _ = write!(html, "<p>{}</p>", escape(p));
        }
        html += "<div class=\"figs\">";
        for b in &s.blocks {
            match b {
                Block::Figure { name, svg } => {
                    let _ = write!(
                        html,
                        "<figure id=\"{}\" style=\"margin:0\">{svg}</figure>",
                        escape(name)
                    );
                }
                Block::Table(t) => html += &table_html(t),
                Block::Flamegraphs(flames) => {
                    for f in flames {
                        let _ = write!(
                            html,
                            "<figure class=\"flame\" style=\"margin:0\"><a href=\"{}\" target=\"_blank\">\
                             <img src=\"{}\" width=\"560\" alt=\"{}\"></a><figcaption class=\"note\">{} \
                             (click: the interactive flamegraph, search and zoom)</figcaption></figure>",
                            escape(&f.href),
                            f.data_uri,
                            escape(&f.caption),
                            escape(&f.caption)
                        );
                    }
                }
            }
        }
        html += "</div>";
    }
    // Records what the browser laid out, so a headless check can tell a page that merely
    // holds SVG text from one whose figures rendered with a size.
    html += "<script>addEventListener('load',function(){var n=0;\
             document.querySelectorAll('figure svg').forEach(function(s){var r=s.getBoundingClientRect();\
             if(r.width>0&&r.height>0){n++;}s.setAttribute('data-rendered',Math.round(r.width)+'x'+Math.round(r.height));});\
             document.body.setAttribute('data-figures-rendered',n);\
             var f=0;document.querySelectorAll('figure.flame img').forEach(function(i){if(i.naturalWidth>0){f++;}});\
             document.body.setAttribute('data-flamegraphs-rendered',f);});</script>";
    html += "</body></html>\n";
    html
}

fn table_html(t: &Table) -> String {
    let mut html = String::from("<table><tr>");
    for h in &t.header {
        let _ = write!(html, "<th>{}</th>", escape(h));
    }
    html += "</tr>";
    for (row, dim) in t.rows.iter().zip(&t.dimmed) {
        html += if *dim { "<tr class=\"dim\">" } else { "<tr>" };
        for cell in row {
            let _ = write!(html, "<td>{}</td>", escape(cell));
        }
        html += "</tr>";
    }
    html + "</table>"
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(engine: &str, rate: f64, valid: bool) -> Point {
        Point {
            engine: engine.into(),
            offered_rps: rate,
            valid,
            ..Point::default()
        }
    }

    #[test]
    fn default_rate_is_the_highest_where_every_engine_is_valid() {
        let rows = [
            row("a", 1000.0, true),
            row("a", 2000.0, true),
            row("a", 4000.0, true),
            row("b", 1000.0, true),
            row("b", 2000.0, true),
            row("b", 4000.0, false),
        ];
        assert_eq!(default_rate(&rows), 2000.0);
        // Two valid attempts of one engine do not stand in for another engine.
        let rows = [
            row("a", 1000.0, true),
            row("b", 1000.0, true),
            row("a", 2000.0, true),
            row("a", 2000.0, true),
            row("b", 2000.0, false),
        ];
        assert_eq!(default_rate(&rows), 1000.0);
        // No rate where all are valid: the one with the most valid points.
        let rows = [
            row("a", 1000.0, false),
            row("a", 2000.0, true),
            row("b", 1000.0, false),
        ];
        assert_eq!(default_rate(&rows), 2000.0);
    }

    #[test]
    fn html_escapes_and_counts_figures() {
        let sections = [Section {
            title: "a <b>".into(),
            text: vec!["x & y".into()],
            blocks: vec![
                Block::Figure {
                    name: "f".into(),
                    svg: "<svg></svg>".into(),
                },
                Block::Table(Table {
                    header: vec!["h".into()],
                    rows: vec![vec!["<v>".into()]],
                    dimmed: vec![true],
                }),
            ],
        }];
        let html = render_html("t", "i", &sections, 1);
        assert!(html.contains("a &lt;b&gt;") && html.contains("x &amp; y"));
        assert!(html.contains("<tr class=\"dim\"><td>&lt;v&gt;</td>"));
        assert!(html.contains("content=\"1\""));
    }
}
