//! Peer: stats_alloc over System (shared atomic counters). See `kernels/mod.rs`.
mod kernels;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn main() {
    let mut c = kernels::criterion();
    kernels::run_all(
        &mut c,
        &[kernels::Variant::plain("stats_alloc")],
        kernels::Scale::Full,
    );
    c.final_summary();
    let s = GLOBAL.stats();
    std::hint::black_box(s.allocations);
}
