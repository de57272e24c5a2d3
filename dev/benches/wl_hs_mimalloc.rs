//! Real workloads under `HeapSight<MiMalloc>` at the default sampling rate. See
//! `workloads/mod.rs`.
mod workloads;

#[global_allocator]
static GLOBAL: heapsight::HeapSight<mimalloc::MiMalloc> =
    heapsight::HeapSight::new(mimalloc::MiMalloc);

fn main() {
    heapsight::set_sampling_seed(42);
    workloads::main();
}
