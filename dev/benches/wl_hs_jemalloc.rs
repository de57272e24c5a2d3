//! Real workloads under `HeapSight<Jemalloc>` (tikv-jemallocator) at the default sampling rate.
//! See `workloads/mod.rs`.
mod workloads;

#[global_allocator]
static GLOBAL: heapsight::HeapSight<tikv_jemallocator::Jemalloc> =
    heapsight::HeapSight::new(tikv_jemallocator::Jemalloc);

fn main() {
    heapsight::set_sampling_seed(42);
    workloads::main();
}
