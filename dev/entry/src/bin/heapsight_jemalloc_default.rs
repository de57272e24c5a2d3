//! HeapSight over jemalloc (tikv-jemallocator), at the default sample rate (512 KiB);
//! `#[global_allocator]` declared in this binary crate.
#[global_allocator]
static A: heapsight::HeapSight<tikv_jemallocator::Jemalloc> =
    heapsight::HeapSight::new(tikv_jemallocator::Jemalloc);
fn main() {
    heapsight_entry_bench::run_default()
}
