//! A service that leaks slowly among allocations that come and go, for the history: the
//! `/debug/heapsight` timeline, its growing-sites table, and `?since=`.
//!
//!     cargo run --release --example history --features http -- --seconds 90 --interval-ms 1000
//!
//! then, from another terminal:
//!
//!     open http://127.0.0.1:6060/debug/heapsight
//!     go tool pprof -top -sample_index=inuse_space 'http://127.0.0.1:6060/debug/pprof/heap?since=1m'
//!
//! Per 100 ms tick: a session cache keeps 64 KiB more (never evicted: the leak), request buffers of
//! ~1 MiB come and go, and every 15 s a 24 MiB report is built and dropped 3 s later (a burst).
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

fn arg(name: &str) -> Option<u64> {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .map(|s| s.parse().expect("a whole number"))
}

/// The leak: sessions are cached and never evicted. (One call per tick: a loop of calls could
/// be unrolled into several call sites, each its own stack and site.)
#[inline(never)]
fn remember_sessions(cache: &mut HashMap<u64, Vec<u8>>, first: u64, n: u64) {
    for id in first..first + n {
        cache.insert(id, vec![id as u8; 2048]);
    }
}

/// Request buffers: allocated and freed within the tick.
#[inline(never)]
fn handle_request(i: u64) -> usize {
    let body: Vec<u8> = vec![i as u8; 16 * 1024];
    body.iter().map(|&b| b as usize).sum()
}

/// The burst: a big report that lives for a few seconds.
#[inline(never)]
fn build_report() -> Vec<Vec<u64>> {
    (0..96).map(|i| vec![i; 32 * 1024]).collect()
}

fn main() -> std::io::Result<()> {
    let seconds = arg("--seconds");
    let interval = Duration::from_millis(arg("--interval-ms").unwrap_or(10_000));
    // Before serve(), so the server keeps this interval instead of the default.
    heapsight::history::start(interval, Duration::from_secs(600))?;
    let server = match heapsight::http::serve_from_env() {
        Some(s) => s,
        None => heapsight::http::serve(heapsight::http::DEFAULT_ADDR)?,
    };
    let addr = server.local_addr();
    println!("history every {interval:?}; page: http://{addr}/debug/heapsight");
    let start = Instant::now();
    let mut sessions = HashMap::new();
    let mut report: Option<(Instant, Vec<Vec<u64>>)> = None;
    let mut next_report = start + Duration::from_secs(5);
    let mut tick = 0u64;
    let mut next_id = 0u64;
    let mut sink = 0usize;
    while seconds.is_none_or(|s| start.elapsed() < Duration::from_secs(s)) {
        remember_sessions(&mut sessions, next_id, 32);
        next_id += 32;
        for i in 0..64 {
            sink += handle_request(tick + i);
        }
        if Instant::now() >= next_report {
            report = Some((Instant::now(), build_report()));
            next_report += Duration::from_secs(15);
        }
        if report
            .as_ref()
            .is_some_and(|r| r.0.elapsed() > Duration::from_secs(3))
        {
            report = None;
        }
        tick += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    std::hint::black_box(sink);
    let h = heapsight::history();
    for g in h.growing().iter().take(3) {
        let f = g.frames().iter().find_map(|f| {
            f.symbols
                .iter()
                .find(|s| s.function.starts_with("history::"))
        });
        println!(
            "growing: +{:.0} KiB/min, z {:.1}: {}",
            g.bytes_per_minute / 1024.0,
            g.z,
            f.map_or("?", |s| s.function.as_str())
        );
    }
    server.shutdown();
    Ok(())
}
