//! tracking-allocator 0.4 as a peer: over System, with a no-op tracker installed and tracking
//! enabled (the cheapest way to use it: it still puts a header on every block and calls the
//! tracker). Shared by the benchmark binaries that measure it.
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

/// Installs the no-op tracker and turns tracking on; call first thing in `main`.
pub fn enable() {
    AllocationRegistry::set_global_tracker(Noop).expect("no other tracker");
    AllocationRegistry::enable_tracking();
}
