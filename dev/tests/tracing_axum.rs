//! `heapsight::tracing::TagLayer` in a real service: axum with tower-http's `TraceLayer` on a
//! multi-threaded tokio runtime, the route in the request span's `http.route` field. Requests to
//! two routes, whose handlers allocate across `.await` points (so their tasks are polled
//! several times, on whichever worker is free): every block each handler allocates is counted
//! under its route and none under the other, exactly; the exact per-tag counters cover at least
//! that; and `go tool pprof -tagfocus` on the written profile keeps one route.
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::Request;
use axum::routing::get;
use axum::Router;
use tower_http::trace::TraceLayer;
use tracing_subscriber::prelude::*;

#[path = "../../tests/support/mod.rs"]
mod support;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

const REQUESTS: u64 = 12;
const A_BLOCKS: u64 = 3;
const A_SIZE: usize = 10_000;
const B_BLOCKS: u64 = 2;
const B_SIZE: usize = 24_000;

#[inline(never)]
fn route_a_block() -> Vec<u8> {
    std::hint::black_box(vec![1u8; A_SIZE])
}

#[inline(never)]
fn route_b_block() -> Vec<u8> {
    std::hint::black_box(vec![2u8; B_SIZE])
}

async fn handler_a() -> String {
    let mut total = 0;
    for _ in 0..A_BLOCKS {
        total += route_a_block().len();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    total.to_string()
}

async fn handler_b() -> String {
    let mut total = 0;
    for _ in 0..B_BLOCKS {
        total += route_b_block().len();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    total.to_string()
}

/// Sum of (alloc_objects, alloc_bytes) over the sites of `tag` with a frame named like `needle`.
fn by_tag(p: &heapsight::HeapProfile, tag: &str, needle: &str) -> (u64, u64) {
    p.sites_by_tag()
        .iter()
        .filter(|s| s.tag() == Some(tag) && support::site_has(s, needle))
        .fold((0, 0), |(o, b), s| (o + s.alloc_objects, b + s.alloc_bytes))
}

fn per_route_memory_from_trace_spans() {
    // Every allocation sampled with weight 1, from before the runtime's threads start (a
    // running thread picks a new rate up only at its next sample): the handlers' 10 kB and
    // 24 kB blocks are counted exactly in the profile.
    heapsight::set_sample_rate(1);
    tracing_subscriber::registry()
        .with(heapsight::tracing::TagLayer::field("http.route"))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .unwrap();
    let app = Router::new()
        .route("/a", get(handler_a))
        .route("/b/{id}", get(handler_b))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str);
                tracing::info_span!("request", http.route = route)
            }),
        );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, app).await });

    std::thread::scope(|s| {
        for c in 0..3u64 {
            s.spawn(move || {
                for i in 0..REQUESTS {
                    if i % 3 == c {
                        assert_eq!(support::get_status(addr, "/a"), 200);
                        assert_eq!(support::get_status(addr, &format!("/b/{i}")), 200);
                    }
                }
            });
        }
    });
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    let p = heapsight::profile();

    let a = by_tag(&p, "/a", "route_a_block");
    let b = by_tag(&p, "/b/{id}", "route_b_block");
    println!("    /a: {a:?} from route_a_block; /b/{{id}}: {b:?} from route_b_block");
    assert_eq!(
        a,
        (REQUESTS * A_BLOCKS, REQUESTS * A_BLOCKS * A_SIZE as u64)
    );
    assert_eq!(
        b,
        (REQUESTS * B_BLOCKS, REQUESTS * B_BLOCKS * B_SIZE as u64)
    );
    assert_eq!(by_tag(&p, "/a", "route_b_block"), (0, 0));
    assert_eq!(by_tag(&p, "/b/{id}", "route_a_block"), (0, 0));
    // No handler block escaped its route: the untagged and per-stack views agree.
    let all_a: u64 = p
        .sites()
        .iter()
        .filter(|s| support::site_has(s, "route_a_block"))
        .map(|s| s.alloc_objects)
        .sum();
    assert_eq!(all_a, REQUESTS * A_BLOCKS);

    // The exact counters per tag cover every handler block plus the framework's own work done
    // inside the span (routing, the response).
    let stats = heapsight::tag_stats();
    for (name, min) in [
        ("/a", REQUESTS * A_BLOCKS * A_SIZE as u64),
        ("/b/{id}", REQUESTS * B_BLOCKS * B_SIZE as u64),
    ] {
        let t = stats
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tag {name}: {stats:?}"));
        println!(
            "    tag {name}: {} allocations, {} bytes (exact)",
            t.alloc_objects, t.alloc_bytes
        );
        assert!(t.alloc_bytes >= min, "{t:?}");
        assert!(t.alloc_objects >= REQUESTS, "{t:?}");
    }

    if support::have_tool("go") {
        let dir = support::TempDir::new("tracing-axum");
        let path = dir.join("heap.pb.gz");
        p.write_pprof(std::fs::File::create(&path).unwrap())
            .unwrap();
        let path = path.to_str().unwrap();
        let tags = support::go_pprof(&["-tags", path]);
        assert!(tags.contains("/a") && tags.contains("/b/{id}"), "{tags}");
        let top = support::go_pprof(&[
            "-top",
            "-sample_index=alloc_space",
            "-tagfocus=tag=/a",
            path,
        ]);
        assert!(top.contains("route_a_block"), "{top}");
        assert!(
            !top.contains("route_b_block"),
            "-tagfocus=tag=/a kept /b:\n{top}"
        );
    }
    drop(p);
    rt.shutdown_timeout(Duration::from_secs(5));
}

fn main() {
    support::watchdog(600, "tracing_axum");
    support::run(&[(
        "per_route_memory_from_trace_spans",
        per_route_memory_from_trace_spans,
    )]);
}
