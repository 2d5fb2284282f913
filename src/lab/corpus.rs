//! `iolab corpus`: a reproducible set of web pages for the HTTP workload, whose sizes follow
//! the distribution of real pages' HTML.
//!
//! The sizes come from the HTTP Archive's Web Almanac 2019, chapter 18 (Page Weight),
//! figure 4: the HTML bytes of desktop pages in the July 2019 crawl (about 5 million home
//! pages), at the 10th, 25th, 50th, 75th and 90th percentiles: 6, 12, 27, 58 and 110 KB.
//! Two caveats, both from that chapter: the figures are *transfer* sizes (compressed where
//! the server compressed), and they add up every HTML response of a page (iframes too), not
//! only its main document. The 2022 Almanac (Markup chapter) puts the main document alone at
//! a 31 KB median transfer size, so the shape holds well enough for a server benchmark, which
//! only needs realistic body sizes. Between the published percentiles the quantile function
//! is interpolated log-linearly; beyond them it continues with the slope of the nearest
//! segment, clamped to [512 B, 2 MiB].
//!
//! Each page is plain HTML of exactly its size, filled with words drawn from a seeded RNG, so
//! the same `--seed` writes the same bytes on every machine.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use rand::{RngExt as _, SeedableRng};

/// (percentile, bytes) from the Web Almanac 2019, Page Weight, figure 4 (desktop HTML).
pub const HTML_SIZE_PERCENTILES: [(f64, f64); 5] = [
    (0.10, 6.0 * 1024.0),
    (0.25, 12.0 * 1024.0),
    (0.50, 27.0 * 1024.0),
    (0.75, 58.0 * 1024.0),
    (0.90, 110.0 * 1024.0),
];
const MIN_PAGE: f64 = 512.0;
const MAX_PAGE: f64 = 2.0 * 1024.0 * 1024.0;

/// The page size at quantile `q` (0 < q < 1).
pub fn size_at(q: f64) -> u64 {
    let points = &HTML_SIZE_PERCENTILES;
    // The segment whose slope applies: the one containing q, or the nearest at the ends.
    let i = points
        .windows(2)
        .position(|w| q <= w[1].0)
        .unwrap_or(points.len() - 2);
    let ((q0, s0), (q1, s1)) = (points[i], points[i + 1]);
    let slope = (s1.ln() - s0.ln()) / (q1 - q0);
    let size = (s0.ln() + slope * (q - q0)).exp();
    size.clamp(MIN_PAGE, MAX_PAGE).round() as u64
}

/// `n` page sizes, drawn with `seed`.
pub fn page_sizes(n: usize, seed: u64) -> Vec<u64> {
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n)
        .map(|_| size_at(rng.random_range(0.0005..0.9995)))
        .collect()
}

const WORDS: [&str; 24] = [
    "lorem", "ipsum", "server", "kernel", "socket", "epoll", "ring", "queue", "latency", "page", "thread",
    "buffer", "request", "reply", "packet", "loopback", "poisson", "arrival", "cache", "engine", "core",
    "batch", "event", "wakeup",
];

/// An HTML page of exactly `size` bytes (at least the shell's ~120), words drawn with `seed`.
pub fn page_body(title: &str, size: usize, seed: u64) -> Vec<u8> {
    let head = format!("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\n<body>\n<p>");
    let tail = "</p>\n</body></html>\n";
    let mut page = head.into_bytes();
    let room = size.saturating_sub(page.len() + tail.len());
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut text = Vec::with_capacity(room);
    while text.len() < room {
        if text.len() % 600 > 590 {
            text.extend_from_slice(b"</p>\n<p>");
        } else {
            text.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
            text.push(b' ');
        }
    }
    text.truncate(room);
    page.extend_from_slice(&text);
    page.extend_from_slice(tail.as_bytes());
    page
}

/// What [`write`] produced.
#[derive(Debug)]
pub struct Written {
    pub pages: usize,
    pub bytes: u64,
    pub median: u64,
    pub p90: u64,
}

/// Writes `pages` pages into `dir/pages/`, a 1 KiB page `dir/one-kib.html` for fixed-size
/// benchmarks, and `dir/paths.txt` (`/pages/NAME SIZE` per line, as `load --paths` reads).
pub fn write(dir: &Path, pages: usize, seed: u64) -> anyhow::Result<Written> {
    if pages == 0 {
        anyhow::bail!("--pages must be at least 1");
    }
    if dir.exists() && !dir.join("paths.txt").exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!(
            "{} is not empty and holds no corpus: choose an empty or new folder",
            dir.display()
        );
    }
    let pages_dir = dir.join("pages");
    if pages_dir.exists() {
        std::fs::remove_dir_all(&pages_dir)
            .with_context(|| format!("cannot clear {}", pages_dir.display()))?;
    }
    std::fs::create_dir_all(&pages_dir).with_context(|| format!("cannot create {}", pages_dir.display()))?;
    let sizes = page_sizes(pages, seed);
    let mut list = String::new();
    for (i, &size) in sizes.iter().enumerate() {
        let name = format!("page-{i:04}.html");
        let body = page_body(&name, size as usize, seed.wrapping_add(i as u64 + 1));
        std::fs::write(pages_dir.join(&name), &body).with_context(|| format!("cannot write {name}"))?;
        list += &format!("/pages/{name} {}\n", body.len());
    }
    std::fs::write(dir.join("one-kib.html"), page_body("one KiB", 1024, seed))?;
    let mut f = std::fs::File::create(dir.join("paths.txt"))?;
    writeln!(
        f,
        "# iolab corpus: {pages} pages, seed {seed}; sizes after the Web Almanac 2019 (Page Weight, desktop HTML)"
    )?;
    f.write_all(list.as_bytes())?;
    let mut sorted = sizes.clone();
    sorted.sort_unstable();
    Ok(Written {
        pages,
        bytes: sizes.iter().sum(),
        median: sorted[sorted.len() / 2],
        p90: sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantile_function_passes_through_the_published_percentiles() {
        for (q, size) in HTML_SIZE_PERCENTILES {
            assert_eq!(size_at(q), size as u64, "q={q}");
        }
        assert!(size_at(0.0001) >= MIN_PAGE as u64);
        assert!(size_at(0.9999) <= MAX_PAGE as u64);
        assert!(size_at(0.3) > size_at(0.25) && size_at(0.3) < size_at(0.5));
    }

    #[test]
    fn sampled_sizes_follow_the_distribution() {
        let mut sizes = page_sizes(20_000, 7);
        sizes.sort_unstable();
        for (q, size) in HTML_SIZE_PERCENTILES {
            let got = sizes[(q * sizes.len() as f64) as usize] as f64;
            assert!((got / size - 1.0).abs() < 0.08, "q={q}: {got} vs {size}");
        }
        assert_eq!(
            page_sizes(50, 3),
            page_sizes(50, 3),
            "a seed gives the same sizes"
        );
        assert_ne!(page_sizes(50, 3), page_sizes(50, 4));
    }

    #[test]
    fn pages_are_html_of_exactly_their_size() {
        for size in [200, 1024, 30_000] {
            let p = page_body("t", size, 9);
            assert_eq!(p.len(), size);
            let text = String::from_utf8(p).unwrap();
            assert!(text.starts_with("<!doctype html>") && text.ends_with("</html>\n"));
        }
        assert_eq!(page_body("t", 5000, 1), page_body("t", 5000, 1));
    }

    #[test]
    fn a_corpus_is_written_reproducibly_and_never_over_other_files() {
        let base = std::env::temp_dir().join(format!("iolab-corpus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let w = write(&base.join("a"), 20, 5).unwrap();
        write(&base.join("b"), 20, 5).unwrap();
        assert_eq!(w.pages, 20);
        let list = std::fs::read_to_string(base.join("a/paths.txt")).unwrap();
        assert_eq!(list, std::fs::read_to_string(base.join("b/paths.txt")).unwrap());
        assert_eq!(list.lines().filter(|l| l.starts_with("/pages/")).count(), 20);
        for line in list.lines().filter(|l| !l.starts_with('#')) {
            let (path, size) = line.split_once(' ').unwrap();
            let len = std::fs::metadata(base.join("a").join(&path[1..])).unwrap().len();
            assert_eq!(len.to_string(), size, "{path}");
        }
        // Rewriting a corpus is fine; writing into somebody else's folder is not.
        write(&base.join("a"), 10, 6).unwrap();
        std::fs::create_dir_all(base.join("other")).unwrap();
        std::fs::write(base.join("other/keep.txt"), "mine").unwrap();
        assert!(write(&base.join("other"), 10, 6).is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
