//! HeapSight over mimalloc at the default sample rate (512 KiB).
#[global_allocator]
static A: heapsight::HeapSight<mimalloc::MiMalloc> = heapsight::HeapSight::new(mimalloc::MiMalloc);
fn main() {
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    // A fixed seed: which allocations are sampled, and so where the inner allocator puts
    // them, is the same in every run (the counts are repeatable to the instruction).
    heapsight::set_sampling_seed(42);
    heapsight_entry_bench::run()
}
