//! What each request asks of the server, drawn per request from a seeded RNG:
//! how large its payload is, how large a reply it wants, and how long the server should spin.
//!
//! Written on the command line as `KIND:ARGS`, e.g. `uniform:0-64KiB`, `lognormal:1KiB,1.5`,
//! `exp:10us`, `bimodal:0.1,10us,1ms`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::{Rng, RngExt};
use rand_distr::{Distribution, Exp, LogNormal};

use crate::sansio::units::{Dur, Size};

/// The shape parameter of a log-normal: a finite, non-negative number.
fn parse_sigma(spec: &str, sigma: &str) -> Result<f64, String> {
    match sigma.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "'{spec}': sigma must be a non-negative number, not '{sigma}'"
        )),
    }
}

/// A distribution of byte counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeDist {
    Fixed(u64),
    /// Uniform over `lo..=hi`.
    Uniform(u64, u64),
    /// Log-normal with this median and shape sigma, rounded to whole bytes.
    LogNormal {
        median: u64,
        sigma: f64,
    },
}

impl SizeDist {
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform(lo, hi) => rng.random_range(lo..=hi),
            SizeDist::LogNormal { median, sigma } => {
                let d = LogNormal::new((median.max(1) as f64).ln(), sigma).ok();
                d.map_or(median, |d| d.sample(rng).round() as u64)
            }
        }
    }

    /// Its mean.
    pub fn mean(&self) -> f64 {
        match *self {
            SizeDist::Fixed(n) => n as f64,
            SizeDist::Uniform(lo, hi) => (lo as f64 + hi as f64) / 2.0,
            SizeDist::LogNormal { median, sigma } => median as f64 * (sigma * sigma / 2.0).exp(),
        }
    }

    /// The largest value it can produce (`None`: unbounded).
    pub fn max(&self) -> Option<u64> {
        match *self {
            SizeDist::Fixed(n) => Some(n),
            SizeDist::Uniform(_, hi) => Some(hi),
            SizeDist::LogNormal { .. } => None,
        }
    }
}

impl FromStr for SizeDist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, args) = s.split_once(':').unwrap_or(("fixed", s));
        match kind {
            "fixed" => Ok(SizeDist::Fixed(args.parse::<Size>()?.0)),
            "uniform" => {
                let (a, b) = args
                    .split_once('-')
                    .ok_or_else(|| format!("'{s}': uniform needs A-B, e.g. uniform:0-64KiB"))?;
                let (a, b) = (a.parse::<Size>()?.0, b.parse::<Size>()?.0);
                if a > b {
                    return Err(format!("'{s}': the range is empty"));
                }
                Ok(SizeDist::Uniform(a, b))
            }
            "lognormal" => {
                let (m, sg) = args
                    .split_once(',')
                    .ok_or_else(|| format!("'{s}': lognormal needs MEDIAN,SIGMA, e.g. lognormal:1KiB,1.0"))?;
                let sigma = parse_sigma(s, sg)?;
                Ok(SizeDist::LogNormal {
                    median: m.parse::<Size>()?.0,
                    sigma,
                })
            }
            _ => Err(format!(
                "'{s}': unknown size distribution '{kind}' (fixed:N, uniform:A-B, lognormal:MEDIAN,SIGMA)"
            )),
        }
    }
}

impl fmt::Display for SizeDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SizeDist::Fixed(n) => write!(f, "{}", Size(n)),
            SizeDist::Uniform(a, b) => write!(f, "uniform:{}-{}", Size(a), Size(b)),
            SizeDist::LogNormal { median, sigma } => write!(f, "lognormal:{},{sigma}", Size(median)),
        }
    }
}

/// The reply a request asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReplyDist {
    /// The request's own payload back.
    Echo,
    Sized(SizeDist),
}

impl FromStr for ReplyDist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "echo" {
            Ok(ReplyDist::Echo)
        } else if s.contains(':') {
            Ok(ReplyDist::Sized(s.parse()?))
        } else {
            Err(format!(
                "'{s}' is not a reply spec (echo, fixed:N, uniform:A-B, lognormal:MEDIAN,SIGMA)"
            ))
        }
    }
}

impl fmt::Display for ReplyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyDist::Echo => f.write_str("echo"),
            ReplyDist::Sized(d) => write!(f, "{d}"),
        }
    }
}

/// How long the server should spin for a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WorkDist {
    None,
    Fixed(Duration),
    /// Exponential with this mean: the service time of an M/M/1 queue.
    Exp(Duration),
    /// With probability `p` the long time, otherwise the short one: a heavy tail in two values.
    Bimodal {
        p: f64,
        short: Duration,
        long: Duration,
    },
    LogNormal {
        median: Duration,
        sigma: f64,
    },
}

impl WorkDist {
    pub fn sample_ns(&self, rng: &mut impl Rng) -> u64 {
        let ns = |d: Duration| d.as_nanos() as f64;
        let v = match *self {
            WorkDist::None => 0.0,
            WorkDist::Fixed(d) => ns(d),
            WorkDist::Exp(mean) => Exp::new(1.0 / ns(mean).max(1.0)).map_or(0.0, |e| e.sample(rng)),
            WorkDist::Bimodal { p, short, long } => {
                if rng.random_bool(p) {
                    ns(long)
                } else {
                    ns(short)
                }
            }
            WorkDist::LogNormal { median, sigma } => {
                LogNormal::new(ns(median).max(1.0).ln(), sigma).map_or(ns(median), |d| d.sample(rng))
            }
        };
        v.round() as u64
    }
}

impl FromStr for WorkDist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let dur = |x: &str| x.parse::<Dur>().map(|d| d.0);
        let (kind, args) = s.split_once(':').unwrap_or((s, ""));
        let usage = "none, fixed:DUR, exp:MEAN, bimodal:P,DUR1,DUR2, lognormal:MEDIAN,SIGMA";
        match kind {
            "none" => Ok(WorkDist::None),
            "fixed" => Ok(WorkDist::Fixed(dur(args)?)),
            "exp" => Ok(WorkDist::Exp(dur(args)?)),
            "bimodal" => {
                let parts: Vec<&str> = args.split(',').collect();
                let [p, a, b] = parts[..] else {
                    return Err(format!(
                        "'{s}': bimodal needs P,DUR1,DUR2, e.g. bimodal:0.1,10us,1ms"
                    ));
                };
                let p: f64 = p.parse().map_err(|_| format!("'{s}': bad probability '{p}'"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("'{s}': the probability must be between 0 and 1"));
                }
                Ok(WorkDist::Bimodal {
                    p,
                    short: dur(a)?,
                    long: dur(b)?,
                })
            }
            "lognormal" => {
                let (m, sg) = args
                    .split_once(',')
                    .ok_or_else(|| format!("'{s}': lognormal needs MEDIAN,SIGMA"))?;
                let sigma = parse_sigma(s, sg)?;
                Ok(WorkDist::LogNormal {
                    median: dur(m)?,
                    sigma,
                })
            }
            _ => Err(format!("'{s}' is not a work spec ({usage})")),
        }
    }
}

impl fmt::Display for WorkDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WorkDist::None => f.write_str("none"),
            WorkDist::Fixed(d) => write!(f, "fixed:{}", Dur(d)),
            WorkDist::Exp(d) => write!(f, "exp:{}", Dur(d)),
            WorkDist::Bimodal { p, short, long } => write!(f, "bimodal:{p},{},{}", Dur(short), Dur(long)),
            WorkDist::LogNormal { median, sigma } => write!(f, "lognormal:{},{sigma}", Dur(median)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn parse_and_sample() {
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(1);
        assert_eq!("64".parse::<SizeDist>(), Ok(SizeDist::Fixed(64)));
        assert_eq!("fixed:4KiB".parse::<SizeDist>(), Ok(SizeDist::Fixed(4096)));
        let u: SizeDist = "uniform:0-64KiB".parse().unwrap();
        for _ in 0..1000 {
            assert!(u.sample(&mut rng) <= 65536);
        }
        assert!("uniform:9-1".parse::<SizeDist>().is_err());
        assert!("normal:1".parse::<SizeDist>().is_err());
        assert_eq!("echo".parse::<ReplyDist>(), Ok(ReplyDist::Echo));
        assert_eq!(
            "fixed:1MiB".parse::<ReplyDist>(),
            Ok(ReplyDist::Sized(SizeDist::Fixed(1 << 20)))
        );
        assert!("1MiB".parse::<ReplyDist>().is_err());

        assert_eq!("none".parse::<WorkDist>(), Ok(WorkDist::None));
        let e: WorkDist = "exp:10us".parse().unwrap();
        let mean = (0..20_000).map(|_| e.sample_ns(&mut rng) as f64).sum::<f64>() / 20_000.0;
        assert!((mean - 10_000.0).abs() < 500.0, "exp mean {mean}");
        let b: WorkDist = "bimodal:0.5,1us,3us".parse().unwrap();
        for _ in 0..100 {
            assert!([1000, 3000].contains(&b.sample_ns(&mut rng)));
        }
        assert!("bimodal:2,1us,3us".parse::<WorkDist>().is_err());
        assert!("bimodal:0.5,1us".parse::<WorkDist>().is_err());
        let l: WorkDist = "lognormal:10us,0.5".parse().unwrap();
        let mut v: Vec<u64> = (0..10_001).map(|_| l.sample_ns(&mut rng)).collect();
        v.sort_unstable();
        assert!(
            (v[5000] as f64 - 10_000.0).abs() < 500.0,
            "lognormal median {}",
            v[5000]
        );
        assert_eq!(e.to_string(), "exp:10us");
    }
}
