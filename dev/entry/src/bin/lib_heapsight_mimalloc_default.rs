//! HeapSight over mimalloc, at the default sample rate (512 KiB);
//! `#[global_allocator]` declared in a library crate
//! (`alloc/mimalloc`), as in a workspace whose shared crate sets the allocator for every binary.
extern crate heapsight_entry_alloc_mimalloc;
fn main() {
    heapsight_entry_bench::run_default()
}
