//! Peer: stats_alloc over System (shared atomic counters). See `workloads/mod.rs`.
mod workloads;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn main() {
    workloads::main();
    std::hint::black_box(GLOBAL.stats().allocations);
}
