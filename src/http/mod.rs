//! Feature `http`: Go's `/debug/pprof` endpoints, a live HTML page and Prometheus metrics.
//!
//! Transport only: every body comes from the encoders in `profile/`.
//!
//! * [`respond`] maps a path and query to a [`Response`]; mount it in any framework (see
//!   `dev/examples/axum.rs`).
//! * [`serve`] runs a small server on a background thread, bound to loopback unless told
//!   otherwise; `HEAPSIGHT_HTTP_ADDR` sets the address for [`serve_from_env`].
//!
//! # Why httparse and our own threads, not tiny_http
//!
//! The server's allocations must not be counted as the program's. That is only possible if every
//! thread that touches a request runs inside the profiler guard, and only threads we start can.
//! tiny_http reads and parses requests on its own task-pool threads, so its buffers would show up
//! as the program's memory. `httparse` (the parser hyper uses) parses; one accept loop of ours
//! reads request heads from non-blocking connections, and [`WORKERS`] threads answer complete
//! requests, all inside the guard (`server.rs` says why idle clients never hold a worker).
//! The threads are spawned outside the guard and never exit before [`Handle::shutdown`]: a thread
//! spawned inside the guard would have std's per-thread bookkeeping allocated uncounted on one
//! thread and freed (counted) on another, and the counters would drift.
//! Requests are `GET`/`HEAD` (and the symbol `POST`), answered with `Connection: close`: the
//! few lines a profile scrape needs. The poll loop reads heads and bodies and writes replies,
//! each with a deadline, so no peer holds a worker (see `server.rs`).
//!
//! Files: `mod.rs` routes a request to a body; `page.rs` renders the HTML pages; `prometheus.rs`
//! the `/metrics` text; `server.rs` is the loopback server and its worker threads.
use std::thread;
use std::time::Duration;

mod page;
mod prometheus;
mod server;
mod symbol;

use page::{heapsight_page, index_page};
pub(crate) use prometheus::metrics_text;
pub use server::{
    serve, serve_from_env, serve_unix, serve_with, Handle, ServeOptions, BODY_TIMEOUT,
    DEFAULT_ADDR, DEFAULT_MAX_FDS, HEAD_TIMEOUT, MAX_HEADERS, MIN_MAX_FDS, TOTAL_TIMEOUT,
    WRITE_TIMEOUT,
};
/// Requests answered at once (one per worker thread); more complete requests wait in a queue.
/// A `?seconds=N` request holds its worker for N seconds.
pub const WORKERS: usize = 4;
/// Longest `?seconds=N` delta accepted.
pub const MAX_SECONDS: u64 = 300;
/// Largest request line and headers together; past it, 431.
const MAX_REQUEST_BYTES: usize = 16 * 1024;

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
    /// `heap?since=10m` / `allocs?since=10m`: now minus the recorded point nearest that age.
    Since {
        allocs: bool,
        secs: u64,
    },
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
    // One rule for repeated parameters: a parameter heapsight reads may appear once; twice is
    // a 400 (neither first-wins nor last-wins guesses what a proxy or client meant).
    let keys = || {
        query
            .split('&')
            .map(|p| p.split_once('=').map_or(p, |kv| kv.0))
    };
    for k in KNOWN_PARAMS {
        if keys().filter(|q| *q == k).count() > 1 {
            return Err(Refusal::BadRequest(format!(
                "query parameter {k} given more than once"
            )));
        }
    }
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
    if let Some(v) = query.split('&').find_map(|p| p.strip_prefix("since=")) {
        route = since_route(route, v)?;
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

/// The query parameters heapsight reads; each may be given once.
const KNOWN_PARAMS: [&str; 5] = ["debug", "seconds", "gc", "since", "symbolize"];

/// Longest `?since=` accepted (the history holds less unless started with a longer window).
pub const MAX_SINCE_SECS: u64 = 30 * 24 * 3600;

/// `heap` or `allocs` with `since=DURATION` (`30s`, `10m`, `1h`, `1h30m`, bare seconds), pprof only.
fn since_route(route: Route, v: &str) -> Result<Route, Refusal> {
    let bad = |why: &str| {
        Refusal::BadRequest(format!("bad query parameter since={}: {why}", printable(v)))
    };
    let Route::Heap {
        allocs,
        debug: false,
        seconds: None,
    } = route
    else {
        return Err(bad(
            "since goes with a pprof heap or allocs profile, without debug or seconds",
        ));
    };
    let secs = parse_age(v).ok_or_else(|| bad("expected a duration like 30s, 10m, 1h or 1h30m"))?;
    if !(1..=MAX_SINCE_SECS).contains(&secs) {
        return Err(bad(&format!("must be between 1s and {MAX_SINCE_SECS}s")));
    }
    Ok(Route::Since { allocs, secs })
}

/// Seconds in `30s`, `10m`, `1h`, `2d`, `1h30m` or a bare number of seconds.
fn parse_age(v: &str) -> Option<u64> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok();
    }
    let (mut total, mut num, mut any) = (0u64, None::<u64>, false);
    for c in v.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(num.unwrap_or(0).checked_mul(10)?.checked_add(d as u64)?);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        total = total.checked_add(num.take()?.checked_mul(unit)?)?;
        any = true;
    }
    (any && num.is_none()).then_some(total)
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
///
/// `?symbolize=0` on the profile routes (`heap`, `allocs`, and their `?seconds=N` deltas) skips
/// symbolization: addresses with mappings and build IDs, for `go tool pprof` to symbolize from
/// the binary or through `/debug/pprof/symbol` (see [`respond_post`]).
pub fn respond(path_and_query: &str) -> Response {
    respond_waiting(path_and_query, &mut |d| {
        thread::sleep(d);
        true
    })
}

/// [`respond`], with `wait(d)` in place of sleeping through a `?seconds=` delta: it returns
/// false to cancel (the client went away), and the answer is then a 503 nobody reads.
pub(crate) fn respond_waiting(
    path_and_query: &str,
    wait: &mut dyn FnMut(Duration) -> bool,
) -> Response {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    if path == SYMBOL_PATH {
        return symbol::answer(query.as_bytes());
    }
    let symbolize = match symbolize_param(query) {
        Ok(s) => s,
        Err(m) => return Response::text(400, m),
    };
    match parse(path_and_query) {
        Ok(route) => render(route, symbolize, wait),
        Err(Refusal::NotFound(m)) => Response::text(404, m),
        Err(Refusal::BadRequest(m)) => Response::text(400, m),
    }
}

/// Go's remote symbolization endpoint, which answers `POST`s as well as `GET`s.
const SYMBOL_PATH: &str = "/debug/pprof/symbol";

/// Answers a `POST` of `body` to `path_and_query`: `/debug/pprof/symbol` with `0x…+0x…`
/// addresses (what `go tool pprof` sends) gets one `0x… function` line per known address; any
/// other path is 405. Mount it next to [`respond`] to serve remote symbolization.
pub fn respond_post(path_and_query: &str, body: &[u8]) -> Response {
    if takes_post(path_and_query) {
        symbol::answer(body)
    } else {
        Response::text(405, format!("POST is only for {SYMBOL_PATH}"))
    }
}

/// Whether `path_and_query` answers `POST`s (so the server reads the body).
pub(crate) fn takes_post(path_and_query: &str) -> bool {
    path_and_query.split('?').next() == Some(SYMBOL_PATH)
}

/// `symbolize=0` asks for an unsymbolized profile; absent or 1, symbolized.
fn symbolize_param(query: &str) -> Result<bool, String> {
    let mut symbolize = true;
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("symbolize=") {
            symbolize = match v {
                "0" => false,
                "1" | "" => true,
                _ => {
                    return Err(format!(
                        "bad query parameter symbolize={}: expected 0 or 1",
                        printable(v)
                    ))
                }
            };
        }
    }
    Ok(symbolize)
}

fn render(route: Route, symbolize: bool, wait: &mut dyn FnMut(Duration) -> bool) -> Response {
    let take = || crate::snapshot::take(symbolize);
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
        Route::Since { allocs, secs } => match crate::history::since(Duration::from_secs(secs)) {
            Some(p) => profile_response(&p, false, allocs, "-since"),
            None => Response::text(
                404,
                "no history recorded yet: heapsight::history::start (http::serve starts it)".into(),
            ),
        },
        Route::Heap {
            allocs,
            debug,
            seconds,
        } => {
            let profile = match seconds {
                None => take(),
                Some(s) => {
                    let before = take();
                    if !wait(Duration::from_secs(s)) {
                        return Response::text(503, "cancelled: the client went away".into());
                    }
                    go_delta(&take(), &before)
                }
            };
            profile_response(&profile, debug, allocs, "")
        }
    }
}

/// Go's `?seconds=N`: every sample type is the later profile minus the earlier one, in-use
/// included (Go's pprof handler subtracts the whole earlier profile), as `?since=` does. Built on
/// [`crate::HeapProfile::delta`] (allocations in between, re-estimated per bucket), with the
/// earlier in-use estimates taken off bucket by bucket.
fn go_delta(later: &crate::HeapProfile, earlier: &crate::HeapProfile) -> crate::HeapProfile {
    use std::collections::HashMap;
    let mut d = later.delta(earlier);
    crate::guard::profiler_scope(|| {
        let addrs = |p: &crate::HeapProfile, i: usize| -> Vec<usize> {
            p.stacks[i].iter().map(|f| f.address).collect()
        };
        let mut stack_of: HashMap<Vec<usize>, usize> =
            (0..d.stacks.len()).map(|i| (addrs(&d, i), i)).collect();
        let mut at: HashMap<(usize, u32, u64, u64), usize> = d
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| ((b.stack, b.tag, b.size, b.rate), i))
            .collect();
        for b in earlier.buckets.iter() {
            if b.est.inuse_objects == 0.0 && b.est.inuse_bytes == 0.0 {
                continue;
            }
            let stack = *stack_of.entry(addrs(earlier, b.stack)).or_insert_with(|| {
                d.stacks.push(earlier.stacks[b.stack].clone());
                d.stacks.len() - 1
            });
            let i = *at.entry((stack, b.tag, b.size, b.rate)).or_insert_with(|| {
                d.buckets.push(crate::sites::Bucket {
                    stack,
                    tag: b.tag,
                    size: b.size,
                    rate: b.rate,
                    ..Default::default()
                });
                d.buckets.len() - 1
            });
            d.buckets[i].est.inuse_objects -= b.est.inuse_objects;
            d.buckets[i].est.inuse_bytes -= b.est.inuse_bytes;
        }
        d.assemble();
    });
    d
}

/// A profile as Go's `debug=1` text, or as a pprof attachment named `heap` or `allocs` (plus
/// `suffix`) as Go serves it.
fn profile_response(p: &crate::HeapProfile, debug: bool, allocs: bool, suffix: &str) -> Response {
    let mut body = Vec::new();
    let written = if debug {
        p.write_text(&mut body)
    } else if allocs {
        p.write_pprof_allocs(&mut body)
    } else {
        p.write_pprof(&mut body)
    };
    match written {
        Ok(()) if debug => Response::new(200, "text/plain; charset=utf-8", body),
        Ok(()) => {
            let mut r = Response::new(200, "application/octet-stream", body);
            let name = if allocs { "allocs" } else { "heap" };
            r.headers.push((
                "Content-Disposition",
                format!("attachment; filename=\"{name}{suffix}\""),
            ));
            r
        }
        Err(e) => Response::text(500, format!("could not write the profile: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn since_routes() {
        for (q, secs) in [
            ("30s", 30),
            ("10m", 600),
            ("1h", 3600),
            ("1h30m", 5400),
            ("45", 45),
        ] {
            assert_eq!(
                parse(&format!("/debug/pprof/heap?since={q}")),
                Ok(Route::Since {
                    allocs: false,
                    secs
                }),
                "{q}"
            );
        }
        assert_eq!(
            parse("/debug/pprof/allocs?since=2d"),
            Ok(Route::Since {
                allocs: true,
                secs: 172800
            })
        );
        for bad in [
            "/debug/pprof/heap?since=",
            "/debug/pprof/heap?since=m",
            "/debug/pprof/heap?since=1h30",
            "/debug/pprof/heap?since=10x",
            "/debug/pprof/heap?since=0s",
            "/debug/pprof/heap?since=31d",
            "/debug/pprof/heap?since=99999999999999999999h",
            "/debug/pprof/heap?since=10m&debug=1",
            "/debug/pprof/heap?since=10m&seconds=5",
            "/debug/heapsight?since=10m",
        ] {
            let r = parse(bad);
            assert!(matches!(r, Err(Refusal::BadRequest(_))), "{bad}: {r:?}");
        }
    }

    #[test]
    fn routes() {
        let heap = |allocs, debug, seconds| {
            Ok(Route::Heap {
                allocs,
                debug,
                seconds,
            })
        };
        for (target, route) in [
            ("/debug/pprof/heap", heap(false, false, None)),
            ("/debug/pprof/heap?debug=1", heap(false, true, None)),
            ("/debug/pprof/allocs?gc=1", heap(true, false, None)),
            ("/debug/pprof/heap?seconds=5", heap(false, false, Some(5))),
            ("/debug/pprof/", Ok(Route::Index)),
            ("/metrics", Ok(Route::Metrics)),
            ("/debug/heapsight", Ok(Route::Page)),
            ("/debug/pprof/heap?unknown=1&x", heap(false, false, None)),
        ] {
            assert_eq!(parse(target), route, "{target}");
        }
        assert!(matches!(
            parse("/debug/pprof/goroutine"),
            Err(Refusal::NotFound(_))
        ));
        for target in [
            "/debug/pprof/heap?seconds=0",
            "/debug/pprof/heap?seconds=301",
            "/debug/pprof/heap?seconds=x",
            "/debug/pprof/heap?debug=9",
            "/debug/pprof/heap?debug=1&seconds=2",
            "/debug/pprof/heap?seconds=2&seconds=3",
            "/debug/pprof/heap?since=1m&since=2m",
            "/debug/pprof/heap?debug=0&debug=0",
            "/debug/pprof/heap?symbolize=0&symbolize=1",
        ] {
            assert!(
                matches!(parse(target), Err(Refusal::BadRequest(_))),
                "{target}"
            );
        }
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
