//! Kernels under `HeapSight<MiMalloc>` at rates 0, 512 KiB (default) and 1, switched at run time.
//! See `kernels/mod.rs`.
mod kernels;

use kernels::Variant;

#[global_allocator]
static GLOBAL: heapsight::HeapSight<mimalloc::MiMalloc> =
    heapsight::HeapSight::new(mimalloc::MiMalloc);

fn main() {
    heapsight::set_sampling_seed(42);
    // First, on a fresh process: the profiler's own memory next to the heap it profiles.
    kernels::profiler_memory_report("hs_mimalloc_r512k");
    let mut c = kernels::criterion();
    let variants = [
        Variant {
            id: "hs_mimalloc_r0",
            setup: || heapsight::set_sample_rate(0),
            skip: &[],
        },
        Variant {
            id: "hs_mimalloc_r512k",
            setup: || heapsight::set_sample_rate(512 * 1024),
            skip: &[],
        },
        Variant {
            id: "hs_mimalloc_r1",
            setup: || heapsight::set_sample_rate(1),
            skip: &["nested_500k"],
        },
    ];
    kernels::run_all(&mut c, &variants, kernels::Scale::Full);
    c.final_summary();
}
