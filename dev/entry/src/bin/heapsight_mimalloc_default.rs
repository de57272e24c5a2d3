//! HeapSight over mimalloc at the default sample rate (512 KiB).
#[global_allocator]
static A: heapsight::HeapSight<mimalloc::MiMalloc> = heapsight::HeapSight::new(mimalloc::MiMalloc);
fn main() {
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    heapsight_entry_bench::run()
}
