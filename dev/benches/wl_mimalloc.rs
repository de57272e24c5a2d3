//! Real workloads over mimalloc alone. See `workloads/mod.rs`.
mod workloads;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    workloads::main();
}
