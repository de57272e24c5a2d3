//! Feature `http`: Go's `/debug/pprof` endpoints, a live HTML page and Prometheus metrics.
//!
//! Transport only: every body comes from the encoders in `profile/`.
//!
//! * [`respond`] maps a path and query to a [`Response`]; mount it in any framework (see
//!   `examples/axum.rs`).
//! * [`serve`] runs a small server on a background thread, bound to loopback unless told
//!   otherwise; `HEAPSIGHT_HTTP_ADDR` sets the address for [`serve_from_env`].
//!
//! # Why httparse and our own threads, not tiny_http
//!
//! The server's allocations must not be counted as the program's. That is only possible if every
//! thread that touches a request runs inside the profiler guard, and only threads we start can.
//! tiny_http reads and parses requests on its own task-pool threads, so its buffers would show up
//! as the program's memory. `httparse` (the parser hyper uses) parses; the accept loop and one
//! [`WORKERS`] threads of ours, each accepting on the shared socket and serving inside the guard.
//! The workers are spawned outside the guard and never exit before [`Handle::shutdown`]: a thread
//! spawned inside the guard would have std's per-thread bookkeeping allocated uncounted on one
//! thread and freed (counted) on another, and the counters would drift.
//! Requests are `GET`/`HEAD` with no body, answered with `Connection: close`: the few lines a
//! profile scrape needs, with read and write timeouts so a slow client never holds a thread
//! forever.
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::guard::profiler_scope;
use crate::{HeapProfile, SampleType};

/// Requests served at once (one per worker thread); more wait in the listen backlog. A
/// `?seconds=N` request holds its worker for N seconds.
pub const WORKERS: usize = 4;
/// Longest `?seconds=N` delta accepted.
pub const MAX_SECONDS: u64 = 300;
const MAX_REQUEST_BYTES: usize = 16 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP response: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// 200, 400 (bad query, with a one-line reason as the body), 404 or 405.
    pub status: u16,
    /// The `Content-Type` header value.
    pub content_type: &'static str,
    /// Extra headers (e.g. `Content-Disposition` for profile downloads).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }
    fn text(status: u16, msg: String) -> Self {
        let mut body = msg.into_bytes();
        body.push(b'\n');
        Response::new(status, "text/plain; charset=utf-8", body)
    }
}

/// What a request asks for, after validation. Parsing is separate from serving so that it can
/// be tested (and fuzzed) without sleeping or encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Index,
    /// `allocs`: default sample type alloc_space instead of inuse_space.
    Heap {
        allocs: bool,
        debug: bool,
        seconds: Option<u64>,
    },
    Page,
    Metrics,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotFound(String),
    BadRequest(String),
}

pub(crate) fn parse(path_and_query: &str) -> Result<Route, Refusal> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_and_query, ""),
    };
    let route = match path {
        "/debug/pprof" | "/debug/pprof/" => Route::Index,
        "/debug/pprof/heap" => Route::Heap {
            allocs: false,
            debug: false,
            seconds: None,
        },
        "/debug/pprof/allocs" => Route::Heap {
            allocs: true,
            debug: false,
            seconds: None,
        },
        "/debug/heapsight" | "/debug/heapsight/" => Route::Page,
        "/metrics" => Route::Metrics,
        _ => {
            return Err(Refusal::NotFound(format!(
                "404 page not found: {}",
                printable(path)
            )))
        }
    };
    let mut route = route;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |why: &str| {
            Refusal::BadRequest(format!(
                "bad query parameter {}={}: {why}",
                printable(k),
                printable(v)
            ))
        };
        match (&mut route, k) {
            (Route::Heap { debug, .. }, "debug") => match v {
                "0" | "" => *debug = false,
                "1" | "2" => *debug = true,
                _ => return Err(bad("expected 0 or 1")),
            },
            (Route::Heap { seconds, .. }, "seconds") => match v.parse::<u64>() {
                Ok(n) if (1..=MAX_SECONDS).contains(&n) => *seconds = Some(n),
                Ok(_) => return Err(bad(&format!("must be between 1 and {MAX_SECONDS}"))),
                Err(_) => return Err(bad("expected a whole number of seconds")),
            },
            // Go accepts gc=1 (run a GC first); Rust frees at once, so there is nothing to do.
            (Route::Heap { .. }, "gc") if v.parse::<i64>().is_err() && !v.is_empty() => {
                return Err(bad("expected a number"));
            }
            // Like Go, unknown parameters are ignored: pprof clients add their own.
            _ => {}
        }
    }
    if let Route::Heap {
        debug: true,
        seconds: Some(_),
        ..
    } = route
    {
        return Err(Refusal::BadRequest(
            "seconds and debug=1 cannot be combined (Go refuses it too)".into(),
        ));
    }
    Ok(route)
}

/// Path text safe to echo in a one-line reason.
fn printable(s: &str) -> String {
    s.chars()
        .take(100)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Answers one request for `path_and_query` (e.g. `/debug/pprof/heap?debug=1`). Never panics;
/// refusals come back as 400/404 with a one-line reason. `?seconds=N` blocks the calling thread
/// for N seconds (it is a profile of the next N seconds).
///
/// The body is allocated on the calling thread like any other allocation of the program; the
/// profiling and encoding behind it are the profiler's own and uncounted.
pub fn respond(path_and_query: &str) -> Response {
    match parse(path_and_query) {
        Ok(route) => render(route),
        Err(Refusal::NotFound(m)) => Response::text(404, m),
        Err(Refusal::BadRequest(m)) => Response::text(400, m),
    }
}

fn render(route: Route) -> Response {
    match route {
        Route::Index => Response::new(200, "text/html; charset=utf-8", index_page().into_bytes()),
        Route::Metrics => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics_text().into_bytes(),
        ),
        Route::Page => Response::new(
            200,
            "text/html; charset=utf-8",
            heapsight_page().into_bytes(),
        ),
        Route::Heap {
            allocs,
            debug,
            seconds,
        } => {
            let profile = match seconds {
                None => crate::profile(),
                Some(s) => {
                    let before = crate::profile();
                    thread::sleep(Duration::from_secs(s));
                    crate::profile().delta(&before)
                }
            };
            let mut body = Vec::new();
            let written = if debug {
                profile.write_text(&mut body)
            } else if allocs {
                profile.write_pprof_allocs(&mut body)
            } else {
                profile.write_pprof(&mut body)
            };
            match written {
                Ok(()) if debug => Response::new(200, "text/plain; charset=utf-8", body),
                Ok(()) => {
                    let mut r = Response::new(200, "application/octet-stream", body);
                    let name = if allocs { "allocs" } else { "heap" };
                    r.headers.push((
                        "Content-Disposition",
                        format!("attachment; filename=\"{name}\""),
                    ));
                    r
                }
                Err(e) => Response::text(500, format!("could not write the profile: {e}")),
            }
        }
    }
}

fn index_page() -> String {
    let mut s = String::from(
        "<!DOCTYPE html><html><head><title>/debug/pprof/</title></head><body>\n\
         <p>/debug/pprof/ (heapsight)</p>\n<p>Types of profiles available:</p>\n\
         <table><thead><td>Count</td><td>Profile</td></thead>\n",
    );
    let live = crate::stats().inuse_objects;
    for (name, href) in [("allocs", "allocs?debug=1"), ("heap", "heap?debug=1")] {
        let _ = writeln!(
            s,
            "<tr><td>{live}</td><td><a href='{href}'>{name}</a></td></tr>"
        );
    }
    s.push_str(
        "</table>\n<a href=\"/debug/heapsight\">heapsight page</a> &middot; <a href=\"/metrics\">metrics</a>\n\
         <br><p>Profile Descriptions:<ul>\n\
         <li><div class=profile-name>allocs: </div> A sampling of all past memory allocations</li>\n\
         <li><div class=profile-name>heap: </div> A sampling of memory allocations of live objects. \
         Add ?seconds=N for the allocations of the next N seconds.</li>\n\
         </ul></p>\n</body></html>\n",
    );
    s
}

/// Prometheus text exposition of the exact counters and per-tag series.
pub(crate) fn metrics_text() -> String {
    let s = crate::stats();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    metric(
        "heapsight_alloc_objects_total",
        "counter",
        "Allocations made (exact).",
        s.alloc_objects,
    );
    metric(
        "heapsight_alloc_bytes_total",
        "counter",
        "Bytes allocated (exact).",
        s.alloc_bytes,
    );
    metric(
        "heapsight_free_objects_total",
        "counter",
        "Blocks freed (exact).",
        s.free_objects,
    );
    metric(
        "heapsight_free_bytes_total",
        "counter",
        "Bytes freed (exact).",
        s.free_bytes,
    );
    metric(
        "heapsight_inuse_objects",
        "gauge",
        "Blocks live now (exact).",
        s.inuse_objects,
    );
    metric(
        "heapsight_inuse_bytes",
        "gauge",
        "Bytes live now (exact).",
        s.inuse_bytes,
    );
    metric(
        "heapsight_peak_inuse_bytes",
        "gauge",
        "Highest live bytes reached.",
        s.peak_inuse_bytes,
    );
    metric(
        "heapsight_sample_rate_bytes",
        "gauge",
        "Mean bytes between samples (0 = off).",
        s.sample_rate,
    );
    metric(
        "heapsight_samples_total",
        "counter",
        "Allocations sampled.",
        s.samples,
    );
    metric(
        "heapsight_profiler_bytes",
        "gauge",
        "Memory held by the profiler itself.",
        s.profiler_bytes,
    );
    let tags = crate::tag_stats();
    if !tags.is_empty() {
        let series: [TagSeries; 4] = [
            (
                "heapsight_tag_alloc_objects_total",
                "counter",
                "Allocations made under the tag (exact).",
                |t| t.alloc_objects,
            ),
            (
                "heapsight_tag_alloc_bytes_total",
                "counter",
                "Bytes allocated under the tag (exact).",
                |t| t.alloc_bytes,
            ),
            (
                "heapsight_tag_inuse_objects",
                "gauge",
                "Live blocks allocated under the tag (sampled estimate).",
                |t| t.inuse_objects,
            ),
            (
                "heapsight_tag_inuse_bytes",
                "gauge",
                "Live bytes allocated under the tag (sampled estimate).",
                |t| t.inuse_bytes,
            ),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for t in &tags {
                let _ = writeln!(
                    out,
                    "{name}{{tag=\"{}\"}} {}",
                    escape_label(&t.name),
                    get(t)
                );
            }
        }
    }
    out
}

/// A per-tag Prometheus series: name, type, help text, and the value it reads.
type TagSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::TagStats) -> u64,
);

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_html(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The page a person reads: counters, top sites by live and by allocated bytes, tags, the
/// flamegraph inline. No scripts, no external assets: it works offline and in a text browser.
fn heapsight_page() -> String {
    let p = crate::profile();
    let s = p.stats();
    let mut h = String::new();
    h.push_str(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>heapsight</title><style>\
         body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
         table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:right}\
         td.l,th.l{text-align:left;font-family:monospace}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.2em}\
         .k{color:#666}#flamegraph svg{max-width:100%;height:auto}</style></head><body>\n<h1>heapsight</h1>\n",
    );
    let _ = writeln!(
        h,
        "<p class=k>pid {} &middot; sample rate {} &middot; {} samples &middot; profiler memory {} &middot; \
         <a href=\"/debug/pprof/heap\">heap.pb.gz</a> &middot; <a href=\"/debug/pprof/heap?debug=1\">text</a> &middot; \
         <a href=\"/metrics\">metrics</a></p>",
        std::process::id(),
        if s.sample_rate == 0 { "off".to_string() } else { human(s.sample_rate) },
        s.samples,
        human(s.profiler_bytes)
    );
    h.push_str("<h2>Counters (exact)</h2>\n<table id=counters><tr><th class=l></th><th>objects</th><th>bytes</th></tr>\n");
    for (name, o, b) in [
        ("allocated", s.alloc_objects, s.alloc_bytes),
        ("freed", s.free_objects, s.free_bytes),
        ("in use", s.inuse_objects, s.inuse_bytes),
    ] {
        let _ = writeln!(
            h,
            "<tr><td class=l>{name}</td><td>{o}</td><td>{} ({b})</td></tr>",
            human(b)
        );
    }
    let _ = writeln!(
        h,
        "<tr><td class=l>peak in use</td><td></td><td>{}</td></tr></table>",
        human(s.peak_inuse_bytes)
    );
    for (title, id, ty) in [
        (
            "Top sites by live bytes (estimated)",
            "top-inuse",
            SampleType::InuseSpace,
        ),
        (
            "Top sites by allocated bytes (estimated)",
            "top-alloc",
            SampleType::AllocSpace,
        ),
    ] {
        let _ = writeln!(
            h,
            "<h2>{title}</h2>\n<pre id={id}>{}</pre>",
            escape_html(&p.top(10, ty).to_string())
        );
    }
    let tags = crate::tag_stats();
    if !tags.is_empty() {
        h.push_str("<h2>Tags</h2>\n<table id=tags><tr><th class=l>tag</th><th>alloc objects</th><th>alloc bytes</th><th>live objects (est.)</th><th>live bytes (est.)</th></tr>\n");
        for t in &tags {
            let _ = writeln!(
                h,
                "<tr><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape_html(&t.name),
                t.alloc_objects,
                human(t.alloc_bytes),
                t.inuse_objects,
                human(t.inuse_bytes)
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2>Live bytes by stack</h2>\n<div id=flamegraph>");
    h.push_str(&flamegraph_svg(&p));
    h.push_str("</div>\n</body></html>\n");
    h
}

fn flamegraph_svg(p: &HeapProfile) -> String {
    let mut svg = Vec::new();
    match p.write_flamegraph(&mut svg, SampleType::InuseSpace) {
        Ok(()) => {
            let s = String::from_utf8_lossy(&svg);
            // Inline: drop the XML prolog and DOCTYPE, keep the <svg> element. Drop inferno's
            // script too: inlined in an HTML page its `init()` takes the page for the SVG
            // document and squeezes the frames to a sliver. The page stays script-free; every
            // frame keeps its `<title>` tooltip.
            let s = &s[s.find("<svg").unwrap_or(0)..];
            let s = s.replacen(r#" onload="init(evt)""#, "", 1);
            match (s.find("<script"), s.find("</script>")) {
                (Some(a), Some(b)) if a < b => {
                    format!("{}{}", &s[..a], &s[b + "</script>".len()..])
                }
                _ => s,
            }
        }
        Err(e) => format!("<p>no flamegraph: {}</p>", escape_html(&e.to_string())),
    }
}

/// A running server: its address, and a way to stop it.
pub struct Handle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// State the workers share with their handle.
struct Shared {
    stop: AtomicBool,
    /// Workers that have entered the profiler guard and are ready to accept.
    ready: AtomicUsize,
}

impl Handle {
    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the workers once their current request is done, and joins them.
    pub fn shutdown(self) {
        self.shared.stop.store(true, Relaxed);
        // Wake every worker blocked in accept() with a connection of our own.
        for _ in 0..self.workers.len() {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// The default address: loopback only. Exposing heap profiles beyond the machine is a choice
/// to make explicitly (`HEAPSIGHT_HTTP_ADDR=0.0.0.0:6060`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:6060";

/// Serves the endpoints on `addr` from [`WORKERS`] background threads. Everything they do runs
/// inside the profiler guard: none of the server's allocations is counted as the program's.
/// Dropping the [`Handle`] leaves the server running for the life of the process.
///
/// Returns once every worker is ready: what std allocates while starting a thread (before the
/// worker's code runs, so outside the guard) is then behind the caller, not in the middle of
/// whatever the program measures next.
pub fn serve(addr: impl ToSocketAddrs) -> io::Result<Handle> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
    });
    let mut workers = Vec::with_capacity(WORKERS);
    for i in 0..WORKERS {
        let l = listener.try_clone()?;
        let shared = shared.clone();
        workers.push(
            thread::Builder::new()
                .name(format!("heapsight-http-{i}"))
                .spawn(move || {
                    profiler_scope(|| {
                        shared.ready.fetch_add(1, Release);
                        worker(l, &shared.stop)
                    })
                })?,
        );
    }
    while shared.ready.load(Acquire) < WORKERS {
        thread::sleep(Duration::from_millis(1));
    }
    Ok(Handle {
        addr,
        shared,
        workers,
    })
}

/// Serves on `HEAPSIGHT_HTTP_ADDR` if it is set (`Ok(None)` if not): drop-in use without code
/// changes beyond this one call. An unusable address is an error naming the variable.
pub fn serve_from_env() -> io::Result<Option<Handle>> {
    match std::env::var("HEAPSIGHT_HTTP_ADDR") {
        Ok(a) if !a.trim().is_empty() => serve(a.trim())
            .map(Some)
            .map_err(|e| io::Error::new(e.kind(), format!("HEAPSIGHT_HTTP_ADDR={a:?}: {e}"))),
        _ => Ok(None),
    }
}

fn worker(listener: TcpListener, stop: &AtomicBool) {
    while !stop.load(Relaxed) {
        match listener.accept() {
            Ok((stream, _)) if !stop.load(Relaxed) => {
                let _ = handle_connection(stream);
            }
            Ok(_) => return,
            // Out of descriptors and the like: back off instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn handle_connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (method, target) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_BYTES => continue,
            Ok(httparse::Status::Partial) => {
                return write_response(
                    &mut stream,
                    &Response::text(431, "request header too large".into()),
                    true,
                )
            }
            Err(e) => {
                return write_response(
                    &mut stream,
                    &Response::text(400, format!("malformed request: {e}")),
                    true,
                )
            }
        }
    };
    let head_only = method == "HEAD";
    let response = if method == "GET" || head_only {
        respond(&target)
    } else {
        Response::text(
            405,
            format!("method {} not allowed: use GET", printable(&method)),
        )
    };
    write_response(&mut stream, &response, !head_only)
}

fn write_response(stream: &mut TcpStream, r: &Response, with_body: bool) -> io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    for (k, v) in &r.headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if with_body {
        stream.write_all(&r.body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routes() {
        assert_eq!(
            parse("/debug/pprof/heap"),
            Ok(Route::Heap {
                allocs: false,
                debug: false,
                seconds: None
            })
        );
        assert_eq!(
            parse("/debug/pprof/heap?debug=1"),
            Ok(Route::Heap {
                allocs: false,
                debug: true,
                seconds: None
            })
        );
        assert_eq!(
            parse("/debug/pprof/allocs?gc=1"),
            Ok(Route::Heap {
                allocs: true,
                debug: false,
                seconds: None
            })
        );
        assert_eq!(
            parse("/debug/pprof/heap?seconds=5"),
            Ok(Route::Heap {
                allocs: false,
                debug: false,
                seconds: Some(5)
            })
        );
        assert_eq!(parse("/debug/pprof/"), Ok(Route::Index));
        assert_eq!(parse("/metrics"), Ok(Route::Metrics));
        assert_eq!(parse("/debug/heapsight"), Ok(Route::Page));
        assert!(matches!(
            parse("/debug/pprof/goroutine"),
            Err(Refusal::NotFound(_))
        ));
        assert!(matches!(
            parse("/debug/pprof/heap?seconds=0"),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            parse("/debug/pprof/heap?seconds=301"),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            parse("/debug/pprof/heap?seconds=x"),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            parse("/debug/pprof/heap?debug=9"),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            parse("/debug/pprof/heap?debug=1&seconds=2"),
            Err(Refusal::BadRequest(_))
        ));
        assert_eq!(
            parse("/debug/pprof/heap?unknown=1&x"),
            Ok(Route::Heap {
                allocs: false,
                debug: false,
                seconds: None
            })
        );
    }

    #[test]
    fn reasons_are_one_printable_line() {
        for q in [
            "/debug/pprof/heap?seconds=\u{1F600}\n",
            "/nope\r\nInjected: 1",
        ] {
            let r = respond(q);
            assert!(r.status == 400 || r.status == 404);
            let body = String::from_utf8(r.body).unwrap();
            assert_eq!(body.matches('\n').count(), 1, "{body:?}");
            assert!(!body.trim_end().contains(['\r', '\n']));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]
        /// Any path and query: parsing never panics, and whatever it accepts is a valid route
        /// with an in-range `seconds`.
        #[test]
        fn parse_never_panics(path in prop_oneof![
            Just("/debug/pprof/heap".to_string()),
            Just("/debug/pprof/allocs".to_string()),
            Just("/metrics".to_string()),
            "\\PC{0,30}",
        ], query in proptest::collection::vec(("(debug|seconds|gc|[a-z]{1,5}|\\PC{0,4})", "\\PC{0,12}"), 0..4)) {
            let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let target = if q.is_empty() { path } else { format!("{path}?{}", q.join("&")) };
            match parse(&target) {
                Ok(Route::Heap { seconds: Some(s), .. }) => prop_assert!((1..=MAX_SECONDS).contains(&s)),
                Ok(_) => {}
                Err(Refusal::BadRequest(m)) | Err(Refusal::NotFound(m)) => prop_assert!(!m.contains(['\n', '\r'])),
            }
        }
    }
}
