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
use std::time::{Duration, Instant};

#[path = "support/index_workload.rs"]
mod index_workload;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

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
    let mut indexes = index_workload::Indexes::default();
    while seconds.is_none_or(|s| start.elapsed() < Duration::from_secs(s)) {
        indexes.round();
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = heapsight::stats();
    println!(
        "{} rounds; {} live bytes, peak {}",
        indexes.rounds(),
        s.inuse_bytes,
        s.peak_inuse_bytes
    );
    server.shutdown();
    Ok(())
}
