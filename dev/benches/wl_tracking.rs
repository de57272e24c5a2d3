//! Peer: tracking-allocator 0.4 over System, a no-op tracker installed and tracking enabled (the
//! cheapest way to use it: it still puts a header on every block and calls the tracker). See
//! `workloads/mod.rs`.
mod workloads;

use tracking_allocator::{AllocationGroupId, AllocationRegistry, AllocationTracker, Allocator};

#[global_allocator]
static GLOBAL: Allocator<std::alloc::System> = Allocator::system();

struct Noop;

impl AllocationTracker for Noop {
    fn allocated(&self, _addr: usize, _size: usize, _wrapped: usize, _group: AllocationGroupId) {}
    fn deallocated(
        &self,
        _addr: usize,
        _size: usize,
        _wrapped: usize,
        _src: AllocationGroupId,
        _cur: AllocationGroupId,
    ) {
    }
}

fn main() {
    AllocationRegistry::set_global_tracker(Noop).expect("no other tracker");
    AllocationRegistry::enable_tracking();
    workloads::main();
}
