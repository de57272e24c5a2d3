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
#[path = "support/dump_measure.rs"]
mod dump_measure;
#[path = "support/index_workload.rs"]
mod index_workload;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

fn main() -> std::io::Result<()> {
    if dump_measure::helper_main() {
        return Ok(());
    }
    let how = dump_measure::Symbolizer::from_args();
    let server = heapsight::http::serve("127.0.0.1:0")?;
    let addr = server.local_addr();
    let mut indexes = index_workload::Indexes::default();
    for _ in 0..6 {
        indexes.round();
    }
    dump_measure::write_offsets_if_asked();
    dump_measure::measure("service", addr, how);
    drop(indexes);
    server.shutdown();
    Ok(())
}
