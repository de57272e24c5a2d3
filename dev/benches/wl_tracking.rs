//! Peer: tracking-allocator 0.4 over System with a no-op tracker (see `tracking/mod.rs`).
//! See `workloads/mod.rs`.
mod tracking;
mod workloads;

fn main() {
    tracking::enable();
    workloads::main();
}
