//! `iolab demo`: the lab's main job in one command, on loopback, with no setup.
//!
//! A short sweep of every engine (64 B echo, a small ladder of Poisson rates, each engine its
//! own server process on CPU 0 and the generator on CPU 1), then the report: the same
//! measurement `iolab sweep` and `iolab report` make, sized to take about a minute.

use std::path::PathBuf;
use std::time::Duration;

use crate::engine::EngineKind;
use crate::sweep::SweepConfig;

/// The demo's engines: every kernel-TCP engine, then shared memory (no sockets at all), then
/// the user-space TCP/IP stack (in a network namespace of its own; skipped, with the reason,
/// where TAP devices or namespaces cannot be made).
pub fn engines() -> Vec<EngineKind> {
    EngineKind::ALL
        .iter()
        .copied()
        .chain([EngineKind::Shm, EngineKind::Userspace])
        .collect()
}

/// The demo's ladder: from light load up to what one generator core can still drive.
pub const RATES: [f64; 4] = [10_000.0, 40_000.0, 80_000.0, 150_000.0];

/// The demo's sweep: every engine in `engines`, 64 B echo, `rates`, short points.
pub fn config(engines: &[EngineKind], rates: Vec<f64>, out: PathBuf) -> anyhow::Result<SweepConfig> {
    let engines = engines.iter().map(|e| vec![e.name().to_string()]).collect();
    let mut cfg = SweepConfig::new(engines, rates, out)?;
    cfg.duration = Duration::from_secs(1);
    cfg.warmup = Duration::from_millis(500);
    Ok(cfg)
}

/// The longest the sweep can take: every engine through every rate, every point measured
/// again (engines that saturate stop early, and most points count the first time).
pub fn longest(cfg: &SweepConfig) -> Duration {
    (cfg.duration + cfg.warmup) * (cfg.engines.len() * cfg.rates.len()) as u32 * cfg.attempts.max(1)
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
    fn the_demo_fits_in_two_minutes() {
        let cfg = config(&engines(), RATES.to_vec(), PathBuf::from("x")).unwrap();
        assert_eq!(cfg.engines.len(), EngineKind::ALL.len() + 2);
        // Every point once (the usual case) well under a minute and a half: 66 s of points
        // for eleven engines, plus server start-ups and the report.
        let once = (cfg.duration + cfg.warmup) * (cfg.engines.len() * cfg.rates.len()) as u32;
        assert!(once <= Duration::from_secs(70), "{once:?}");
        assert!(longest(&cfg) <= 2 * once);
    }
}
