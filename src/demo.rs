//! `iolab demo`: the lab's main job in one command, on loopback, with no setup.
//!
//! Each engine in turn is started in this process on 127.0.0.1 (port 0) and driven by the
//! same open-loop Poisson load; the results land in one comparison table. With two or more
//! CPUs the server runs on CPU 0 and the generator on CPU 1, so they do not fight.

use std::time::Duration;

use crate::engine::{self, EngineKind, ServeConfig};
use crate::loadgen::{self, fmt_us, LoadConfig, LoadReport};

#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub engines: Vec<EngineKind>,
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub request_size: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            engines: EngineKind::ALL.to_vec(),
            rate: 5_000.0,
            duration: Duration::from_secs(3),
            warmup: Duration::from_millis(500),
            connections: 16,
            request_size: 64,
        }
    }
}

/// One engine's row.
#[derive(Debug)]
pub struct DemoRow {
    pub engine: EngineKind,
    pub report: LoadReport,
}

pub fn run(cfg: &DemoConfig, mut progress: impl FnMut(&str)) -> anyhow::Result<Vec<DemoRow>> {
    let pinned = engine::num_cpus() >= 2;
    let mut rows = Vec::new();
    for &kind in &cfg.engines {
        progress(&format!(
            "  {kind:<8} {} rps Poisson, {} connections, {} B echo, {:.1}s ...",
            cfg.rate,
            cfg.connections,
            cfg.request_size,
            (cfg.duration + cfg.warmup).as_secs_f64()
        ));
        let mut serve = ServeConfig::new(kind, "127.0.0.1:0".parse()?);
        serve.log_errors = true;
        if pinned {
            serve.pin = vec![0];
        }
        let server = match engine::start(serve) {
            Ok(s) => s,
            // An engine this machine cannot run (io_uring denied, say) is skipped, with why.
            Err(e) if cfg.engines.len() > 1 => {
                progress(&format!("  {kind:<8} skipped: {e:#}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut load = LoadConfig::new(server.addr, cfg.rate, cfg.duration);
        load.warmup = cfg.warmup;
        load.connections = cfg.connections;
        load.request_size = loadgen::spec::SizeDist::Fixed(cfg.request_size);
        if pinned {
            load.pin = vec![1];
        }
        let report = loadgen::run(load, &mut |_| {})?;
        server.stop()?;
        if let Some(e) = &report.error {
            anyhow::bail!("the {kind} engine failed under the demo load: {e}");
        }
        rows.push(DemoRow { engine: kind, report });
    }
    Ok(rows)
}

/// The comparison table.
pub fn table(rows: &[DemoRow]) -> String {
    let mut t = format!(
        "{:<9} {:>10} {:>10} {:>9} {:>9} {:>9} {:>10} {:>7}\n",
        "engine", "offered", "achieved", "p50", "p99", "p99.9", "send-lag99", "errors"
    );
    for r in rows {
        let rep = &r.report;
        t += &format!(
            "{:<9} {:>10.0} {:>10.0} {:>9} {:>9} {:>9} {:>10} {:>7}\n",
            r.engine.name(),
            rep.config.rate,
            rep.achieved_rps(),
            fmt_us(rep.m.latency.value_at_quantile(0.5)),
            fmt_us(rep.m.latency.value_at_quantile(0.99)),
            fmt_us(rep.m.latency.value_at_quantile(0.999)),
            fmt_us(rep.m.send_lag.value_at_quantile(0.99)),
            rep.errors()
        );
    }
    t
}
