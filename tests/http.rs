//! HTTP/1.1 static serving on every engine, as clients meet it: raw requests for the cases a
//! well-behaved client never sends (pipelining in one write, traversal attempts, oversized
//! heads), and two clients no one here wrote, curl and wrk (from Debian).
//!
//! curl and wrk are outside tools: where one is missing the test says so and passes, except
//! under CI=true, where `.ci/run` installs both and a missing one is a failure.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command};
use std::sync::OnceLock;
use std::time::Duration;

use iolab::engine::EngineKind;

const INDEX: &str = "<!doctype html><title>iolab</title><h1>hello</h1>\n";

/// The served root, and beside it a secret no request may reach.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("iolab-http-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("www");
        std::fs::create_dir_all(root.join("pages")).unwrap();
        std::fs::write(root.join("index.html"), INDEX).unwrap();
        std::fs::write(root.join("pages/big.bin"), big()).unwrap();
        std::fs::write(base.join("secret.txt"), "SECRET").unwrap();
        std::os::unix::fs::symlink(base.join("secret.txt"), root.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(&base, root.join("parent")).unwrap();
        root
    })
}

/// 300 KiB that differ byte by byte, so a misplaced slice shows.
fn big() -> Vec<u8> {
    (0..300 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

struct Server {
    child: Option<Child>,
    stdout: Option<ChildStdout>,
    addr: SocketAddr,
}

impl Server {
    fn start(engine: EngineKind) -> Server {
        Server::start_with(engine, &[])
    }

    fn start_with(engine: EngineKind, extra: &[&str]) -> Server {
        let args: Vec<String> = ["--engine", engine.name(), "--protocol", "http", "--root"]
            .iter()
            .map(|s| s.to_string())
            .chain([root().display().to_string()])
            .chain(extra.iter().map(|s| s.to_string()))
            .collect();
        let (child, addr, stdout) = common::spawn_server(&args);
        Server {
            child: Some(child),
            stdout: Some(stdout),
            addr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn stop(mut self) -> String {
        let (status, summary) = common::terminate(self.child.take().unwrap(), self.stdout.take().unwrap());
        assert!(status.success(), "{summary}");
        summary
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends `request` in one write and reads until the server closes or `timeout` passes.
fn exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false), // timed out: the server kept it open
        }
    }
}

fn statuses(response: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(response)
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|r| r[..3].to_string())
        .collect()
}

#[test]
fn every_engine_answers_pipelined_requests_in_order_and_honours_close() {
    for engine in EngineKind::KERNEL_TCP {
        let server = Server::start(engine);
        pipelined_requests_in_order_and_close(engine, &server);
        server.stop();
    }
}

/// The event-loop engines on two loops: the same answers from each.
#[test]
fn http_on_two_threads_answers_as_on_one() {
    let paths = load_paths("threads2");
    for &engine in EngineKind::KERNEL_TCP.iter().filter(|e| e.is_event_loop()) {
        let server = Server::start_with(engine, &["--threads", "2"]);
        // Several connections, so that both loops (SO_REUSEPORT spreads them) answer some.
        for _ in 0..8 {
            pipelined_requests_in_order_and_close(engine, &server);
        }
        http_load_counts_only_the_missing_page(engine, &server, &paths);
        let summary = server.stop();
        assert!(summary.contains("protocol_errors=0"), "{engine}: {summary}");
    }
    let _ = std::fs::remove_file(&paths);
}

/// A client that pipelines 200 GETs of a 300 KiB file (60 MB of answers) and never reads
/// holds only its own connection: another client is answered meanwhile, and a stop cuts the
/// lazy one off after the drain timeout.
#[test]
fn a_client_that_pipelines_large_gets_and_never_reads_stalls_no_one() {
    for engine in EngineKind::KERNEL_TCP {
        let server = Server::start_with(engine, &["--drain-timeout", "200ms"]);
        let mut lazy = TcpStream::connect(server.addr).unwrap();
        let asks = "GET /pages/big.bin HTTP/1.1\r\nHost: t\r\n\r\n".repeat(200);
        lazy.write_all(asks.as_bytes()).unwrap();
        // It is being answered (its socket buffers fill), and never read further.
        lazy.set_read_timeout(Some(common::BOUND)).unwrap();
        lazy.peek(&mut [0u8; 1]).expect("a first answer byte");
        let (out, closed) = exchange(
            server.addr,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            common::BOUND,
        );
        assert!(closed, "{engine}: the second client was not answered in full");
        assert_eq!(statuses(&out), ["200"], "{engine}");
        assert!(out.ends_with(INDEX.as_bytes()), "{engine}");
        // Nor does it cost the server the answers it asked for: they wait as references to
        // the cached file and behind the socket's window, not as 60 MB of copies.
        let pid = server.child.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .expect("VmRSS in /proc/PID/status");
        assert!(rss_kib < 48 << 10, "{engine}: the server holds {rss_kib} KiB");
        let summary = server.stop();
        assert!(summary.contains("protocol_errors=0"), "{engine}: {summary}");
        drop(lazy);
    }
}

fn pipelined_requests_in_order_and_close(engine: EngineKind, server: &Server) {
    {
        let request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n\
                        HEAD /pages/big.bin HTTP/1.1\r\nHost: t\r\n\r\n\
                        GET /missing HTTP/1.1\r\nHost: t\r\n\r\n\
                        GET /pages/big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n\
                        GET / HTTP/1.1\r\nHost: t\r\n\r\n";
        let (out, closed) = exchange(server.addr, request, Duration::from_secs(10));
        assert!(closed, "{engine}: Connection: close was not honoured");
        assert_eq!(statuses(&out)[..4], ["200", "200", "404", "200"], "{engine}");
        let text = String::from_utf8_lossy(&out);
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            4,
            "{engine}: answered past the close"
        );
        assert!(
            text.contains(&format!("Content-Length: {}\r\n", INDEX.len())),
            "{engine}"
        );
        assert!(
            text.contains("Content-Type: text/html; charset=utf-8\r\n"),
            "{engine}"
        );
        assert!(
            text.contains("\r\nDate: ") && text.contains(" GMT\r\n"),
            "{engine}"
        );
        // The last response's body is the file, byte for byte.
        assert!(out.ends_with(&big()), "{engine}: the 300 KiB body differs");
    }
}

#[test]
fn nothing_outside_the_root_is_ever_served() {
    let attempts = [
        "/../secret.txt",
        "/pages/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/pages%2f..%2f..%2fsecret.txt",
        "/index.html%00.txt",
        "/leak.txt",
        "/parent/secret.txt",
        "/etc/passwd",
        "//etc/passwd",
        "http://t/../secret.txt",
    ];
    for engine in EngineKind::KERNEL_TCP {
        let server = Server::start(engine);
        for path in attempts {
            let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let (out, _) = exchange(server.addr, req.as_bytes(), Duration::from_secs(5));
            let status = statuses(&out);
            assert!(
                status == ["404"] || status == ["400"],
                "{engine} {path}: {}",
                String::from_utf8_lossy(&out)
            );
            assert!(
                !String::from_utf8_lossy(&out).contains("SECRET"),
                "{engine} {path} leaked"
            );
        }
        server.stop();
    }
}

#[test]
fn refused_requests_get_their_status_then_the_connection_closes() {
    let long_head = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    let many_fields: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\n{many_fields}\r\n");
    let cases: [(&[u8], &str); 11] = [
        (b"BLAH\r\n\r\n", "400"),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
            "405",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n",
            "413",
        ),
        (long_head.as_bytes(), "431"),
        (many.as_bytes(), "431"),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "501",
        ),
        // RFC 9112: HTTP/1.1 needs its Host, once; request smuggling; obsolete line folding.
        (b"GET / HTTP/1.1\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", "400"),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\nhi",
            "400",
        ),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n", "400"),
    ];
    for engine in EngineKind::KERNEL_TCP {
        let server = Server::start(engine);
        for (request, want) in cases {
            // A request before the bad one is still answered.
            let mut bytes = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
            bytes.extend_from_slice(request);
            let (out, closed) = exchange(server.addr, &bytes, Duration::from_secs(5));
            assert!(closed, "{engine}: still open after a {want}");
            assert_eq!(
                statuses(&out),
                ["200", want],
                "{engine}: {}",
                String::from_utf8_lossy(&out)
            );
            assert!(String::from_utf8_lossy(&out).contains("Connection: close\r\n"));
        }
        // Keep-alive survives all of that on other connections.
        let (out, _) = exchange(server.addr, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(5));
        assert_eq!(statuses(&out), ["200"], "{engine}");
        let summary = server.stop();
        assert!(summary.contains("protocol_errors=11"), "{engine}: {summary}");
    }
}

#[test]
fn curl_gets_the_files_and_the_statuses_from_every_engine() {
    if !common::tool_or_skip("curl") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("iolab-curl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for engine in EngineKind::KERNEL_TCP {
        let server = Server::start(engine);
        let body = dir.join(format!("{}.bin", engine.name()));
        // Two URLs on one connection: the second reuses it (keep-alive).
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "%{http_code} %{num_connects}\\n",
                "-o",
            ])
            .arg(&body)
            .arg(server.url("/pages/big.bin"))
            .args(["-o", "/dev/null"])
            .arg(server.url("/"))
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            report,
            "200 1\n200 0\n",
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(&body).unwrap(),
            big(),
            "{engine}: curl's copy differs"
        );
        for (args, want) in [
            (vec!["-I"], "200"),
            (vec!["-X", "DELETE"], "405"),
            (vec!["--path-as-is"], "400"),
        ] {
            let path = if args == ["--path-as-is"] {
                "/../secret.txt"
            } else {
                "/"
            };
            let out = Command::new("curl")
                .args(["-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(&args)
                .arg(server.url(path))
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                want,
                "{engine} curl {args:?}"
            );
        }
        server.stop();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrk_gets_only_good_answers_from_every_engine() {
    if !common::tool_or_skip("wrk") {
        return;
    }
    for engine in EngineKind::KERNEL_TCP {
        let server = Server::start(engine);
        let out = Command::new("wrk")
            .args(["-t1", "-c8", "-d1s", "--timeout", "5s"])
            .arg(server.url("/"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{engine}: {text}");
        let requests: u64 = text
            .lines()
            .find_map(|l| {
                l.trim()
                    .split_once(" requests in ")
                    .map(|(n, _)| n.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("{engine}: no request count in {text}"));
        assert!(requests > 0, "{engine}: {text}");
        assert!(!text.contains("Non-2xx"), "{engine}: {text}");
        assert!(!text.contains("Socket errors"), "{engine}: {text}");
        let summary = server.stop();
        assert!(summary.contains("protocol_errors=0"), "{engine}: {summary}");
    }
}

#[test]
fn iolab_load_speaks_http_to_every_engine() {
    let paths = load_paths("every");
    for engine in EngineKind::KERNEL_TCP {
        let server = Server::start(engine);
        http_load_counts_only_the_missing_page(engine, &server, &paths);
        server.stop();
    }
    let _ = std::fs::remove_file(&paths);
}

/// `iolab load --protocol http --closed-loop`: wrk's way, one GET out per connection at a
/// time, every response's status and length checked.
#[test]
fn a_closed_loop_of_gets_is_answered_in_full() {
    let server = Server::start(EngineKind::Epoll);
    let json = std::env::temp_dir().join(format!("iolab-http-closed-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_iolab"))
        .args(["load", "--protocol", "http", "--addr", &server.addr.to_string()])
        .args([
            "--closed-loop",
            "--duration",
            "0.5s",
            "--connections",
            "4",
            "--path",
            "/pages/big.bin",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(
        (summary["mode"].as_str(), summary["errors"].as_u64()),
        (Some("closed"), Some(0)),
        "{summary}"
    );
    let completed = summary["completed"].as_u64().unwrap();
    assert!(completed > 20, "{summary}");
    assert!(
        summary["bytes_received"].as_u64().unwrap() > completed * big().len() as u64,
        "{summary}"
    );
    let served = server.stop();
    assert!(served.contains("protocol_errors=0"), "{served}");
}

/// A `--paths` file: three pages with their sizes, and one that does not exist.
fn load_paths(tag: &str) -> PathBuf {
    let paths = std::env::temp_dir().join(format!("iolab-http-paths-{tag}-{}", std::process::id()));
    std::fs::write(
        &paths,
        format!(
            "/ {}\n/index.html {}\n/pages/big.bin {}\n/nope\n",
            INDEX.len(),
            INDEX.len(),
            big().len()
        ),
    )
    .unwrap();
    paths
}

fn http_load_counts_only_the_missing_page(engine: EngineKind, server: &Server, paths: &Path) {
    let json = paths.with_extension(format!("{}.json", engine.name()));
    let out = Command::new(env!("CARGO_BIN_EXE_iolab"))
        .args(["load", "--protocol", "http", "--addr", &server.addr.to_string()])
        .args([
            "--rate",
            "400",
            "--duration",
            "0.5s",
            "--connections",
            "4",
            "--seed",
            "7",
            "--paths",
        ])
        .arg(paths)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // Only the missing page fails, and it is counted under its status.
    let not_found = summary["error_kinds"]["http_status"]["404"].as_u64().unwrap_or(0);
    assert!(
        not_found > 0,
        "{engine}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(summary["errors"].as_u64(), Some(not_found), "{engine}: {summary}");
    assert!(summary["completed"].as_u64().unwrap() > 50, "{engine}: {summary}");
    assert_eq!(summary["config"]["protocol"], "http");
    let _ = std::fs::remove_file(&json);
}
