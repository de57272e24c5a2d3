//! The HTTP transport, spoken to over real loopback sockets: `go tool pprof` fetches profiles by
//! URL, /metrics parses, bad requests get 400/404/405 with a reason, `?seconds=N` is a delta
//! profile that does not block other requests, the server's allocations are not the program's,
//! and headless Chromium renders /debug/heapsight.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use heapsight::HeapSight;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

#[path = "../../tests/support/mod.rs"]
mod support;

/// A bare HTTP/1.1 client: returns (status, headers, body).
fn get(addr: SocketAddr, method: &str, target: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

fn server() -> heapsight::http::Handle {
    heapsight::http::serve("127.0.0.1:0").expect("bind loopback")
}

/// Blocks kept live by a function with a recognisable name, so profiles have known content.
#[inline(never)]
fn http_test_keeps_blocks() -> Vec<Vec<u8>> {
    (0..2000).map(|i| vec![i as u8; 4096]).collect()
}

fn go_tool_pprof_reads_profiles_by_url() {
    if !support::have_tool("go") {
        return;
    }
    let keep = http_test_keeps_blocks();
    let h = server();
    for (path, ty) in [("heap", "inuse_space"), ("allocs", "alloc_space")] {
        let url = format!("http://{}/debug/pprof/{path}", h.local_addr());
        let stdout = support::go_pprof(&["-top", &url]);
        assert!(
            stdout.contains(&format!("Type: {ty}")),
            "{path} should default to {ty}:\n{stdout}"
        );
        assert!(stdout.contains("http_test_keeps_blocks"), "{stdout}");
        let raw = support::go_pprof(&["-raw", &url]).replace("[dflt]", "");
        assert!(
            raw.contains(
                "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes"
            ),
            "{raw}"
        );
    }
    drop(keep);
    h.shutdown();
}

fn text_index_and_page() {
    let h = server();
    let (st, head, body) = get(h.local_addr(), "GET", "/debug/pprof/heap?debug=1");
    assert_eq!(st, 200);
    assert!(head.contains("text/plain"));
    assert!(String::from_utf8_lossy(&body).starts_with("heap profile: "));
    let (st, _, body) = get(h.local_addr(), "GET", "/debug/pprof/");
    assert_eq!(st, 200);
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.contains("allocs?debug=1") && body.contains("heap?debug=1"),
        "{body}"
    );
    let (st, _, body) = get(h.local_addr(), "GET", "/debug/heapsight");
    assert_eq!(st, 200);
    let body = String::from_utf8(body).unwrap();
    for needle in [
        "Counters (exact)",
        "id=top-inuse",
        "id=top-alloc",
        "<svg",
        "sample rate",
    ] {
        assert!(body.contains(needle), "page lacks {needle}");
    }
    // HEAD: headers only.
    let (st, head, body) = get(h.local_addr(), "HEAD", "/metrics");
    assert_eq!(st, 200);
    assert!(body.is_empty() && head.contains("Content-Length: "));
    h.shutdown();
}

/// Parses Prometheus text exposition: every sample line is `name{labels} value`.
fn metrics_parse() {
    let h = server();
    let (st, head, body) = get(h.local_addr(), "GET", "/metrics");
    assert_eq!(st, 200);
    assert!(head.contains("text/plain; version=0.0.4"));
    let text = String::from_utf8(body).unwrap();
    let mut values = std::collections::HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "{line}"
            );
            continue;
        }
        let (name, value) = line.rsplit_once(' ').expect("name value");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        let bare = name.split('{').next().unwrap();
        assert!(
            bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        values.insert(name.to_string(), v);
    }
    for m in [
        "heapsight_alloc_objects_total",
        "heapsight_alloc_bytes_total",
        "heapsight_free_objects_total",
        "heapsight_free_bytes_total",
        "heapsight_inuse_objects",
        "heapsight_inuse_bytes",
        "heapsight_peak_inuse_bytes",
        "heapsight_sample_rate_bytes",
        "heapsight_profiler_bytes",
        "heapsight_sample_padding_bytes",
        "heapsight_lost_samples_total",
        "heapsight_unattributed_samples_total",
    ] {
        assert!(values.contains_key(m), "missing {m}");
    }
    // One reading of the counters: in-use is exactly allocated minus freed.
    assert_eq!(
        values["heapsight_inuse_bytes"],
        values["heapsight_alloc_bytes_total"] - values["heapsight_free_bytes_total"]
    );
    assert!(values["heapsight_profiler_bytes"] > 0.0);
    h.shutdown();
}

fn bad_requests() {
    let h = server();
    let a = h.local_addr();
    let (st, _, body) = get(a, "GET", "/nope");
    assert_eq!(st, 404);
    assert_eq!(String::from_utf8(body).unwrap().lines().count(), 1);
    for q in [
        "seconds=abc",
        "seconds=0",
        "seconds=100000",
        "debug=7",
        "gc=x",
        "debug=1&seconds=1",
    ] {
        let (st, _, body) = get(a, "GET", &format!("/debug/pprof/heap?{q}"));
        let body = String::from_utf8(body).unwrap();
        assert_eq!(st, 400, "{q}: {body}");
        assert_eq!(body.lines().count(), 1, "one-line reason: {body:?}");
    }
    let (st, _, _) = get(a, "POST", "/debug/pprof/heap");
    assert_eq!(st, 405);
    // Garbage that is not HTTP at all: a 400, and the server keeps serving.
    let mut s = TcpStream::connect(a).unwrap();
    s.write_all(b"\x00\x01\x02 not http\r\n\r\n").unwrap();
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
    assert_eq!(get(a, "GET", "/metrics").0, 200);
    h.shutdown();
}

#[inline(never)]
fn allocated_before_the_window() -> Vec<Vec<u8>> {
    (0..3000).map(|_| vec![1u8; 2048]).collect()
}

#[inline(never)]
fn allocated_during_the_window(n: usize) -> usize {
    let v: Vec<Vec<u8>> = (0..n).map(|_| vec![2u8; 2048]).collect();
    v.len()
}

/// `?seconds=2` is a delta: what was allocated during the window, not before; other requests are
/// served while it waits.
fn seconds_delta_does_not_block() {
    let h = server();
    let a = h.local_addr();
    let before = allocated_before_the_window();
    let delta = thread::spawn(move || get(a, "GET", "/debug/pprof/heap?seconds=3"));
    // Served while the delta request is still waiting out its window.
    for _ in 0..5 {
        assert_eq!(get(a, "GET", "/metrics").0, 200);
    }
    assert!(
        !delta.is_finished(),
        "the 3 s delta returned before five quick requests were served"
    );
    for _ in 0..20 {
        allocated_during_the_window(3000);
        thread::sleep(Duration::from_millis(20));
    }
    let (st, _, body) = delta.join().unwrap();
    assert_eq!(st, 200);
    drop(before);
    if !support::have_tool("go") {
        return;
    }
    let dir = support::TempDir::new("delta");
    let path = dir.join("delta.pb.gz");
    std::fs::write(&path, &body).unwrap();
    let top = support::go_pprof(&["-top", "-sample_index=alloc_space", path.to_str().unwrap()]);
    assert!(top.contains("allocated_during_the_window"), "{top}");
    assert!(
        !top.contains("allocated_before_the_window"),
        "delta shows allocations from before the window:\n{top}"
    );
    h.shutdown();
}

/// Everything the server does runs inside the profiler guard. The client below allocates
/// nothing on its own (stack buffers, a SocketAddr), so the program's counters must not move.
fn server_allocations_are_not_the_programs() {
    let h = server();
    let a = h.local_addr();
    heapsight::set_sample_rate(1);
    let before = heapsight::stats();
    for path in [
        &b"/debug/pprof/heap"[..],
        b"/debug/pprof/heap?debug=1",
        b"/metrics",
        b"/debug/heapsight",
        b"/nope",
    ] {
        let mut s = TcpStream::connect(a).unwrap();
        s.write_all(b"GET ").unwrap();
        s.write_all(path).unwrap();
        s.write_all(b" HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let mut total = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(total > 0);
    }
    let after = heapsight::stats();
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    assert_eq!(
        after.alloc_objects, before.alloc_objects,
        "server allocations counted as the program's"
    );
    assert_eq!(after.free_objects, before.free_objects);
    h.shutdown();
}

/// Headless Chromium renders the page: the DOM has the tables and the inline SVG, and the
/// screenshot is a real picture (many colours, mostly not blank).
fn chromium_renders_the_page() {
    if !support::have_tool("chromium") {
        return;
    }
    let keep = http_test_keeps_blocks();
    let h = server();
    let url = format!("http://{}/debug/heapsight", h.local_addr());
    let chromium = support::Chromium::new();
    let dom = chromium.dom(&url);
    for needle in [
        "Counters (exact)",
        "<svg",
        "id=\"top-inuse\"",
        "http_test_keeps_blocks",
    ] {
        assert!(dom.contains(needle), "rendered DOM lacks {needle}");
    }
    let shot = chromium.screenshot(&url, 1200, 1600);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut img = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut img).unwrap();
    assert_eq!((info.width, info.height), (1200, 1600));
    let px = info.line_size / info.width as usize;
    let mut colours = std::collections::HashSet::new();
    let mut not_white = 0usize;
    for p in img[..info.buffer_size()].chunks(px) {
        colours.insert(p[..3].to_vec());
        if p[..3] != [255, 255, 255] {
            not_white += 1;
        }
    }
    let frac = not_white as f64 / (info.width * info.height) as f64;
    println!(
        "    screenshot {}: {} colours, {:.1}% not white",
        shot.display(),
        colours.len(),
        frac * 100.0
    );
    assert!(
        colours.len() > 50,
        "screenshot has {} colours: blank page?",
        colours.len()
    );
    assert!(
        frac > 0.02,
        "screenshot is {:.1}% non-white: blank page?",
        frac * 100.0
    );
    drop(keep);
    h.shutdown();
}

/// Idle and half-open connections never hold a worker: with 20 connections that send nothing
/// and 8 that stall halfway through their request head (more than twice the workers), a real
/// request is answered while every one of them is still open, i.e. without waiting for any of
/// them to time out.
fn idle_connections_do_not_starve_requests() {
    let h = server();
    let a = h.local_addr();
    let mut idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(a).unwrap()).collect();
    for _ in 0..8 {
        let mut s = TcpStream::connect(a).unwrap();
        s.write_all(b"GET /debug/pprof/heap HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        idle.push(s);
    }
    let t = std::time::Instant::now();
    let (st, _, _) = get(a, "GET", "/metrics");
    let took = t.elapsed();
    assert_eq!(st, 200);
    println!(
        "    answered in {:.1} ms beside {} idle connections",
        took.as_secs_f64() * 1e3,
        idle.len()
    );
    for (i, s) in idle.iter_mut().enumerate() {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!(
                "idle connection {i} was answered or closed ({other:?}) before the request \
                 was served: the request waited for it"
            ),
        }
    }
    drop(idle);
    h.shutdown();
}

/// `HEAPSIGHT_HTTP_ADDR`: Go's `:PORT` serves on every interface; a malformed address or one
/// that cannot be bound gives no server (and one stderr line), never an error or a panic.
fn http_addr_from_env() {
    // Nothing else in this process reads the environment while the checks run.
    std::env::set_var("HEAPSIGHT_HTTP_ADDR", ":0");
    let h = heapsight::http::serve_from_env().expect(":0 serves");
    assert!(h.local_addr().ip().is_unspecified(), "{}", h.local_addr());
    let local = SocketAddr::from(([127, 0, 0, 1], h.local_addr().port()));
    assert_eq!(get(local, "GET", "/metrics").0, 200);
    // The port is taken now: binding it again fails, and the program goes on without a server.
    std::env::set_var(
        "HEAPSIGHT_HTTP_ADDR",
        format!("0.0.0.0:{}", h.local_addr().port()),
    );
    assert!(heapsight::http::serve_from_env().is_none());
    for bad in ["6060", "localhost:", "127.0.0.1:99999", "a b:1"] {
        std::env::set_var("HEAPSIGHT_HTTP_ADDR", bad);
        assert!(heapsight::http::serve_from_env().is_none(), "{bad}");
    }
    std::env::remove_var("HEAPSIGHT_HTTP_ADDR");
    assert!(heapsight::http::serve_from_env().is_none());
    h.shutdown();
}

fn main() {
    support::run(&[
        (
            "server_allocations_are_not_the_programs",
            server_allocations_are_not_the_programs,
        ),
        ("text_index_and_page", text_index_and_page),
        ("metrics_parse", metrics_parse),
        ("bad_requests", bad_requests),
        (
            "go_tool_pprof_reads_profiles_by_url",
            go_tool_pprof_reads_profiles_by_url,
        ),
        ("seconds_delta_does_not_block", seconds_delta_does_not_block),
        ("chromium_renders_the_page", chromium_renders_the_page),
        (
            "idle_connections_do_not_starve_requests",
            idle_connections_do_not_starve_requests,
        ),
        ("http_addr_from_env", http_addr_from_env),
    ]);
}
