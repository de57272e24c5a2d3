//! jemalloc (tikv-jemallocator) alone.
#[global_allocator]
static A: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
fn main() {
    heapsight_entry_bench::run()
}
