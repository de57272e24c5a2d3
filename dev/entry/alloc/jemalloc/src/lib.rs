//! The `#[global_allocator]` of every binary that links this crate.
#[global_allocator]
static A: heapsight::HeapSight<tikv_jemallocator::Jemalloc> =
    heapsight::HeapSight::new(tikv_jemallocator::Jemalloc);
