//! A service that leaks under a memory limit, and what heapsight leaves behind when the kernel
//! kills it: heap profiles written before the kill, each with the memory table beside it.
//!
//! ```sh
//! cargo build --release --example oom_postmortem
//! # in a group with a 256 MiB limit (cgroup v2: systemd-run --scope -p MemoryMax=256M ...;
//! # docker run --memory=256m ...); the README's "After an OOM kill" shows a cgroup v1 run:
//! HEAPSIGHT_DUMP_AT=80%,90% HEAPSIGHT_DUMP_STEP=64MiB HEAPSIGHT_DUMP_DIR=/tmp/dumps \
//!     target/release/examples/oom_postmortem 1     # leak 1 MiB/s (the argument)
//! go tool pprof -top $(ls /tmp/dumps/*.pb.gz | tail -1)
//! ```
//!
//! Without `HEAPSIGHT_DUMP_AT` or `HEAPSIGHT_DUMP_STEP` it uses `80%,90%` and a 64 MiB step.
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

/// The leak: every response is cached under a key that never repeats, and nothing evicts.
#[inline(never)]
fn cache_response(cache: &mut HashMap<u64, Vec<u8>>, request: u64) {
    cache.insert(request, vec![b'r'; 64 << 10]);
}

/// The service's real work: buffers that live for one request.
#[inline(never)]
fn handle(request: u64) -> usize {
    let body: Vec<u8> = (0..16 << 10).map(|i| (i as u64 ^ request) as u8).collect();
    body.iter().filter(|&&b| b == 0).count()
}

fn main() {
    let mib_per_sec: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1.0);
    let started = match heapsight::start_dump_triggers_from_env() {
        Ok(true) => Ok(()),
        Ok(false) => heapsight::start_dump_triggers(
            heapsight::DumpTriggers::new(
                std::env::var_os("HEAPSIGHT_DUMP_DIR").unwrap_or_else(|| ".".into()),
            )
            .at(heapsight::Threshold::OfLimit(0.8))
            .at(heapsight::Threshold::OfLimit(0.9))
            .step(64 << 20),
        ),
        Err(e) => Err(e),
    };
    if let Err(e) = started {
        eprintln!("dump triggers: {e}");
    }
    println!("{}", heapsight::memory());
    // 16 cached responses of 64 KiB per MiB leaked.
    let per_response = Duration::from_secs_f64(1.0 / (16.0 * mib_per_sec));
    let mut cache = HashMap::new();
    let mut last_report = Instant::now();
    let mut zeros = 0;
    for request in 0.. {
        zeros += handle(request);
        cache_response(&mut cache, request);
        if last_report.elapsed() >= Duration::from_secs(5) {
            println!("{}", heapsight::memory());
            last_report = Instant::now();
        }
        std::thread::sleep(per_response);
    }
    println!("{zeros}");
}
