//! HeapSight over system at the default sample rate (512 KiB).
#[global_allocator]
static A: heapsight::HeapSight = heapsight::HeapSight::system();
fn main() {
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    heapsight_entry_bench::run()
}
