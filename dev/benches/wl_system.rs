//! Real workloads over System (glibc malloc) alone. See `workloads/mod.rs`.
mod workloads;

#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;

fn main() {
    workloads::main();
}
