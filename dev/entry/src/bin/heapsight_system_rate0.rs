//! HeapSight over system, sampling off (rate 0): counters only.
#[global_allocator]
static A: heapsight::HeapSight = heapsight::HeapSight::system();
fn main() {
    heapsight::set_sample_rate(0);
    heapsight_entry_bench::run()
}
