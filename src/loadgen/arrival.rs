//! Arrival processes: when each request is *scheduled* to leave.
//!
//! Every connection is its own arrival process at `rate / connections`; their superposition
//! is the offered load. For Poisson arrivals the gaps are exponential (memoryless: the client
//! does not wait for anything before sending, which is what makes the loop open). Constant
//! arrivals space each connection evenly, with phases staggered so that the merged stream is
//! evenly spaced too. Schedules are absolute: a late send never shifts the ones after it.

use rand::Rng;
use rand_distr::{Distribution, Exp};

/// The shape of the arrival process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrivalKind {
    /// Exponential interarrival times (an open-loop Poisson process).
    Poisson,
    /// Evenly spaced sends.
    Constant,
}

/// One connection's arrival process.
#[derive(Debug, Clone)]
pub struct Arrivals {
    kind: ArrivalKind,
    mean_gap_ns: f64,
    exp: Option<Exp<f64>>,
}

impl Arrivals {
    /// `rate` is this connection's share of the offered load, in requests per second (> 0).
    pub fn new(kind: ArrivalKind, rate: f64) -> Self {
        let mean_gap_ns = 1e9 / rate;
        Arrivals {
            kind,
            mean_gap_ns,
            exp: Exp::new(1.0 / mean_gap_ns).ok(),
        }
    }

    /// Offset of the first arrival from the start of the run, for connection `index` of
    /// `count` sharing the load.
    pub fn first(&self, rng: &mut impl Rng, index: usize, count: usize) -> f64 {
        match self.kind {
            ArrivalKind::Poisson => self.gap(rng),
            ArrivalKind::Constant => self.mean_gap_ns * (index as f64 + 1.0) / count.max(1) as f64,
        }
    }

    /// Time from one arrival to the next.
    pub fn gap(&self, rng: &mut impl Rng) -> f64 {
        match (self.kind, &self.exp) {
            (ArrivalKind::Poisson, Some(exp)) => exp.sample(rng),
            _ => self.mean_gap_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sansio::stats::ks_exponential;
    use rand::SeedableRng;

    fn merged(kind: ArrivalKind, rate: f64, conns: usize, n_per_conn: usize) -> Vec<f64> {
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(7);
        let mut times = Vec::new();
        for i in 0..conns {
            let a = Arrivals::new(kind, rate / conns as f64);
            let mut t = a.first(&mut rng, i, conns);
            for _ in 0..n_per_conn {
                times.push(t);
                t += a.gap(&mut rng);
            }
        }
        times.sort_by(f64::total_cmp);
        // Only the stretch where every connection is still running.
        let horizon = n_per_conn as f64 * 1e9 / (rate / conns as f64) * 0.9;
        times.retain(|&t| t < horizon);
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    #[test]
    fn superposed_poisson_connections_are_poisson_at_the_total_rate() {
        let gaps = merged(ArrivalKind::Poisson, 10_000.0, 16, 2000);
        let ks = ks_exponential(&gaps, 1e9 / 10_000.0, 0.0);
        assert!(ks.p_value > 0.01, "{ks:?}");
        // The wrong rate is caught.
        let ks = ks_exponential(&gaps, 1e9 / 9_000.0, 0.0);
        assert!(ks.p_value < 0.001, "{ks:?}");
    }

    #[test]
    fn constant_arrivals_are_evenly_spaced_and_not_poisson() {
        let gaps = merged(ArrivalKind::Constant, 1000.0, 4, 100);
        for g in &gaps {
            assert!((g - 1e6).abs() < 1.0, "gap {g}");
        }
        assert!(ks_exponential(&gaps, 1e6, 0.0).p_value < 1e-6);
    }
}
