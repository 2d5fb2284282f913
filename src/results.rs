//! The results folder's format, shared by the sweep that writes it and the report that reads
//! it: one [`Point`] per row of `points.csv`, and the knee rule ("the highest rate each engine
//! sustains with p99 under X"). No I/O beyond reading the folder.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One row of points.csv.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Point {
    pub engine: String,
    pub workload: String,
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub send_lag_p99_us: f64,
    /// Fraction of the run the generator spent working rather than waiting.
    pub generator_busy: f64,
    pub ks_p_value: f64,
    pub ks_d: f64,
    pub errors: u64,
    pub server_cpu_s: f64,
    pub client_cpu_s: f64,
    /// Server CPU time per completed request.
    pub server_cpu_us_per_request: f64,
    pub valid: bool,
    /// Why the point is not a valid measurement (empty when it is).
    pub invalid_reason: String,
    pub saturated: bool,
    pub summary: String,
    pub hdr_log: String,
    pub gaps: String,
    /// 1 for a rate's first measurement; 2 and up when a saturated or invalid point was
    /// measured again.
    pub attempt: u32,
}

/// Reads a results folder's points.csv.
pub fn read_points(dir: &Path) -> anyhow::Result<Vec<Point>> {
    let path = dir.join("points.csv");
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for row in reader.deserialize() {
        rows.push(row.with_context(|| format!("a bad row in {}", path.display()))?);
    }
    Ok(rows)
}

/// Engines in the order the sweep ran them.
pub fn engine_order(rows: &[Point]) -> Vec<String> {
    let mut engines: Vec<String> = Vec::new();
    for r in rows {
        if !engines.contains(&r.engine) {
            engines.push(r.engine.clone());
        }
    }
    engines
}

/// One engine's row of the knee table.
#[derive(Debug, Clone, PartialEq)]
pub struct Knee {
    pub engine: String,
    /// The highest offered rate whose point was valid, not saturated and had p99 within
    /// the SLO (`None`: no point met it).
    pub rate: Option<f64>,
    /// Points left out because they were not valid measurements.
    pub invalid: usize,
    /// An invalid point above the knee met the SLO: the engine may sustain more than the
    /// generator could show, so the knee is a lower bound.
    pub lower_bound: bool,
}

/// The knee table, one row per engine.
pub fn knees(rows: &[Point], slo_us: f64) -> Vec<Knee> {
    engine_order(rows)
        .into_iter()
        .map(|engine| {
            let mine = || rows.iter().filter(|r| r.engine == engine);
            let rate = mine()
                .filter(|r| r.valid && !r.saturated && r.p99_us <= slo_us)
                .map(|r| r.offered_rps)
                .fold(None, |acc: Option<f64>, r| Some(acc.map_or(r, |a| a.max(r))));
            let invalid = mine().filter(|r| !r.valid).count();
            let lower_bound = mine().any(|r| {
                !r.valid && !r.saturated && r.p99_us <= slo_us && rate.is_none_or(|k| r.offered_rps > k)
            });
            Knee {
                engine,
                rate,
                invalid,
                lower_bound,
            }
        })
        .collect()
}

/// The knee table as the terminal shows it.
pub fn knee_table(rows: &[Point], slo: Duration) -> String {
    let slo_us = slo.as_secs_f64() * 1e6;
    let mut t = format!(
        "highest rate with p99 <= {} (valid, unsaturated points)\n",
        crate::units::Dur(slo)
    );
    for k in knees(rows, slo_us) {
        let mut notes = Vec::new();
        if k.invalid > 0 {
            notes.push(format!("{} invalid point(s) left out", k.invalid));
        }
        if k.lower_bound {
            notes.push("the generator could not show more: a lower bound".to_string());
        }
        let note = if notes.is_empty() {
            String::new()
        } else {
            format!("  ({})", notes.join("; "))
        };
        let engine = &k.engine;
        let at_least = if k.lower_bound { ">=" } else { "" };
        match k.rate {
            Some(r) => t += &format!("  {engine:<28} {at_least:>2}{r:>10.0} rps{note}\n"),
            None => t += &format!("  {engine:<28} {:>12} (no point met it){note}\n", "-"),
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knee_is_the_highest_good_point() {
        let row = |engine: &str, rate: f64, p99: f64, valid: bool, saturated: bool| Point {
            engine: engine.into(),
            offered_rps: rate,
            achieved_rps: rate,
            p99_us: p99,
            valid,
            saturated,
            ..Point::default()
        };
        let rows = [
            row("a", 1000.0, 100.0, true, false),
            row("a", 2000.0, 200.0, true, false),
            row("a", 4000.0, 300.0, false, false), // invalid: not counted
            row("a", 8000.0, 5000.0, true, true),
            row("b", 1000.0, 2000.0, true, true),
            // c met the SLO only where the generator could not be trusted.
            row("c", 1000.0, 100.0, true, false),
            row("c", 2000.0, 150.0, false, false),
        ];
        let knee = |engine: &str, rate, invalid, lower_bound| Knee {
            engine: engine.into(),
            rate,
            invalid,
            lower_bound,
        };
        assert_eq!(
            knees(&rows, 1000.0),
            vec![
                knee("a", Some(2000.0), 1, true),
                knee("b", None, 0, false),
                knee("c", Some(1000.0), 1, true)
            ]
        );
        // The same invalid point above the SLO says nothing about the knee.
        assert!(!knees(&rows, 120.0)[2].lower_bound);
    }
}
