//! A service with heapsight's endpoints, while it runs a nested-map workload:
//!
//!     cargo run --release --example service --features http
//!
//! then, from another terminal:
//!
//!     go tool pprof -top http://127.0.0.1:6060/debug/pprof/heap
//!     go tool pprof -http=:8080 http://127.0.0.1:6060/debug/pprof/allocs
//!     curl -s http://127.0.0.1:6060/metrics
//!     open http://127.0.0.1:6060/debug/heapsight
//!
//! `--seconds N` stops after N seconds (default: run until interrupted).
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

/// The seed workload: a map of string vectors that grows by doubling, rebuilt every round.
fn build_index(round: usize) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..200_000 {
        m.entry(format!("k{}", i % 10_000))
            .or_default()
            .push(format!("v{round}-{i}"));
    }
    m
}

fn main() {
    if let Err(e) = run() {
        eprintln!("service: {e}");
        std::process::exit(1);
    }
}

fn run() -> std::io::Result<()> {
    let seconds: Option<u64> = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .map(|s| s.parse().expect("--seconds takes a whole number"));
    // HEAPSIGHT_HTTP_ADDR if set and usable (a bad value prints one line), else loopback.
    let server = match heapsight::http::serve_from_env() {
        Some(s) => s,
        None => heapsight::http::serve(heapsight::http::DEFAULT_ADDR).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", heapsight::http::DEFAULT_ADDR),
            )
        })?,
    };
    let addr = server.local_addr();
    println!(
        "heapsight serving on http://{addr}/debug/pprof/ (page: http://{addr}/debug/heapsight)"
    );
    println!("try:  go tool pprof -http=:8080 http://{addr}/debug/pprof/heap");
    let start = Instant::now();
    let mut keep = Vec::new();
    let mut round = 0;
    while seconds.is_none_or(|s| start.elapsed() < Duration::from_secs(s)) {
        keep.push(build_index(round));
        if keep.len() > 3 {
            keep.remove(0);
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = heapsight::stats();
    println!(
        "{round} rounds; {} live bytes, peak {}",
        s.inuse_bytes, s.peak_inuse_bytes
    );
    server.shutdown();
    Ok(())
}
