//! The report's plots, drawn with plotters into SVG strings.
//!
//! Every plot is a function of data already read from the results folder, and every one is
//! drawn on the same frame ([`figure`]) so axes, fonts and legends look alike across the page.

use hdrhistogram::Histogram;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::lab::results::{cells, Cell, Point, Spread};

/// One colour per engine, eleven of them, so no two engines of a full demo share one.
pub const PALETTE: [RGBColor; 11] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
    RGBColor(0, 0, 0),
];

/// How an axis is described and labelled.
pub struct Axis<'a> {
    pub desc: &'a str,
    pub label: &'a dyn Fn(&f64) -> String,
}

/// Labels in whole numbers.
pub fn whole(v: &f64) -> String {
    format!("{v:.0}")
}

/// Labelled points for a log axis over [lo, hi]: 1, 2, 5 times the powers of ten (a bare
/// log axis labels only the powers, which may be one label or none).
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.max(1e-9).log10().floor());
    while decade <= hi && ticks.len() < 64 {
        for m in [1.0, 2.0, 5.0] {
            let t = m * decade;
            if (lo..=hi).contains(&t) {
                ticks.push(t);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// Rates in thousands: 150k.
pub fn thousands(v: &f64) -> String {
    if *v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        format!("{}k", (v / 100.0).round() / 10.0)
    } else {
        format!("{v:.0}")
    }
}

/// A "nines" axis value as a percentile: 1 → 90%, 2 → 99%, 3 → 99.9%; blank between.
pub fn nines_percent(v: &f64) -> String {
    let n = v.round();
    if (v - n).abs() > 1e-9 || n < 0.0 {
        return String::new();
    }
    if n == 0.0 {
        return "0%".into();
    }
    let decimals = (n as usize).saturating_sub(2);
    format!("{:.*}%", decimals, 100.0 * (1.0 - 10f64.powf(-n)))
}

/// The chart every plot here is drawn on: an SVG of `size` with a caption, described axes,
/// and a legend in the upper left. `draw` adds the data; each series it labels should take
/// [`legend_mark`] as its legend.
pub fn figure<X, Y>(
    size: (u32, u32),
    caption: &str,
    legend_at: SeriesLabelPosition,
    (x, x_axis): (X, Axis<'_>),
    (y, y_axis): (Y, Axis<'_>),
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
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .x_desc(x_axis.desc)
            .y_desc(y_axis.desc)
            .x_label_formatter(x_axis.label)
            .y_label_formatter(y_axis.label)
            .x_labels(10)
            .y_labels(8)
            // A log axis otherwise draws every minor division and greys the plot.
            .x_max_light_lines(2)
            .y_max_light_lines(2)
            .draw()?;
        draw(&mut chart)?;
        chart
            .configure_series_labels()
            .position(legend_at)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// A legend entry: a short line in the series' colour.
pub fn legend_mark(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

/// One latency percentile against achieved throughput, a line per engine through the medians
/// of each rate's valid repeats, a vertical bar over the range of those repeats; a rate with
/// no valid repeat is a hollow marker at its last measurement. With `slo_us`, the SLO is drawn
/// as a grey line; latencies above `cap_us` sit on the top edge.
pub fn latency_vs_throughput(
    rows: &[Point],
    engines: &[String],
    name: &str,
    pick: fn(&Cell<'_>) -> Option<Spread>,
    raw: fn(&Point) -> f64,
    slo_us: Option<f64>,
    cap_us: f64,
) -> anyhow::Result<String> {
    let all = cells(rows);
    let max_x = rows.iter().map(|r| r.achieved_rps).fold(1.0, f64::max) * 1.05;
    let cap = |v: f64| v.min(cap_us);
    let min_y = rows.iter().map(|r| cap(raw(r))).fold(f64::MAX, f64::min).max(1.0) / 1.5;
    let mut max_y = (rows.iter().map(|r| cap(raw(r))).fold(1.0, f64::max) * 1.5).min(cap_us);
    if let Some(slo) = slo_us {
        max_y = max_y.max((slo * 1.5).min(cap_us));
    }
    let caption = format!("{name} latency vs throughput (median of repeats, bars: their range)");
    let x_axis = Axis {
        desc: "achieved throughput (requests/s)",
        label: &thousands,
    };
    let y_desc = format!("{name} latency (us, log scale)");
    let y_axis = Axis {
        desc: &y_desc,
        label: &whole,
    };
    figure(
        (900, 380),
        &caption,
        SeriesLabelPosition::UpperLeft,
        (0.0..max_x, x_axis),
        (
            (min_y..max_y)
                .log_scale()
                .with_key_points(log_ticks(min_y, max_y)),
            y_axis,
        ),
        |chart| {
            if let Some(slo) = slo_us {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(0.0, slo), (max_x, slo)],
                        8,
                        5,
                        RGBColor(150, 150, 150).stroke_width(1),
                    ))?
                    .label(format!("SLO {slo:.0} us"))
                    .legend(legend_mark(RGBColor(150, 150, 150)));
            }
            for (i, engine) in engines.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let mine: Vec<&Cell> = all.iter().filter(|c| c.engine == engine.as_str()).collect();
                // (x, median, min, max) per cell with valid repeats.
                let measured: Vec<(f64, f64, f64, f64)> = mine
                    .iter()
                    .filter_map(|c| {
                        let y = pick(c)?;
                        let x = c.plain(|p| p.achieved_rps)?.median;
                        Some((x, cap(y.median), cap(y.min), cap(y.max)))
                    })
                    .collect();
                chart
                    .draw_series(LineSeries::new(
                        measured.iter().map(|m| (m.0, m.1)),
                        color.stroke_width(2),
                    ))?
                    .label(engine.as_str())
                    .legend(legend_mark(color));
                chart.draw_series(
                    measured
                        .iter()
                        .map(|m| Circle::new((m.0, m.1), 4, color.filled())),
                )?;
                chart.draw_series(
                    measured
                        .iter()
                        .filter(|m| m.3 > m.2)
                        .map(|m| PathElement::new(vec![(m.0, m.2), (m.0, m.3)], color.stroke_width(1))),
                )?;
                // Rates never measured validly: where their last try landed, hollow (a rate
                // beyond the generator's reach was not tried, and has no mark).
                let hollow: Vec<(f64, f64)> = mine
                    .iter()
                    .filter(|c| c.valid().next().is_none())
                    .filter_map(|c| c.points.iter().rev().find(|p| !p.beyond_reach))
                    .map(|p| (p.achieved_rps, cap(raw(p))))
                    .collect();
                chart.draw_series(hollow.iter().map(|&p| Circle::new(p, 4, WHITE.filled())))?;
                chart.draw_series(hollow.iter().map(|&p| Circle::new(p, 4, color.stroke_width(2))))?;
            }
            Ok(())
        },
    )
}

/// Server CPU time per request against offered load: the median over each rate's valid
/// repeats, a bar over their range.
pub fn cpu_per_request(rows: &[Point], engines: &[String]) -> anyhow::Result<String> {
    let all = cells(rows);
    let max_x = rows.iter().map(|r| r.offered_rps).fold(1.0, f64::max) * 1.05;
    let max_y = rows
        .iter()
        .filter(|r| r.valid)
        .map(|r| r.server_cpu_us_per_request)
        .fold(1.0, f64::max)
        * 1.4;
    let x_axis = Axis {
        desc: "offered load (requests/s)",
        label: &thousands,
    };
    let y_axis = Axis {
        desc: "server CPU per request (us)",
        label: &whole,
    };
    figure(
        (900, 380),
        "Server CPU time per request (median of repeats, bars: their range)",
        SeriesLabelPosition::UpperRight,
        (0.0..max_x, x_axis),
        (0.0..max_y, y_axis),
        |chart| {
            for (i, engine) in engines.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let pts: Vec<(f64, Spread)> = all
                    .iter()
                    .filter(|c| c.engine == engine.as_str())
                    .filter_map(|c| Some((c.rate, c.plain(|p| p.server_cpu_us_per_request)?)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(
                        pts.iter().map(|(x, s)| (*x, s.median)),
                        color.stroke_width(2),
                    ))?
                    .label(engine.as_str())
                    .legend(legend_mark(color));
                chart.draw_series(
                    pts.iter()
                        .map(|(x, s)| Circle::new((*x, s.median), 3, color.filled())),
                )?;
                chart.draw_series(
                    pts.iter().filter(|(_, s)| s.max > s.min).map(|(x, s)| {
                        PathElement::new(vec![(*x, s.min), (*x, s.max)], color.stroke_width(1))
                    }),
                )?;
            }
            Ok(())
        },
    )
}

/// One engine's latency distribution for [`latency_cdfs`].
pub struct Distribution<'a> {
    pub engine: &'a str,
    /// Index into [`PALETTE`], so an engine keeps its colour across plots.
    pub color: usize,
    pub valid: bool,
    pub latency_ns: &'a Histogram<u64>,
}

/// Latency CDFs on a "nines" axis: y = −log10(1 − q), so 90%, 99%, 99.9% are evenly spaced
/// and the tail, where engines differ, gets the room.
pub fn latency_cdfs(caption: &str, dists: &[Distribution<'_>]) -> anyhow::Result<String> {
    let samples = dists
        .iter()
        .map(|d| d.latency_ns.len())
        .max()
        .unwrap_or(1)
        .max(10);
    // No deeper than the data: beyond 1/n the quantiles are all the maximum.
    let max_nines = (samples as f64).log10().floor().clamp(1.0, 5.0);
    let curve = |h: &Histogram<u64>| -> Vec<(f64, f64)> {
        (0..=(max_nines as usize * 40))
            .map(|i| {
                let nines = i as f64 / 40.0;
                let q = 1.0 - 10f64.powf(-nines);
                ((h.value_at_quantile(q) as f64 / 1e3).max(0.1), nines)
            })
            .collect()
    };
    let curves: Vec<Vec<(f64, f64)>> = dists.iter().map(|d| curve(d.latency_ns)).collect();
    let all_x = || curves.iter().flatten().map(|p| p.0);
    let min_x = all_x().fold(f64::MAX, f64::min).max(0.1) / 1.3;
    let max_x = all_x().fold(1.0, f64::max) * 1.3;
    let x_axis = Axis {
        desc: "latency (us, log scale)",
        label: &whole,
    };
    let y_axis = Axis {
        desc: "fraction of requests faster (nines)",
        label: &nines_percent,
    };
    figure(
        (900, 450),
        caption,
        SeriesLabelPosition::UpperLeft,
        (
            (min_x..max_x)
                .log_scale()
                .with_key_points(log_ticks(min_x, max_x)),
            x_axis,
        ),
        (0.0..max_nines, y_axis),
        |chart| {
            for (d, pts) in dists.iter().zip(curves) {
                let color = PALETTE[d.color % PALETTE.len()];
                let label = if d.valid {
                    d.engine.to_string()
                } else {
                    format!("{} (invalid point)", d.engine)
                };
                let series = if d.valid {
                    chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                } else {
                    chart.draw_series(DashedLineSeries::new(pts, 6, 4, color.stroke_width(2)))?
                };
                series.label(label).legend(legend_mark(color));
            }
            Ok(())
        },
    )
}

const DENSITY_BINS: usize = 60;

/// The bars of a density histogram of `samples` on [0, max): each bar's left edge and its
/// height, the share of all samples in it per unit of x (so samples past `max` lower every
/// bar rather than vanishing from the scale).
fn density_bars(samples: &[f64], max: f64) -> Vec<(f64, f64)> {
    let width = max / DENSITY_BINS as f64;
    let mut counts = [0usize; DENSITY_BINS];
    for &s in samples {
        if (0.0..max).contains(&s) {
            counts[((s / width) as usize).min(DENSITY_BINS - 1)] += 1;
        }
    }
    let n = samples.len().max(1) as f64;
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| (i as f64 * width, c as f64 / (n * width)))
        .collect()
}

/// A histogram of `samples` on [0, max) as a density, with `density` (the model) overlaid.
pub fn histogram_with_model(
    caption: &str,
    x_desc: &str,
    samples: &[f64],
    max: f64,
    model_label: &str,
    density: &dyn Fn(f64) -> f64,
) -> anyhow::Result<String> {
    let bars = density_bars(samples, max);
    let width = max / DENSITY_BINS as f64;
    let model: Vec<(f64, f64)> = (0..=200)
        .map(|i| {
            let x = max * i as f64 / 200.0;
            (x, density(x))
        })
        .collect();
    let max_y = bars
        .iter()
        .chain(&model)
        .map(|p| p.1)
        .filter(|y| y.is_finite())
        .fold(0.0, f64::max)
        * 1.4;
    let small = |v: &f64| format!("{v:.3}");
    let x_axis = Axis {
        desc: x_desc,
        label: &whole,
    };
    let y_axis = Axis {
        desc: "density (per us)",
        label: &small,
    };
    let bar_color = PALETTE[0];
    figure(
        (440, 330),
        caption,
        SeriesLabelPosition::UpperRight,
        (0.0..max, x_axis),
        (0.0..max_y.max(1e-9), y_axis),
        |chart| {
            chart
                .draw_series(
                    bars.iter().map(|&(x, y)| {
                        Rectangle::new([(x, 0.0), (x + width, y)], bar_color.mix(0.45).filled())
                    }),
                )?
                .label("measured")
                .legend(legend_mark(bar_color));
            let red = PALETTE[3];
            chart
                .draw_series(LineSeries::new(model, red.stroke_width(2)))?
                .label(model_label)
                .legend(legend_mark(red));
            Ok(())
        },
    )
}

/// The Erlang-k density (sum of k exponentials of mean `mean`) at x, computed in log space.
pub fn erlang_density(x: f64, k: usize, mean: f64) -> f64 {
    if x <= 0.0 {
        return if k == 1 { 1.0 / mean } else { 0.0 };
    }
    let y = x / mean;
    let k = k.max(1);
    let ln_fact: f64 = (1..k).map(|i| (i as f64).ln()).sum();
    ((k - 1) as f64 * y.ln() - y - ln_fact).exp() / mean
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;
    use rand_distr::Distribution as _;

    #[test]
    fn erlang_density_integrates_to_one() {
        for k in [1, 2, 10, 40] {
            let mean = 7.0;
            let top = mean * (k as f64 + 10.0 * (k as f64).sqrt() + 10.0);
            let steps = 20_000;
            let dx = top / steps as f64;
            let total: f64 = (0..steps)
                .map(|i| erlang_density((i as f64 + 0.5) * dx, k, mean) * dx)
                .sum();
            assert!((total - 1.0).abs() < 1e-3, "k={k}: {total}");
        }
    }

    #[test]
    fn axis_labels_read_as_people_write_them() {
        assert_eq!(thousands(&150_000.0), "150k");
        assert_eq!(thousands(&12_500.0), "12.5k");
        assert_eq!(thousands(&0.0), "0");
        assert_eq!(nines_percent(&0.0), "0%");
        assert_eq!(nines_percent(&1.0), "90%");
        assert_eq!(nines_percent(&2.0), "99%");
        assert_eq!(nines_percent(&3.0), "99.9%");
        assert_eq!(nines_percent(&5.0), "99.999%");
        assert_eq!(nines_percent(&2.5), "");
        assert_eq!(log_ticks(15.0, 250.0), vec![20.0, 50.0, 100.0, 200.0]);
        assert_eq!(log_ticks(1.0, 1.5), vec![1.0]);
    }

    #[test]
    fn histogram_density_matches_its_samples() {
        // Uniform samples on [0, 10): every bar sits at density 0.1.
        let samples: Vec<f64> = (0..6000).map(|i| (i % 600) as f64 / 60.0).collect();
        let bars = density_bars(&samples, 10.0);
        assert_eq!(bars.len(), DENSITY_BINS);
        for (i, &(x, y)) in bars.iter().enumerate() {
            assert!((x - i as f64 / 6.0).abs() < 1e-9, "bar {i} starts at {x}");
            assert!((y - 0.1).abs() < 1e-9, "bar {i} at {x}: density {y}");
        }
        // Exponential samples of mean 2: the bars follow e^(-x/2)/2, and a quarter of the
        // samples past the axis leave the bars' area at three quarters, not rescaled to one.
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(5);
        let exp = rand_distr::Exp::new(0.5).unwrap();
        let mut samples: Vec<f64> = (0..200_000).map(|_| exp.sample(&mut rng)).collect();
        samples.extend(std::iter::repeat_n(1e9, samples.len() / 3));
        let bars = density_bars(&samples, 6.0);
        let width = 6.0 / DENSITY_BINS as f64;
        let area: f64 = bars.iter().map(|b| b.1 * width).sum();
        let inside = 1.0 - (-3.0f64).exp(); // P(X < 6)
        assert!((area - 0.75 * inside).abs() < 0.01, "area {area}");
        for &(x, y) in &bars[..20] {
            let mid = x + width / 2.0;
            let model = 0.75 * (-mid / 2.0).exp() / 2.0;
            assert!((y - model).abs() < 0.05 * model, "at {mid}: {y} vs {model}");
        }
        let svg = histogram_with_model("t", "x", &samples, 6.0, "exp", &|x| (-x / 2.0).exp() / 2.0).unwrap();
        assert!(svg.starts_with("<svg"));
    }
}
