//! Real workloads under `HeapSight<System>` at the default sampling rate. See `workloads/mod.rs`.
mod workloads;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

fn main() {
    heapsight::set_sampling_seed(42);
    workloads::main();
}
