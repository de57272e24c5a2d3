//! System (glibc) alone.
#[global_allocator]
static A: std::alloc::System = std::alloc::System;
fn main() {
    heapsight_entry_bench::run()
}
