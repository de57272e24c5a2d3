//! HeapSight over System (glibc), at the default sample rate (512 KiB);
//! `#[global_allocator]` declared in a library crate
//! (`alloc/system`), as in a workspace whose shared crate sets the allocator for every binary.
extern crate heapsight_entry_alloc_system;
fn main() {
    heapsight_entry_bench::run_default()
}
