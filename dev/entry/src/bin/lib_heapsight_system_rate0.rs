//! HeapSight over System (glibc), sampling off (rate 0): counters only;
//! `#[global_allocator]` declared in a library crate
//! (`alloc/system`), as in a workspace whose shared crate sets the allocator for every binary.
extern crate heapsight_entry_alloc_system;
fn main() {
    heapsight_entry_bench::run_rate0()
}
