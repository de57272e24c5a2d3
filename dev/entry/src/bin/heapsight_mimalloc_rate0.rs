//! HeapSight over mimalloc, sampling off (rate 0): counters only.
#[global_allocator]
static A: heapsight::HeapSight<mimalloc::MiMalloc> = heapsight::HeapSight::new(mimalloc::MiMalloc);
fn main() {
    heapsight::set_sample_rate(0);
    heapsight_entry_bench::run()
}
