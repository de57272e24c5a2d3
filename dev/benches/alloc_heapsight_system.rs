//! Kernels under `HeapSight<System>` at rates 0, 512 KiB (default) and 1, switched at run time;
//! then the sampled pair at rate 1 with the DWARF unwinder. First, the profiler's own memory on the
//! nested-map workload. See `kernels/mod.rs`.
mod kernels;

use kernels::Variant;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

fn main() {
    heapsight::set_sampling_seed(42);
    // First, on a fresh process: the profiler's own memory next to the heap it profiles.
    kernels::profiler_memory_report("hs_system_r512k");
    let mut c = kernels::criterion();
    let variants = [
        Variant {
            id: "hs_system_r0",
            setup: || heapsight::set_sample_rate(0),
            skip: &[],
        },
        Variant {
            id: "hs_system_r512k",
            setup: || heapsight::set_sample_rate(512 * 1024),
            skip: &[],
        },
        Variant {
            id: "hs_system_r1",
            setup: || heapsight::set_sample_rate(1),
            skip: &["nested_500k"],
        },
    ];
    kernels::run_all(&mut c, &variants, kernels::Scale::Full);
    // Every pair sampled, stacks from the DWARF unwinder: the fallback's cost per sample.
    let dwarf = [Variant {
        id: "hs_system_r1_dwarf",
        setup: || {
            heapsight::set_unwinder(heapsight::Unwinder::Dwarf);
            heapsight::set_sample_rate(1);
        },
        skip: &[],
    }];
    kernels::run_pairs(&mut c, &dwarf);
    heapsight::set_unwinder(heapsight::Unwinder::Auto);
    c.final_summary();
}
