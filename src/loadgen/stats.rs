//! The statistics the generator reports about itself and the server: latency histograms and
//! the check that its arrivals really are Poisson.
//!
//! The Kolmogorov–Smirnov test compares the empirical distribution of interarrival times with
//! the exponential of the offered mean. Its p-value uses the asymptotic Kolmogorov
//! distribution with Stephens' small-sample correction, which is accurate to a few percent for
//! n ≥ 35. It runs on at most [`KS_MAX_SAMPLES`] gaps spread evenly over the run.
//!
//! A real sender cannot produce arbitrarily short gaps: on loopback one `write` runs the
//! receiver's TCP path too, several microseconds, so two sends scheduled closer than that
//! leave that far apart. The test therefore takes a *resolution*: it compares the two CDFs
//! only at x ≥ resolution (the probability mass below it is still counted, just not its
//! shape). Taking the supremum over fewer points makes the p-value conservative. The strict
//! test (resolution 0) is reported beside it, so nothing is hidden.

use hdrhistogram::Histogram;

/// Most interarrival gaps the K-S test looks at.
pub const KS_MAX_SAMPLES: usize = 5_000;

/// A latency histogram in nanoseconds, 1 ns to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("static histogram bounds are valid")
}

/// The result of a one-sample Kolmogorov–Smirnov test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KsResult {
    pub d: f64,
    pub p_value: f64,
    pub n: usize,
}

/// Tests `samples` against the exponential distribution with mean `mean`, comparing the
/// distribution functions at every sample at or above `resolution` (0: everywhere).
pub fn ks_exponential(samples: &[f64], mean: f64, resolution: f64) -> KsResult {
    let step = samples.len().div_ceil(KS_MAX_SAMPLES).max(1);
    let mut x: Vec<f64> = samples.iter().step_by(step).copied().collect();
    x.sort_by(f64::total_cmp);
    let n = x.len();
    if n == 0 || mean <= 0.0 {
        return KsResult {
            d: 0.0,
            p_value: f64::NAN,
            n,
        };
    }
    let mut d: f64 = 0.0;
    for (i, &v) in x.iter().enumerate().filter(|(_, &v)| v >= resolution) {
        let cdf = 1.0 - (-v.max(0.0) / mean).exp();
        d = d
            .max((i + 1) as f64 / n as f64 - cdf)
            .max(cdf - i as f64 / n as f64);
    }
    KsResult {
        d,
        p_value: kolmogorov_p(d, n),
        n,
    }
}

/// P(D_n > d) for the one-sample K-S statistic.
fn kolmogorov_p(d: f64, n: usize) -> f64 {
    let sqrt_n = (n as f64).sqrt();
    let lambda = (sqrt_n + 0.12 + 0.11 / sqrt_n) * d;
    if lambda < 0.2 {
        return 1.0;
    }
    let mut sum = 0.0;
    let mut sign = 1.0;
    for j in 1..=100 {
        let jf = j as f64;
        let term = sign * (-2.0 * jf * jf * lambda * lambda).exp();
        sum += term;
        if term.abs() < 1e-12 {
            break;
        }
        sign = -sign;
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// Mean and coefficient of variation (1 for an exponential, 0 for constant gaps).
pub fn mean_cv(samples: &[f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt() / mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Exp, Uniform};

    #[test]
    fn ks_accepts_exponential_and_rejects_others() {
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(3);
        let exp = Exp::new(1.0 / 50.0).unwrap();
        let good: Vec<f64> = (0..4000).map(|_| exp.sample(&mut rng)).collect();
        let r = ks_exponential(&good, 50.0, 0.0);
        assert!(r.p_value > 0.05, "{r:?}");
        assert_eq!(r.n, 4000);
        // Same shape, rate off by 10%.
        assert!(ks_exponential(&good, 55.0, 0.0).p_value < 0.01);
        // Uniform gaps with the right mean.
        let uni = Uniform::new(0.0, 100.0).unwrap();
        let bad: Vec<f64> = (0..4000).map(|_| uni.sample(&mut rng)).collect();
        assert!(ks_exponential(&bad, 50.0, 0.0).p_value < 1e-6);
        let (m, cv) = mean_cv(&good);
        assert!((m - 50.0).abs() < 3.0 && (cv - 1.0).abs() < 0.1, "{m} {cv}");
    }

    #[test]
    fn resolution_forgives_squeezed_short_gaps_and_nothing_else() {
        // What a sender with a 10-unit cost per send does to a Poisson stream of mean 200:
        // every gap shorter than 10 becomes 10.
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(5);
        let exp = Exp::new(1.0 / 200.0).unwrap();
        let squeezed: Vec<f64> = (0..5000).map(|_| f64::max(exp.sample(&mut rng), 10.0)).collect();
        assert!(
            ks_exponential(&squeezed, 200.0, 0.0).p_value < 0.01,
            "strict test sees it"
        );
        assert!(
            ks_exponential(&squeezed, 200.0, 20.0).p_value > 0.05,
            "above the resolution it is Poisson"
        );
        // A wrong rate or a wrong shape is still caught above the resolution.
        assert!(ks_exponential(&squeezed, 240.0, 20.0).p_value < 0.01);
        let uni = Uniform::new(0.0, 400.0).unwrap();
        let bad: Vec<f64> = (0..5000).map(|_| uni.sample(&mut rng)).collect();
        assert!(ks_exponential(&bad, 200.0, 20.0).p_value < 1e-6);
    }

    #[test]
    fn ks_subsamples_long_runs() {
        let gaps = vec![1.0; 100_000];
        assert!(ks_exponential(&gaps, 1.0, 0.0).n <= KS_MAX_SAMPLES);
    }

    #[test]
    fn kolmogorov_tail_matches_known_values() {
        // Critical values of the asymptotic distribution: P(K > 1.358) = 0.05, P(K > 1.628) = 0.01.
        let n = 1_000_000;
        let scale = (n as f64).sqrt();
        assert!((kolmogorov_p(1.358 / scale, n) - 0.05).abs() < 0.002);
        assert!((kolmogorov_p(1.628 / scale, n) - 0.01).abs() < 0.001);
        assert_eq!(kolmogorov_p(0.0, 10), 1.0);
    }
}
