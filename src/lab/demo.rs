//! `iolab demo`: the lab's main job in one command, on loopback, with no setup.
//!
//! A short sweep of every engine (64 B echo, a small ladder of Poisson rates, each engine its
//! own server process on CPU 0 and the generator on CPU 1), then the report: the same
//! measurement `iolab sweep` and `iolab report` make, sized to take about a minute.

use std::path::PathBuf;
use std::time::Duration;

use crate::engine::EngineKind;
use crate::lab::sweep::{ProfilePlan, SweepConfig};

/// The demo's engines: every kernel-TCP engine, then shared memory (no sockets at all), then
/// the user-space TCP/IP stack (in a network namespace of its own; skipped, with the reason,
/// where TAP devices or namespaces cannot be made).
pub fn engines() -> Vec<EngineKind> {
    EngineKind::ALL.to_vec()
}

/// The demo's ladder: from light load up to what one generator core can still drive.
pub const RATES: [f64; 4] = [10_000.0, 40_000.0, 80_000.0, 150_000.0];

/// The demo's sweep: every engine in `engines`, 64 B echo, `rates`, short points, each cell
/// settled sequentially (a lead of two verdicts, at most [`REPEAT`] valid repeats), within a
/// time budget.
pub fn config(engines: &[EngineKind], rates: Vec<f64>, out: PathBuf) -> anyhow::Result<SweepConfig> {
    let engines = engines.iter().map(|e| vec![e.name().to_string()]).collect();
    let mut cfg = SweepConfig::new(engines, rates, out)?;
    cfg.duration = Duration::from_millis(800);
    cfg.warmup = Duration::from_millis(300);
    cfg.repeat = REPEAT;
    cfg.settle_early = true;
    cfg.max_tries = max_tries(REPEAT);
    cfg.quiet.timeout = Duration::from_millis(500);
    cfg.budget = Some(BUDGET);
    // The lesson of the closed loop, on the engine most readers know (epoll, when it runs).
    cfg.compare_loops = cfg
        .engines
        .iter()
        .find(|e| e[0] == EngineKind::Epoll.name())
        .or(cfg.engines.first())
        .cloned();
    // Where the time goes, at one rate, for the engines whose models differ most: a thread
    // per connection, a scanned set, a readiness loop, a hand-off to workers, completions.
    let nearest = cfg
        .rates
        .iter()
        .copied()
        .min_by(|a, b| (a - PROFILE_RATE).abs().total_cmp(&(b - PROFILE_RATE).abs()))
        .unwrap_or(PROFILE_RATE);
    cfg.profile = Some(ProfilePlan {
        rates: Some(vec![nearest]),
        duration: Duration::from_millis(700),
        engines: Some(PROFILED.iter().map(|e| e.name().to_string()).collect()),
    });
    Ok(cfg)
}

/// The most valid repeats of one demo cell. A clear cell takes two; seven leaves a split cell
/// room to resolve (a lead of two) without letting one cell spend the budget.
pub const REPEAT: u32 = 7;

/// Tries of one cell: its repeats and two re-measurements of invalid ones.
pub fn max_tries(repeat: u32) -> u32 {
    repeat + 2
}

/// The engines the demo profiles, and the rate (one the generator drives cleanly; the
/// ladder's nearest to it).
pub const PROFILED: [EngineKind; 5] = [
    EngineKind::Threads,
    EngineKind::Select,
    EngineKind::Epoll,
    EngineKind::Pool,
    EngineKind::Uring,
];
pub const PROFILE_RATE: f64 = 40_000.0;

/// The demo starts no point after this long, so that with the closed-loop lesson, the
/// profiles (about 30 s) and the report it ends within three minutes.
pub const BUDGET: Duration = Duration::from_secs(125);

/// The points a demo measures when nothing is invalid, no cell is split and every engine's
/// walk reaches its fourth rate: two agreeing repeats per cell.
pub fn typical_points(cfg: &SweepConfig) -> usize {
    cfg.engines.len() * cfg.rates.len() * crate::lab::sweep::SETTLING_LEAD as usize
}

/// A results folder name that does not exist yet: `results/demo-<unix seconds>`.
pub fn default_out() -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from(format!("results/demo-{now}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_keeps_every_engine_and_its_typical_points_fit_the_budget() {
        let cfg = config(&engines(), RATES.to_vec(), PathBuf::from("x")).unwrap();
        assert_eq!(cfg.engines.len(), EngineKind::ALL.len());
        assert_eq!(cfg.rates, RATES.to_vec());
        // Two agreeing repeats of every cell, with a quarter of a second each for the quiet
        // check and a fresh server, inside the budget with room for re-measurements.
        let each = cfg.duration + cfg.warmup + Duration::from_millis(250);
        let typical = each * typical_points(&cfg) as u32;
        assert!(typical < BUDGET, "{typical:?}");
        assert!(cfg.budget == Some(BUDGET) && BUDGET < Duration::from_secs(170));
    }
}
