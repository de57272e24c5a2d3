//! `measure()`: exact allocation counts of the current thread over a closure.
//!
//! The thread's counter slot already holds its own exact counts (see `counters`), written only by
//! this thread, so a measurement is two reads and a subtraction: no lock, no allocation, and no
//! interference from other threads — parallel `cargo test` threads each measure their own work.
//! The peak is exact too: while a scope is open, the thread's allocations take the slow path,
//! which keeps the slot's `scope_hw` (see `counters`); frees cannot raise a peak, so they stay on
//! the fast path.
use crate::counters::{self, Slot};
use crate::guard::THREAD;
use crate::thread;

/// What the current thread allocated and freed while a closure ran; from [`measure`].
///
/// Counts are exact and follow [`crate::Stats`]: bytes are `Layout::size()` bytes, a `realloc` is
/// one free plus one allocation. Only the calling thread is counted: work the closure hands to
/// other threads (a thread pool, an async runtime's workers) is not, and a free of a block that
/// another thread allocated *is* (it can make [`Usage::net`] negative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// Allocations made (including the allocation half of each `realloc`).
    pub alloc_objects: u64,
    /// Bytes allocated.
    pub alloc_bytes: u64,
    /// Frees made (including the free half of each `realloc`).
    pub free_objects: u64,
    /// Bytes freed.
    pub free_bytes: u64,
    /// The most bytes this thread held at once during the closure, above what it held when the
    /// closure began (`max(alloc_bytes - free_bytes)` over time, at least 0). A `realloc` counts
    /// its free before its allocation, so the moment both blocks exist is not in the peak.
    pub peak_bytes: u64,
}

impl Usage {
    /// Bytes allocated minus bytes freed: what the closure left allocated (negative if it freed
    /// more than it allocated, e.g. dropped a value it was given).
    pub fn net(&self) -> i64 {
        self.alloc_bytes.wrapping_sub(self.free_bytes) as i64
    }

    /// Allocations minus frees: blocks the closure left allocated.
    pub fn net_objects(&self) -> i64 {
        self.alloc_objects.wrapping_sub(self.free_objects) as i64
    }
}

/// Runs `f` and returns its result with exact counts of what the current thread allocated and
/// freed meanwhile. Measures nest (an inner one's work is also in the outer one's), work on other
/// threads is not counted, and measuring does not allocate.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();
/// # fn main() {
/// let (v, u) = heapsight::measure(|| {
///     let mut v = Vec::new();
///     for i in 1..=100u64 {
///         v.push(i); // capacity 4, 8, 16, 32, 64, 128
///     }
///     v
/// });
/// assert_eq!((u.alloc_objects, u.free_objects), (6, 5)); // 1 alloc + 5 reallocs
/// assert_eq!((u.alloc_bytes, u.free_bytes), (2016, 992));
/// assert_eq!(u.peak_bytes, 1024);
/// # drop(v);
/// # }
/// ```
///
/// Without heapsight as the `#[global_allocator]`, or on a thread that is exiting (inside a
/// thread-local destructor), every field is 0.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Usage) {
    let Some(slot) = THREAD.with(thread::current_slot) else {
        return (f(), Usage::default());
    };
    let scope = Scope::begin(slot);
    let r = f();
    let usage = scope.usage();
    drop(scope);
    (r, usage)
}

/// An open measurement. Its `Drop` hands the scope's peak back to the enclosing scope, also when
/// `f` unwinds.
struct Scope {
    slot: &'static Slot,
    start: [u64; 4],
    start_net: i64,
    enclosing: i64,
}

impl Scope {
    fn begin(slot: &'static Slot) -> Scope {
        THREAD.with(|t| t.enter_scope());
        let enclosing = counters::begin_scope(slot);
        Scope {
            slot,
            start: counters::own_counts(slot),
            start_net: slot.net(),
            enclosing,
        }
    }

    fn usage(&self) -> Usage {
        let end = counters::own_counts(self.slot);
        let d = |i: usize| end[i].wrapping_sub(self.start[i]);
        // The slot is only ever this thread's (it changes only when the thread exits), so the
        // peak tracked since `begin` is this scope's.
        let max = counters::peek_scope_max(self.slot);
        Usage {
            alloc_objects: d(0),
            alloc_bytes: d(1),
            free_objects: d(2),
            free_bytes: d(3),
            peak_bytes: max.wrapping_sub(self.start_net).max(0) as u64,
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        counters::end_scope(self.slot, self.enclosing);
        THREAD.with(|t| t.leave_scope());
    }
}

/// Asserts that an expression allocates at most `max` times on the current thread (counting
/// each `realloc` as an allocation), and evaluates to the expression's value. On failure the
/// panic message shows the full [`Usage`].
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();
/// # fn main() {
/// let v = heapsight::assert_max_allocs!(1, Vec::<u8>::with_capacity(64));
/// assert_eq!(v.capacity(), 64);
/// # }
/// ```
#[macro_export]
macro_rules! assert_max_allocs {
    ($max:expr, $e:expr $(,)?) => {{
        let (value, usage) = $crate::measure(|| $e);
        let max: u64 = $max;
        if usage.alloc_objects > max {
            panic!(
                "`{}` allocated {} times, at most {} expected ({:?})",
                stringify!($e),
                usage.alloc_objects,
                max,
                usage
            );
        }
        value
    }};
}

/// Asserts that an expression does not allocate on the current thread, and evaluates to its
/// value. `assert_no_alloc!(e)` is `assert_max_allocs!(0, e)`.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();
/// # fn main() {
/// let v = vec![3, 1, 2];
/// let m = heapsight::assert_no_alloc!(v.iter().max().copied());
/// assert_eq!(m, Some(3));
/// # }
/// ```
#[macro_export]
macro_rules! assert_no_alloc {
    ($e:expr $(,)?) => {
        $crate::assert_max_allocs!(0, $e)
    };
}
