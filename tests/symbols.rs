//! Symbolization without debug info in the process: `?symbolize=0` profiles, Go's remote
//! symbolization protocol read by the real `go tool pprof`, and stripped copies of this binary.
//!
//! One global-allocator scenario (`harness = false`). When `HEAPSIGHT_SYMBOLS_CHILD` is set, the
//! binary is a stripped copy run by `stripped_copies_still_profile` and only prints what its
//! profile holds.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

/// Keeps 64 sampled blocks live under a name to look for.
#[inline(never)]
fn keep_blocks_for_remote_symbols() -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    for i in 0..64 {
        out.push(std::hint::black_box(vec![1u8; 1000 + i]));
    }
    // Not a tail call: this frame is on every sampled stack.
    std::hint::black_box(&mut out);
    out
}

/// One request over a fresh connection: status line and body.
fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..at]).into_owned();
    let status = head.lines().next().unwrap_or("").to_string();
    (status, all[at + 4..].to_vec())
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The GNU build ID `readelf -n` reports for `file`.
fn build_id(file: &Path) -> Option<String> {
    let out = Command::new("readelf").arg("-n").arg(file).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .map(str::to_string)
}

/// A folder under `target/` for this test's files, emptied first.
fn scratch(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/symbols-HASH -> target/
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = target.join("heapsight-test-symbols").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unsymbolized_profile_has_addresses_mappings_and_build_ids(addr: SocketAddr) {
    let (status, body) = request(addr, "GET", "/debug/pprof/heap?symbolize=0", b"");
    assert!(status.contains("200"), "{status}");
    let proto = gunzip(&body);
    assert!(
        !contains(&proto, b"keep_blocks_for_remote_symbols"),
        "symbolize=0 must not name functions"
    );
    let exe = std::env::current_exe().unwrap();
    if let Some(id) = build_id(&exe) {
        assert!(contains(&proto, id.as_bytes()), "build ID {id} missing");
    }
    assert!(
        contains(&proto, exe.to_string_lossy().as_bytes()),
        "mapping file missing"
    );
    // The same for allocs and a delta; symbolized by default.
    for path in [
        "/debug/pprof/allocs?symbolize=0",
        "/debug/pprof/heap?symbolize=0&seconds=1",
    ] {
        let (status, body) = request(addr, "GET", path, b"");
        assert!(status.contains("200"), "{path}: {status}");
        assert!(
            !contains(&gunzip(&body), b"keep_blocks_for_remote_symbols"),
            "{path}"
        );
    }
    let (_, body) = request(addr, "GET", "/debug/pprof/heap", b"");
    assert!(contains(&gunzip(&body), b"keep_blocks_for_remote_symbols"));
    let (status, _) = request(addr, "GET", "/debug/pprof/heap?symbolize=x", b"");
    assert!(status.contains("400"), "{status}");
}

fn symbol_endpoint_speaks_gos_protocol(addr: SocketAddr) {
    let (status, body) = request(addr, "GET", "/debug/pprof/symbol", b"");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, b"num_symbols: 1\n");
    // pprof posts Location.address, the return address minus 1; any byte of a function names it.
    let f = keep_blocks_for_remote_symbols as *const () as usize + 4;
    let post = format!("{f:#x}+0x1+{:#x}", f + 1);
    let (status, body) = request(addr, "POST", "/debug/pprof/symbol", post.as_bytes());
    assert!(status.contains("200"), "{status}");
    let text = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "num_symbols: 1");
    for (line, a) in lines[1..].iter().zip([f, f + 1]) {
        assert_eq!(
            line,
            &format!("{a:#x} symbols::keep_blocks_for_remote_symbols"),
            "{text}"
        );
    }
    let (status, _) = request(addr, "POST", "/debug/pprof/heap", b"");
    assert!(status.contains("405"), "{status}");
}

fn go_tool_pprof_names_functions_through_the_symbol_endpoint(addr: SocketAddr) {
    if !support::have_tool("go") {
        return;
    }
    let dir = scratch("pprof");
    let empty = dir.join("no-binaries");
    std::fs::create_dir_all(&empty).unwrap();
    // Remote symbolization only, no binary search path, pprof's saved profiles under target/.
    let url = format!("http://{addr}/debug/pprof/heap?symbolize=0");
    let out = Command::new("go")
        .args([
            "tool",
            "pprof",
            "-symbolize=remote",
            "-top",
            "-sample_index=inuse_space",
        ])
        .arg(&url)
        .env("PPROF_BINARY_PATH", &empty)
        .env("PPROF_TMPDIR", &dir)
        .output()
        .expect("run go tool pprof");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("keep_blocks_for_remote_symbols"),
        "go tool pprof did not name the site through /debug/pprof/symbol:\n{stdout}\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a child prints: sites, whether the named site has its name, profiler_bytes growth, notes,
/// whether the build ID is in the pprof output.
fn child() {
    heapsight::set_sample_rate(1);
    let keep = keep_blocks_for_remote_symbols();
    let before = heapsight::stats().profiler_bytes;
    let p = heapsight::profile();
    let grew = heapsight::stats().profiler_bytes.saturating_sub(before);
    let named = p.sites().iter().any(|s| {
        s.frames().iter().any(|f| {
            f.symbols
                .iter()
                .any(|s| s.function.contains("keep_blocks_for_remote_symbols"))
        })
    });
    let mut text = Vec::new();
    p.write_text(&mut text).unwrap();
    let mut pb = Vec::new();
    p.write_pprof(&mut pb).unwrap();
    let pb = gunzip(&pb);
    println!("SITES {}", p.sites().len());
    println!("NAMED {named}");
    println!("GREW {grew}");
    for l in String::from_utf8_lossy(&text).lines() {
        if l.starts_with("# Symbolization: ") {
            println!("NOTE {l}");
        }
    }
    let exe = std::env::current_exe().unwrap();
    let id = build_id(&exe).unwrap_or_default();
    println!(
        "BUILD_ID {}",
        !id.is_empty() && contains(&pb, id.as_bytes())
    );
    drop(p);
    drop(keep);
}

fn stripped_copies_still_profile() {
    if !support::have_tool("objcopy") || !support::have_tool("readelf") {
        return;
    }
    let dir = scratch("stripped");
    let exe = std::env::current_exe().unwrap();
    for (how, flag) in [("no-debug", "--strip-debug"), ("stripped", "--strip-all")] {
        let copy = dir.join(format!("symbols-{how}"));
        let st = Command::new("objcopy")
            .arg(flag)
            .arg(&exe)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(st.success(), "objcopy {flag}");
        let out = Command::new(&copy)
            .env("HEAPSIGHT_SYMBOLS_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{how}: child failed\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or("")
                .to_string()
        };
        assert!(
            get("SITES ").parse::<usize>().unwrap_or(0) > 0,
            "{how}: {text}"
        );
        assert_eq!(get("BUILD_ID "), "true", "{how}: build ID kept\n{text}");
        // No large allocation: the profile and its symbols stay small.
        assert!(
            get("GREW ").parse::<u64>().unwrap() < 4 << 20,
            "{how}: {text}"
        );
        let notes: Vec<&str> = text.lines().filter(|l| l.starts_with("NOTE ")).collect();
        let copy_name = copy.to_string_lossy();
        match how {
            "no-debug" => {
                // The symbol table still names functions; the profile says file:line is missing.
                assert_eq!(get("NAMED "), "true", "{text}");
                assert!(
                    notes
                        .iter()
                        .any(|n| n.contains(&*copy_name) && n.contains("no debug info")),
                    "{text}"
                );
            }
            _ => {
                assert_eq!(get("NAMED "), "false", "{text}");
                assert!(
                    notes
                        .iter()
                        .any(|n| n.contains(&*copy_name) && n.contains("stripped")),
                    "{text}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

fn main() {
    if std::env::var_os("HEAPSIGHT_SYMBOLS_CHILD").is_some() {
        child();
        return;
    }
    support::watchdog(300, "symbols");
    heapsight::set_sample_rate(1);
    let keep = keep_blocks_for_remote_symbols();
    let server = heapsight::http::serve("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    let mut r = support::Runner::new();
    r.check(
        "unsymbolized_profile_has_addresses_mappings_and_build_ids",
        || unsymbolized_profile_has_addresses_mappings_and_build_ids(addr),
    );
    r.check("symbol_endpoint_speaks_gos_protocol", || {
        symbol_endpoint_speaks_gos_protocol(addr)
    });
    r.check(
        "go_tool_pprof_names_functions_through_the_symbol_endpoint",
        || go_tool_pprof_names_functions_through_the_symbol_endpoint(addr),
    );
    r.check(
        "stripped_copies_still_profile",
        stripped_copies_still_profile,
    );
    drop(keep);
    server.shutdown();
    r.finish();
}
