//! Benchmark: what dumping a symbolized heap profile costs a service, in memory and time.
//!
//!     cargo run --release --features http --example dump_cost [-- --symbolizer S]
//!
//! The program holds the state of `examples/service` (three nested-map indexes, about 33 MB of
//! heap), serves heapsight's endpoints, and then asks itself for `GET /debug/pprof/heap` ten
//! times: per dump, its latency, the peak resident memory it caused, what stays resident after
//! it, and `profiler_bytes` (see `support/dump_measure.rs`). `--symbolizer backtrace |
//! symtab-lines | helper` symbolizes the same profile's addresses another way instead, for the
//! comparison in docs/symbols.md.
use std::collections::HashMap;

#[path = "support/dump_measure.rs"]
mod dump_measure;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

/// The seed workload of `examples/service`.
fn build_index(round: usize) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..200_000 {
        m.entry(format!("k{}", i % 10_000))
            .or_default()
            .push(format!("v{round}-{i}"));
    }
    m
}

fn main() -> std::io::Result<()> {
    if dump_measure::helper_main() {
        return Ok(());
    }
    let how = dump_measure::Symbolizer::from_args();
    let server = heapsight::http::serve("127.0.0.1:0")?;
    let addr = server.local_addr();
    let mut keep = Vec::new();
    for round in 0..6 {
        keep.push(build_index(round));
        if keep.len() > 3 {
            keep.remove(0);
        }
    }
    dump_measure::write_offsets_if_asked();
    dump_measure::measure("service", addr, how);
    drop(keep);
    server.shutdown();
    Ok(())
}
