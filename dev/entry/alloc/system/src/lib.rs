//! The `#[global_allocator]` of every binary that links this crate.
#[global_allocator]
static A: heapsight::HeapSight = heapsight::HeapSight::system();
