//! `iolab report`: a results folder in, a self-contained HTML page out.
//!
//! Reports read files, never processes: everything here comes from the folder a sweep wrote
//! (`meta.json`, `points.csv`), so a copied folder renders the same page offline. Plots are
//! SVG drawn with plotters and inlined; the page fetches nothing.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::sweep::{engine_order, knees, read_points, PointRow};

const PALETTE: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
];

/// Writes the HTML report for the sweep in `dir` to `out`.
pub fn write_html(dir: &Path, out: &Path, slo_us: f64) -> anyhow::Result<()> {
    let rows = read_points(dir)?;
    if rows.is_empty() {
        anyhow::bail!("{} has no points", dir.join("points.csv").display());
    }
    let meta = std::fs::read_to_string(dir.join("meta.json")).unwrap_or_default();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap_or(serde_json::Value::Null);
    let engines = engine_order(&rows);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>iolab report</title>\
         <style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         th{{background:#f4f4f4}}.note{{color:#555}}</style></head><body>\
         <h1>iolab report</h1><p class=\"note\">{}</p>",
        escape(&describe(&meta))
    );
    html += "<h2>Throughput and latency</h2><p>Each engine's p50 (dashed) and p99 (solid) \
             latency, from scheduled send to full reply, against the throughput it achieved. \
             Hollow markers are invalid points (the generator was the bottleneck, or the \
             arrivals were not Poisson): they are drawn, not trusted.</p>";
    html += &latency_plot(&rows, &engines)?;
    html += "<h2>Server CPU per request</h2><p>Server process CPU time (user + system, from \
             /proc) divided by the requests it completed, at each offered rate.</p>";
    html += &cpu_plot(&rows, &engines)?;
    let _ = write!(
        html,
        "<h2>Knee: highest rate with p99 &le; {:.0} &micro;s</h2>\
         <table><tr><th>engine</th><th>rate (rps)</th><th>invalid points left out</th></tr>",
        slo_us
    );
    for k in knees(&rows, slo_us) {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&k.engine),
            k.rate.map_or("none met it".to_string(), |b| format!("{b:.0}")),
            k.invalid
        );
    }
    html += "</table><h2>Invalid points</h2><ul>";
    for r in rows.iter().filter(|r| !r.valid) {
        let _ = write!(
            html,
            "<li>{} at {:.0} rps: {}</li>",
            escape(&r.engine),
            r.offered_rps,
            escape(&r.invalid_reason)
        );
    }
    html += "</ul></body></html>\n";
    std::fs::write(out, html).with_context(|| format!("cannot write {}", out.display()))
}

fn describe(meta: &serde_json::Value) -> String {
    let get = |k: &str| {
        meta.get(k)
            .map(|v| v.to_string().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    format!(
        "Workload: {}; {} connections; {} s per point after {} s warm-up. Machine: {} ({} CPUs, {}), \
         kernel {}. Server on CPUs {}, load on CPUs {}.",
        get("workload"),
        get("connections"),
        get("duration_s"),
        get("warmup_s"),
        get("hostname"),
        get("cpus"),
        get("cpu_model"),
        get("kernel"),
        get("server_cpus"),
        get("load_cpus")
    )
}

/// The chart every plot here is drawn on: an SVG of `size`, axes described and labelled in
/// whole numbers, and a legend in the upper left. `draw` adds the data; each series it labels
/// should take [`legend_mark`] as its legend.
fn figure<X, Y>(
    size: (u32, u32),
    x: X,
    y: Y,
    x_desc: &str,
    y_desc: &str,
    draw: impl FnOnce(
        &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<X::CoordDescType, Y::CoordDescType>>,
    ) -> anyhow::Result<()>,
) -> anyhow::Result<String>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        draw(&mut chart)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// A legend entry: a short line in the series' colour.
fn legend_mark(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

fn latency_plot(rows: &[PointRow], engines: &[String]) -> anyhow::Result<String> {
    let max_x = rows.iter().map(|r| r.achieved_rps).fold(1.0, f64::max) * 1.05;
    let min_y = rows.iter().map(|r| r.p50_us).fold(f64::MAX, f64::min).max(1.0) / 1.5;
    let max_y = rows.iter().map(|r| r.p99_us).fold(1.0, f64::max) * 1.5;
    let x_desc = "achieved throughput (requests/s)";
    let y_desc = "latency (us, log scale)";
    figure(
        (900, 500),
        0.0..max_x,
        (min_y..max_y).log_scale(),
        x_desc,
        y_desc,
        |chart| {
            for (i, engine) in engines.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let pts: Vec<&PointRow> = rows.iter().filter(|r| &r.engine == engine).collect();
                chart
                    .draw_series(LineSeries::new(
                        pts.iter().map(|r| (r.achieved_rps, r.p99_us)),
                        color.stroke_width(2),
                    ))?
                    .label(engine.as_str())
                    .legend(legend_mark(color));
                chart.draw_series(DashedLineSeries::new(
                    pts.iter().map(|r| (r.achieved_rps, r.p50_us)),
                    6,
                    4,
                    color.stroke_width(1),
                ))?;
                chart.draw_series(pts.iter().flat_map(|r| {
                    let style = if r.valid {
                        color.filled()
                    } else {
                        color.stroke_width(2)
                    };
                    [
                        Circle::new((r.achieved_rps, r.p99_us), 4, style),
                        Circle::new((r.achieved_rps, r.p50_us), 3, style),
                    ]
                }))?;
            }
            Ok(())
        },
    )
}

fn cpu_plot(rows: &[PointRow], engines: &[String]) -> anyhow::Result<String> {
    let max_x = rows.iter().map(|r| r.offered_rps).fold(1.0, f64::max) * 1.05;
    let max_y = rows
        .iter()
        .map(|r| r.server_cpu_us_per_request)
        .fold(1.0, f64::max)
        * 1.2;
    let (x_desc, y_desc) = ("offered load (requests/s)", "server CPU per request (us)");
    figure((900, 400), 0.0..max_x, 0.0..max_y, x_desc, y_desc, |chart| {
        for (i, engine) in engines.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| &r.engine == engine)
                .map(|r| (r.offered_rps, r.server_cpu_us_per_request))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(engine.as_str())
                .legend(legend_mark(color));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        Ok(())
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
