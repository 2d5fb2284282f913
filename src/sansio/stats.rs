//! The statistics the generator reports about itself and the server, and the report re-reads:
//! latency histograms and the check that arrivals really are Poisson. Pure math, no I/O.
//!
//! The Kolmogorov–Smirnov test compares the empirical distribution of interarrival times with
//! the exponential of the offered mean. Its p-value uses the asymptotic Kolmogorov
//! distribution with Stephens' small-sample correction, which is accurate to a few percent for
//! n ≥ 35. It runs on at most [`KS_MAX_SAMPLES`] gaps spread evenly over the run.
//!
//! A real sender cannot produce arbitrarily short gaps: on loopback one `write` runs the
//! receiver's TCP path too, several microseconds, so two sends scheduled closer than that
//! leave that far apart, and a sender that wakes late sends what fell due in a burst. Its
//! arrivals are therefore Poisson only at timescales longer than its own cost and jitter. The
//! check says at which timescale it judges them:
//!
//! - a *resolution*: the two CDFs are compared only at x ≥ resolution (the probability mass
//!   below it is still counted, just not its shape); taking the supremum over fewer points
//!   makes the p-value conservative;
//! - a *timescale* T: the test runs on sums of k = rate·T consecutive gaps, which for a
//!   Poisson process follow the Erlang-k distribution. Microsecond jitter moves only the ends
//!   of each window, while a wrong rate, too-regular or too-bursty sending, or stalls still
//!   change the window lengths and are caught (see the tests). With T no longer than the
//!   generator's send-lag bound, what passes is Poisson at every scale the lag bound admits.
//!
//! The strict test (every gap, resolution 0) is reported beside it, so nothing is hidden.
//!
//! Percentiles carry confidence intervals from order statistics, as Lancet reports them: the
//! number of samples below the true q-quantile is Binomial(n, q), so the 95% interval is the
//! pair of order statistics whose ranks that binomial brackets with 95% probability. No
//! assumption about the latency distribution is needed, only independent samples (which an
//! open-loop run's requests roughly are; a stall that delays many requests together makes the
//! interval too narrow, which is why a sweep also repeats points).
//!
//! Repeats of a point are summarised robustly: the median, and the range of the repeats.

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
    ks_erlang(samples, mean, 1, resolution)
}

/// Most consecutive gaps [`ks_erlang`] sums into one sample; beyond it the Erlang CDF's terms
/// leave the range of f64.
pub const MAX_GAPS_PER_SAMPLE: usize = 500;

/// How many consecutive gaps of a `rate`-per-second process span `timescale`.
pub fn gaps_per_sample(rate: f64, timescale: std::time::Duration) -> usize {
    let k = (rate * timescale.as_secs_f64()).round();
    if k.is_finite() && k >= 1.0 {
        (k as usize).min(MAX_GAPS_PER_SAMPLE)
    } else {
        1
    }
}

/// Tests the sums of `k` consecutive gaps (non-overlapping windows) against the Erlang-k
/// distribution of a Poisson process with mean gap `mean`, comparing at sums ≥ `resolution`.
pub fn ks_erlang(gaps: &[f64], mean: f64, k: usize, resolution: f64) -> KsResult {
    let k = k.clamp(1, MAX_GAPS_PER_SAMPLE);
    let sums: Vec<f64> = gaps.chunks_exact(k).map(|w| w.iter().sum()).collect();
    let step = sums.len().div_ceil(KS_MAX_SAMPLES).max(1);
    let mut x: Vec<f64> = sums.into_iter().step_by(step).collect();
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
        let cdf = erlang_cdf(v, k, mean);
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

/// P(X ≤ x) for the sum of `k` exponentials of mean `mean`: 1 − e^(−y) Σ_{i<k} y^i/i!.
fn erlang_cdf(x: f64, k: usize, mean: f64) -> f64 {
    let y = x.max(0.0) / mean;
    // The terms are summed in log space so that large y and k neither under- nor overflow.
    let mut log_term = -y;
    let mut tail = 0.0;
    for i in 0..k {
        if i > 0 {
            log_term += y.ln() - (i as f64).ln();
        }
        tail += log_term.exp();
    }
    (1.0 - tail).clamp(0.0, 1.0)
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

/// The 1-based ranks `(low, high)` of the order statistics that bracket the `q`-quantile of
/// `n` samples with probability at least `confidence`; `None` on a side the sample cannot
/// bound (too few samples beyond the quantile).
///
/// Exact binomial sums where `n q (1 - q)` is small, the normal approximation with continuity
/// correction above that (where the two agree to within a rank).
pub fn quantile_ci_ranks(n: u64, q: f64, confidence: f64) -> (Option<u64>, Option<u64>) {
    if n == 0 || !(0.0..=1.0).contains(&q) {
        return (None, None);
    }
    let tail = (1.0 - confidence) / 2.0;
    let nf = n as f64;
    let var = nf * q * (1.0 - q);
    if var > 50.0 {
        let z = normal_quantile(1.0 - tail);
        let sd = var.sqrt();
        // B = samples below the quantile. P(B < low) <= tail and P(B >= high) <= tail.
        let low = (nf * q - z * sd + 0.5).floor();
        let high = (nf * q + z * sd + 0.5).ceil();
        let low = (low >= 1.0).then_some(low as u64);
        let high = (high <= nf).then_some(high as u64);
        return (low, high);
    }
    // Exact: cdf[k] = P(B <= k), B ~ Binomial(n, q), summed in log space.
    let log_pmf = |k: u64| -> f64 {
        let kf = k as f64;
        ln_choose(n, k) + kf * q.ln() + (nf - kf) * (1.0 - q).ln()
    };
    let (mut low, mut high) = (None, None);
    let mut cdf = 0.0;
    for k in 0..=n {
        let below = cdf; // P(B <= k - 1) = P(B < k)
        cdf += if q == 0.0 {
            if k == 0 {
                1.0
            } else {
                0.0
            }
        } else if q == 1.0 {
            if k == n {
                1.0
            } else {
                0.0
            }
        } else {
            log_pmf(k).exp()
        };
        // The interval [x_(low), x_(high)] misses the quantile when B < low or B >= high.
        if k >= 1 && below <= tail {
            low = Some(k);
        }
        if high.is_none() && 1.0 - cdf <= tail && k < n {
            high = Some(k + 1);
        }
        if high.is_some() && below > tail {
            break;
        }
    }
    (low, high)
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k)
}

/// ln(n!) exactly for small n, by Stirling's series above (error below 1e-10 there).
fn ln_factorial(n: u64) -> f64 {
    if n < 64 {
        return (2..=n).map(|i| (i as f64).ln()).sum();
    }
    let x = n as f64;
    x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x)
        - 1.0 / (360.0 * x.powi(3))
}

/// The standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The value of the sample of 1-based rank `rank` in `h`.
pub fn value_at_rank(h: &Histogram<u64>, rank: u64) -> u64 {
    let n = h.len();
    if n == 0 {
        return 0;
    }
    // value_at_quantile rounds q * n up to a count; aim half a rank low so it lands on `rank`.
    h.value_at_quantile((rank.clamp(1, n) as f64 - 0.5) / n as f64)
}

/// A 95% confidence interval of the `q`-quantile of the samples in `h`, in the histogram's
/// units; a side the sample cannot bound is `None`.
pub fn quantile_ci(h: &Histogram<u64>, q: f64) -> (Option<u64>, Option<u64>) {
    let (low, high) = quantile_ci_ranks(h.len(), q, 0.95);
    (
        low.map(|r| value_at_rank(h, r)),
        high.map(|r| value_at_rank(h, r)),
    )
}

/// The median of some repeats (the mean of the middle two for an even count); NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
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

/// A p-value as text: "= 0.104", "= 3.2e-9", "< 1e-300".
pub fn fmt_p(p: f64) -> String {
    if p == 0.0 {
        "< 1e-300".into()
    } else if p >= 0.001 {
        format!("= {p:.3}")
    } else {
        format!("= {p:.1e}")
    }
}

/// One histogram of an HdrHistogram interval log: its start (after the log's start), its
/// length, and its counts.
pub type HlogEntry = (std::time::Duration, std::time::Duration, Histogram<u64>);

/// Parses an HdrHistogram interval log and adds up its histograms with this tag (`None`: the
/// untagged ones). Returns the sum and the entries one by one.
pub fn parse_hlog(bytes: &[u8], tag: Option<&str>) -> Result<(Histogram<u64>, Vec<HlogEntry>), String> {
    use base64::Engine as _;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    let mut total = new_histogram();
    let mut entries = Vec::new();
    let mut deserializer = Deserializer::new();
    for entry in IntervalLogIterator::new(bytes) {
        let entry = entry.map_err(|e| format!("not an interval log ({e:?})"))?;
        let LogEntry::Interval(interval) = entry else {
            continue;
        };
        if interval.tag().map(|t| t.as_str()) != tag {
            continue;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(interval.encoded_histogram())
            .map_err(|_| "a histogram is not base64".to_string())?;
        let h: Histogram<u64> = deserializer
            .deserialize(&mut raw.as_slice())
            .map_err(|e| format!("a bad histogram ({e:?})"))?;
        total.add(&h).map_err(|e| format!("{e:?}"))?;
        entries.push((interval.start_timestamp(), interval.duration(), h));
    }
    Ok((total, entries))
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
    fn erlang_cdf_matches_closed_forms() {
        // k = 1 is the exponential; k = 2 is 1 - e^-y (1 + y).
        for y in [0.0, 0.1, 1.0, 3.0, 10.0] {
            assert!((erlang_cdf(y * 7.0, 1, 7.0) - (1.0 - (-y).exp())).abs() < 1e-12);
            assert!((erlang_cdf(y, 2, 1.0) - (1.0 - (-y).exp() * (1.0 + y))).abs() < 1e-12);
        }
        // The median of a large Erlang sits near its mean, and nothing overflows.
        let c = erlang_cdf(400.0, 400, 1.0);
        assert!((c - 0.5).abs() < 0.02, "{c}");
        assert_eq!(erlang_cdf(0.0, 400, 1.0), 0.0);
        assert!(erlang_cdf(2000.0, 400, 1.0) > 0.999_999);
    }

    #[test]
    fn timescale_forgives_sender_jitter_and_nothing_else() {
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(9);
        let mean = 20.0;
        let exp = Exp::new(1.0 / mean).unwrap();
        let n = 150_000;
        // What a sender costing 5 units per send and waking up to 15 units late makes of a
        // Poisson schedule: each send leaves at max(its time + lag, the previous send + 5).
        let lag = Uniform::new(0.0, 15.0).unwrap();
        let (mut due, mut last) = (0.0, f64::NEG_INFINITY);
        let mut jittered = Vec::with_capacity(n);
        for _ in 0..n {
            due += exp.sample(&mut rng);
            let sent = f64::max(due + lag.sample(&mut rng), last + 5.0);
            if last.is_finite() {
                jittered.push(sent - last);
            }
            last = sent;
        }
        let k = gaps_per_sample(1e6 / mean, std::time::Duration::from_micros(200));
        assert_eq!(k, 10);
        assert!(
            ks_exponential(&jittered, mean, 0.0).p_value < 1e-6,
            "gap by gap the jitter shows"
        );
        let r = ks_erlang(&jittered, mean, k, 0.0);
        assert!(r.p_value > 0.05, "at 200 units it is Poisson: {r:?}");
        // What it still catches at that timescale: a 5% rate error, evenly spaced sends,
        // gaps a little too regular or too bursty (gamma with CV 0.85 or 1.2), and a sender
        // that stalls for 20 gaps' time once every 300 sends and then catches up (rarer stalls
        // are the send-lag check's to catch).
        assert!(ks_erlang(&jittered, mean * 1.05, k, 0.0).p_value < 0.01);
        assert!(ks_erlang(&vec![mean; n], mean, k, 0.0).p_value < 1e-6);
        for cv in [0.85_f64, 1.2] {
            let shape = 1.0 / (cv * cv);
            let g = rand_distr::Gamma::new(shape, mean / shape).unwrap();
            let gaps: Vec<f64> = (0..n).map(|_| g.sample(&mut rng)).collect();
            let r = ks_erlang(&gaps, mean, k, 0.0);
            assert!(r.p_value < 0.01, "cv {cv}: {r:?}");
        }
        let mut stalled: Vec<f64> = (0..n).map(|_| exp.sample(&mut rng)).collect();
        for chunk in stalled.chunks_mut(300) {
            let owed: f64 = chunk[..20].iter().sum();
            chunk[0] = owed;
            chunk[1..20].iter_mut().for_each(|g| *g = 0.0);
        }
        assert!(ks_erlang(&stalled, mean, k, 0.0).p_value < 0.01);
    }

    #[test]
    fn gaps_per_sample_is_at_least_one_and_bounded() {
        let t = std::time::Duration::from_micros(200);
        assert_eq!(gaps_per_sample(1_000.0, t), 1);
        assert_eq!(gaps_per_sample(100_000.0, t), 20);
        assert_eq!(gaps_per_sample(1e12, t), MAX_GAPS_PER_SAMPLE);
        assert_eq!(gaps_per_sample(f64::NAN, t), 1);
    }

    #[test]
    fn order_statistic_intervals_match_tables() {
        // Conover's table: n = 100, the median's 95% interval is [x_(40), x_(61)]; n = 20,
        // [x_(6), x_(15)].
        assert_eq!(quantile_ci_ranks(100, 0.5, 0.95), (Some(40), Some(61)));
        assert_eq!(quantile_ci_ranks(20, 0.5, 0.95), (Some(6), Some(15)));
        // Too few samples to bound a p99 from above: 50 samples, the 99th percentile.
        assert_eq!(quantile_ci_ranks(50, 0.99, 0.95).1, None);
        assert_eq!(quantile_ci_ranks(0, 0.5, 0.95), (None, None));
        // Large n: the normal approximation, nq +- 1.96 sqrt(nq(1-q)).
        let (l, h) = quantile_ci_ranks(10_000, 0.99, 0.95);
        assert_eq!((l, h), (Some(9880), Some(9921)));
        // Both methods agree to a rank where they meet (n q (1-q) just above and below 50).
        for n in [5_000u64, 5_200] {
            let (l, h) = quantile_ci_ranks(n, 0.99, 0.95);
            let (l, h) = (l.unwrap() as f64, h.unwrap() as f64);
            let mid = n as f64 * 0.99;
            let half = 1.96 * (n as f64 * 0.99 * 0.01).sqrt();
            assert!(
                (l - (mid - half)).abs() <= 2.0 && (h - (mid + half)).abs() <= 2.5,
                "{n}: {l} {h}"
            );
        }
    }

    #[test]
    fn exact_intervals_cover_at_least_their_confidence() {
        // Coverage by the binomial itself: P(low <= B < high) >= 0.95, for small n.
        for n in [10u64, 37, 100, 400] {
            for q in [0.5, 0.9, 0.99] {
                let (l, h) = quantile_ci_ranks(n, q, 0.95);
                let pmf =
                    |k: u64| (ln_choose(n, k) + k as f64 * q.ln() + (n - k) as f64 * (1.0 - q).ln()).exp();
                let lo = l.unwrap_or(0);
                let hi = h.unwrap_or(n + 1);
                let covered: f64 = (lo..hi.min(n + 1)).map(pmf).sum();
                assert!(covered >= 0.95 - 1e-9, "n {n} q {q}: {covered}");
            }
        }
    }

    #[test]
    fn histogram_intervals_bracket_the_percentile() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let p99 = h.value_at_quantile(0.99);
        let (lo, hi) = quantile_ci(&h, 0.99);
        let (lo, hi) = (lo.unwrap(), hi.unwrap());
        assert!(lo < p99 && p99 < hi, "{lo} {p99} {hi}");
        // Ranks 9880 and 9921 of 1..=10000 (times 1000), to the histogram's precision.
        assert!((lo as f64 / 9_880_000.0 - 1.0).abs() < 0.002, "{lo}");
        assert!((hi as f64 / 9_921_000.0 - 1.0).abs() < 0.002, "{hi}");
        assert_eq!(value_at_rank(&h, 1), 1000);
    }

    #[test]
    fn medians_resist_one_wild_repeat() {
        assert_eq!(median(&[150.0, 4_460.0, 160.0]), 160.0);
        assert_eq!(median(&[1.0, 3.0]), 2.0);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert!((normal_quantile(0.975) - 1.959964).abs() < 1e-6);
        assert!((normal_quantile(0.005) + 2.575829).abs() < 1e-6);
    }

    #[test]
    fn p_values_print_readably() {
        assert_eq!(fmt_p(0.1044), "= 0.104");
        assert_eq!(fmt_p(3.21e-9), "= 3.2e-9");
        assert_eq!(fmt_p(0.0), "< 1e-300");
    }

    #[test]
    fn ks_subsamples_long_runs_and_still_tells_poisson_from_not() {
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(11);
        let exp = Exp::new(1.0).unwrap();
        let gaps: Vec<f64> = (0..100_000).map(|_| exp.sample(&mut rng)).collect();
        let r = ks_exponential(&gaps, 1.0, 0.0);
        // A real subsample: bounded, yet most of the bound (not a handful of points).
        assert!(r.n <= KS_MAX_SAMPLES && r.n >= KS_MAX_SAMPLES / 2, "{r:?}");
        assert!(r.p_value > 0.01, "{r:?}");
        // The subsample still sees a 5% rate error and constant gaps.
        assert!(ks_exponential(&gaps, 1.05, 0.0).p_value < 0.01);
        assert!(ks_exponential(&vec![1.0; 100_000], 1.0, 0.0).p_value < 1e-6);
    }

    #[test]
    fn small_samples_get_their_exact_critical_values() {
        // Massey's table of the one-sample K-S statistic (a known distribution): the 5%
        // critical values for n = 10 and 20 are 0.409 and 0.294, and 1% for n = 10 is 0.490.
        // The asymptotic formula alone would say 7% and 8% for the first two.
        for (d, n, alpha) in [(0.409, 10, 0.05), (0.294, 20, 0.05), (0.490, 10, 0.01)] {
            let p = kolmogorov_p(d, n);
            assert!(
                (p - alpha).abs() < 0.15 * alpha,
                "n {n}, D {d}: p {p}, not {alpha}"
            );
        }
    }

    #[test]
    fn the_poisson_check_rejects_true_poisson_at_its_nominal_rate() {
        // 400 seeds of exponential gaps at sizes from tiny to large: about 5% of them fall
        // below p = 0.05, as a test at that level must (binomial sd 1.1%, so the band is 3 sd).
        for n in [10usize, 30, 200, 3000] {
            let exp = Exp::new(1.0 / 20.0).unwrap();
            let rejected = (0..400u64)
                .filter(|&seed| {
                    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
                    let gaps: Vec<f64> = (0..n).map(|_| exp.sample(&mut rng)).collect();
                    ks_exponential(&gaps, 20.0, 0.0).p_value < 0.05
                })
                .count();
            let rate = rejected as f64 / 400.0;
            assert!(
                (0.017..=0.083).contains(&rate),
                "n {n}: {rate} of true Poisson rejected"
            );
        }
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
