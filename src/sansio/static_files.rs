//! The HTTP workload: static files served from memory.
//!
//! Every file under `--root` is read once at start into a map from its URL path to its bytes
//! and a prebuilt response head; answering a request is then a lookup, with the bytes shared
//! by every response that sends them, never copied. Nothing outside the root can be served
//! because nothing outside it is ever loaded: symbolic links are followed only when their
//! target lies inside the root, and a request path is decoded and checked (no `..`, no NUL)
//! before the lookup, which is an exact match.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sansio::frame::{Body, OutFrame};
use crate::sansio::http::{
    http_date, normalize_target, response_head, HttpError, HttpRequest, Method, Status,
};

/// Directory levels the loader descends at most.
const MAX_DEPTH: usize = 32;

#[derive(Debug)]
struct CachedFile {
    body: Arc<[u8]>,
    /// `Content-Type` and `Content-Length` fields, ready to go into a head.
    fields: String,
}

/// Every file of a root, in memory.
#[derive(Debug, Default)]
pub struct StaticFiles {
    files: HashMap<String, CachedFile>,
    bytes: u64,
    /// Symbolic links left out because they lead outside the root.
    skipped_links: usize,
}

/// What a load found, for the start-up line.
#[derive(Debug, Clone, Copy)]
pub struct CacheSummary {
    pub files: usize,
    pub bytes: u64,
    pub skipped_links: usize,
}

impl StaticFiles {
    /// Reads every regular file under `root`, up to `max_bytes` in all.
    pub fn load(root: &Path, max_bytes: u64) -> anyhow::Result<Self> {
        let canonical =
            std::fs::canonicalize(root).map_err(|e| anyhow::anyhow!("--root {}: {e}", root.display()))?;
        if !canonical.is_dir() {
            anyhow::bail!("--root {} is not a directory", root.display());
        }
        let mut cache = StaticFiles::default();
        let mut seen_dirs = HashSet::new();
        cache.walk(&canonical, &canonical, "", 0, max_bytes, &mut seen_dirs)?;
        Ok(cache)
    }

    fn walk(
        &mut self,
        root: &Path,
        dir: &Path,
        url_prefix: &str,
        depth: usize,
        max_bytes: u64,
        seen_dirs: &mut HashSet<PathBuf>,
    ) -> anyhow::Result<()> {
        if depth > MAX_DEPTH || !seen_dirs.insert(dir.to_path_buf()) {
            return Ok(()); // too deep, or a directory reached twice through links
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let Some(name) = entry.file_name().to_str().map(String::from) else {
                continue; // a name no URL can spell
            };
            let path = entry.path();
            // Resolve links; keep only what stays inside the root.
            let Ok(real) = std::fs::canonicalize(&path) else {
                continue; // a dangling link
            };
            if !real.starts_with(root) {
                self.skipped_links += 1;
                continue;
            }
            let url = format!("{url_prefix}/{name}");
            if real.is_dir() {
                self.walk(root, &real, &url, depth + 1, max_bytes, seen_dirs)?;
            } else if real.is_file() {
                let data = std::fs::read(&real)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", real.display()))?;
                self.bytes += data.len() as u64;
                if self.bytes > max_bytes {
                    anyhow::bail!(
                        "the files under the root pass the {} MiB cache limit (--cache-limit)",
                        max_bytes >> 20
                    );
                }
                let fields = format!(
                    "Content-Type: {}\r\nContent-Length: {}\r\n",
                    content_type(&name),
                    data.len()
                );
                self.files.insert(
                    url,
                    CachedFile {
                        body: data.into(),
                        fields,
                    },
                );
            }
        }
        Ok(())
    }

    pub fn summary(&self) -> CacheSummary {
        CacheSummary {
            files: self.files.len(),
            bytes: self.bytes,
            skipped_links: self.skipped_links,
        }
    }

    /// The response to a parsed request.
    pub fn respond(&self, request: &HttpRequest) -> OutFrame {
        let date = current_date();
        let keep_alive = request.keep_alive;
        let found = normalize_target(&request.target)
            .map_err(|e| e.status)
            .and_then(|path| self.files.get(&path).ok_or(Status::NotFound));
        match found {
            Ok(file) => {
                let head = response_head(Status::Ok, &date, &file.fields, keep_alive);
                let body = match request.method {
                    Method::Get => Body::Shared(file.body.clone()),
                    Method::Head => Body::Owned(Vec::new()),
                };
                OutFrame::raw(head, body)
            }
            Err(status) => error_response(status, &date, keep_alive, "", request.method == Method::Head),
        }
    }

    /// The response to a request this server refuses; the connection closes after it.
    pub fn refuse(&self, error: &HttpError) -> OutFrame {
        let extra = if error.status == Status::MethodNotAllowed {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        error_response(error.status, &current_date(), false, extra, false)
    }
}

fn error_response(status: Status, date: &str, keep_alive: bool, extra: &str, head_only: bool) -> OutFrame {
    let text = format!("{} {}\n", status.code(), status.reason());
    let fields = format!(
        "{extra}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        text.len()
    );
    let body = if head_only { Vec::new() } else { text.into_bytes() };
    OutFrame::raw(
        response_head(status, date, &fields, keep_alive),
        Body::Owned(body),
    )
}

/// The `Date` field's value, formatted at most once a second per thread.
fn current_date() -> String {
    use std::cell::RefCell;
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != now {
            *c = (now, http_date(now));
        }
        c.1.clone()
    })
}

/// The media type a file's extension names.
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e).to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "pdf" => "application/pdf",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: &OutFrame) -> String {
        let mut q = crate::sansio::frame::OutQueue::new(1 << 20);
        q.push(f.clone());
        let mut out = Vec::new();
        while let Some(s) = q.front() {
            out.extend_from_slice(s);
            let n = s.len();
            q.advance(n);
        }
        String::from_utf8(out).unwrap()
    }

    fn request(target: &str, method: Method) -> HttpRequest {
        HttpRequest {
            method,
            target: target.into(),
            keep_alive: true,
        }
    }

    #[test]
    fn serves_what_is_under_the_root_and_nothing_else() {
        let base = std::env::temp_dir().join(format!("iolab-static-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(root.join("sub/a.css"), "b{}").unwrap();
        std::fs::write(base.join("secret.txt"), "no").unwrap();
        std::os::unix::fs::symlink(base.join("secret.txt"), root.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(&base, root.join("up")).unwrap();
        std::os::unix::fs::symlink(root.join("sub/a.css"), root.join("alias.css")).unwrap();
        let cache = StaticFiles::load(&root, 1 << 20).unwrap();
        let s = cache.summary();
        assert_eq!((s.files, s.skipped_links), (3, 2), "{s:?}");

        let ok = text(&cache.respond(&request("/", Method::Get)));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/html; charset=utf-8\r\nContent-Length: 11\r\n"));
        assert!(ok.contains("\r\nDate: ") && ok.ends_with("\r\n\r\n<h1>hi</h1>"));
        let head = text(&cache.respond(&request("/sub/a.css", Method::Head)));
        assert!(
            head.contains("Content-Length: 3\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(text(&cache.respond(&request("/alias.css", Method::Get))).ends_with("b{}"));
        for outside in [
            "/leak.txt",
            "/up/secret.txt",
            "/../secret.txt",
            "/sub/%2e%2e/%2e%2e/secret.txt",
        ] {
            let r = text(&cache.respond(&request(outside, Method::Get)));
            assert!(
                r.starts_with("HTTP/1.1 404") || r.starts_with("HTTP/1.1 400"),
                "{outside}: {r}"
            );
            assert!(!r.contains("no"), "{outside} leaked: {r}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_root_that_is_too_big_or_missing_is_refused() {
        let root = std::env::temp_dir().join(format!("iolab-static-big-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("big"), vec![0u8; 2 << 20]).unwrap();
        let e = StaticFiles::load(&root, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("cache limit"), "{e}");
        let e = StaticFiles::load(&root.join("nope"), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn refusals_close_and_405_says_what_is_allowed() {
        let cache = StaticFiles::default();
        let r = text(&cache.refuse(&HttpError {
            status: Status::MethodNotAllowed,
            detail: String::new(),
        }));
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(r.contains("Allow: GET, HEAD\r\n") && r.contains("Connection: close\r\n"));
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("a.HTML"), "text/html; charset=utf-8");
        assert_eq!(content_type("x.png"), "image/png");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
