//! mimalloc alone.
#[global_allocator]
static A: mimalloc::MiMalloc = mimalloc::MiMalloc;
fn main() {
    heapsight_entry_bench::run()
}
