//! Kernels under `HeapSight<MiMalloc>` at rates 0, 512 KiB (default) and 1, switched at run time.
//! See `kernels/mod.rs`.
mod kernels;

use kernels::Variant;

#[global_allocator]
static GLOBAL: heapsight::HeapSight<mimalloc::MiMalloc> =
    heapsight::HeapSight::new(mimalloc::MiMalloc);

fn main() {
    heapsight::set_sampling_seed(42);
    let mut c = kernels::criterion();
    let variants = [
        Variant {
            id: "hs_mimalloc_r0",
            setup: || heapsight::set_sample_rate(0),
        },
        Variant {
            id: "hs_mimalloc_r512k",
            setup: || heapsight::set_sample_rate(512 * 1024),
        },
        Variant {
            id: "hs_mimalloc_r1",
            setup: || heapsight::set_sample_rate(1),
        },
    ];
    kernels::run_all(&mut c, &variants, kernels::Scale::Full);
    c.final_summary();
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    kernels::profiler_memory_report("hs_mimalloc_r512k");
}
