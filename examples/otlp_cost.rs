//! What one OTLP export costs the exporter thread: CPU time per collection (snapshot, symbolize,
//! delta, encode; the endpoint is a closed port, so no network) and bytes per request, for the
//! quickstart's seed workload. Run it with two collection counts and take the slope, so the
//! start-up (first symbolization) cancels:
//!
//! ```text
//! cargo run --release --features otlp --example otlp_cost -- 10
//! cargo run --release --features otlp --example otlp_cost -- 200
//! ```
use std::collections::HashMap;
use std::time::Duration;
#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();
/// User + system CPU of the thread named `name`, in ms (10 ms clock ticks).
fn tid_cpu_ms(name: &str) -> f64 {
    for e in std::fs::read_dir("/proc/self/task").unwrap() {
        let p = e.unwrap().path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(p.join("stat")).unwrap();
            let f: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap()
                .split_whitespace()
                .collect();
            let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
            return ticks * 10.0;
        }
    }
    0.0
}
fn main() {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..500_000u32 {
        m.entry(format!("key{}", i % 10_000))
            .or_default()
            .push(format!("v{i}"));
    }
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    // Port 9 (discard) is closed here: every send fails at once and the requests stay queued,
    // where their size can be read.
    let mut c = heapsight::otlp::Config::new("http://127.0.0.1:9/v1development/profiles");
    c.interval = Duration::from_millis(100);
    c.max_pending = 1000;
    let e = heapsight::otlp::start(c).unwrap();
    while e.stats().collected < n as u64 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = e.stats();
    println!(
        "sites {} collected {} pending {} bytes/request {} exporter cpu {} ms",
        heapsight::profile().sites().len(),
        s.collected,
        s.pending,
        s.pending_bytes / s.pending.max(1),
        tid_cpu_ms("heapsight-otlp")
    );
    drop(m);
}
