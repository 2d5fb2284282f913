//! Human units on the command line: durations (`10us`, `2ms`, `1.5s`) and sizes (`64`,
//! `4KiB`, `1MiB`). One parser for each, used everywhere, so `--duration`, `--work` and
//! `--chunk-size` all read the same way.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration as written by a person. A bare number is seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

/// A byte count as written by a person. `K`, `KiB`, `M`, `MiB`, `G`, `GiB` are powers of 1024;
/// `KB`, `MB`, `GB` are powers of 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Size(pub u64);

/// Splits `12.5ms` into the number 12.5 and the unit `ms`; `what` names the examples shown
/// when the number does not parse.
fn number_and_unit<'a>(s: &'a str, what: &str) -> Result<(f64, &'a str), String> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let value = s[..end]
        .replace('_', "")
        .parse()
        .map_err(|_| format!("'{s}' is not {what}"))?;
    Ok((value, s[end..].trim()))
}

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (value, unit) = number_and_unit(s, "a duration (examples: 10us, 2ms, 1.5s)")?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "" | "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "'{s}': unknown time unit '{unit}' (use ns, us, ms, s, m)"
                ))
            }
        };
        let secs = value * scale;
        if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
            return Err(format!("'{s}' is out of range"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (value, unit) = number_and_unit(s, "a size (examples: 64, 4KiB, 1MiB)")?;
        let scale: f64 = match unit {
            "" | "B" | "b" => 1.0,
            "K" | "k" | "KiB" | "kiB" => 1024.0,
            "M" | "MiB" => 1024.0 * 1024.0,
            "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
            "KB" | "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            _ => {
                return Err(format!(
                    "'{s}': unknown size unit '{unit}' (use B, KiB, MiB, GiB)"
                ))
            }
        };
        let bytes = value * scale;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 || bytes.fract() != 0.0 {
            return Err(format!("'{s}' is not a whole number of bytes"));
        }
        Ok(Size(bytes as u64))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        if ns == 0 {
            write!(f, "0s")
        } else if ns.is_multiple_of(1_000_000_000) {
            write!(f, "{}s", ns / 1_000_000_000)
        } else if ns.is_multiple_of(1_000_000) {
            write!(f, "{}ms", ns / 1_000_000)
        } else if ns.is_multiple_of(1_000) {
            write!(f, "{}us", ns / 1_000)
        } else {
            write!(f, "{ns}ns")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s: &str| s.parse::<Dur>().map(|d| d.0);
        assert_eq!(d("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(d("2ms"), Ok(Duration::from_millis(2)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("3"), Ok(Duration::from_secs(3)));
        assert_eq!(d("250ns"), Ok(Duration::from_nanos(250)));
        assert!(d("fast").is_err());
        assert!(d("10 parsecs").is_err());
        assert!(d("-1s").is_err());
    }

    #[test]
    fn sizes() {
        let s = |s: &str| s.parse::<Size>().map(|s| s.0);
        assert_eq!(s("64"), Ok(64));
        assert_eq!(s("4KiB"), Ok(4096));
        assert_eq!(s("1MiB"), Ok(1 << 20));
        assert_eq!(s("16M"), Ok(16 << 20));
        assert_eq!(s("2KB"), Ok(2000));
        assert_eq!(s("1.5KiB"), Ok(1536));
        assert!(s("1.3").is_err());
        assert!(s("lots").is_err());
        assert_eq!(Size(4096).to_string(), "4KiB");
        assert_eq!(Dur(Duration::from_micros(10)).to_string(), "10us");
    }
}
