//! HeapSight over mimalloc, sampling off (rate 0): counters only;
//! `#[global_allocator]` declared in this binary crate.
#[global_allocator]
static A: heapsight::HeapSight<mimalloc::MiMalloc> = heapsight::HeapSight::new(mimalloc::MiMalloc);
fn main() {
    heapsight_entry_bench::run_rate0()
}
