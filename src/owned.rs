//! [`Owned<T>`]: a value whose memory is the profiler's own, dropped inside the profiler guard.
//!
//! # The invariant
//!
//! Memory allocated inside [`crate::guard::profiler_scope`] goes to the inner allocator uncounted
//! and is added to the profiler's own tally (`Stats::profiler_bytes`), never to the program's
//! counters. It must be freed inside the guard too: freed outside, the hook would count a free
//! the program never allocated (its free counters and in-use bytes would drift by the size of
//! every profile, top table or response body dropped, and `profiler_bytes` would never come
//! down), and the tag in force at the drop would be charged for it.
//!
//! Values the profiler hands to the program (a [`crate::HeapProfile`], a `Top`, a
//! `Distribution`) and buffers it juggles across a write to the program's `Write` hold their
//! memory in an `Owned`, so whichever thread drops them, wherever, frees inside the guard. The
//! guard nests: dropping an `Owned` that is already inside it costs a flag test.
//!
//! Not memory-unsafe either way: a free counted on the wrong side only skews counters. The
//! type exists so that no path can forget the rule, which hand-written `Drop` impls did.
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};

use crate::guard::profiler_scope;

/// A `T` whose allocations are the profiler's own: derefs to `T`, and its `Drop` runs `T`'s drop
/// inside the profiler guard (see the module docs).
///
/// Wrap a value right where it is built, inside the guard. [`Owned::into_inner`] moves it out for
/// the rare caller that takes over the duty of dropping it inside the guard.
#[derive(Default)]
pub(crate) struct Owned<T>(ManuallyDrop<T>);

impl<T> Owned<T> {
    /// Takes `value`, whose memory was allocated inside the profiler guard (or that holds none).
    pub(crate) const fn new(value: T) -> Self {
        Owned(ManuallyDrop::new(value))
    }

    /// Moves the value out; dropping it is then the caller's business (inside the guard, if it
    /// holds memory allocated there).
    #[cfg_attr(not(test), allow(dead_code))] // For the rare move-out; no caller needs it yet.
    pub(crate) fn into_inner(self) -> T {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped (ManuallyDrop), so its `Drop` does not run and the
        // value is taken exactly once, here; nothing reads `this.0` after.
        unsafe { ManuallyDrop::take(&mut this.0) }
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: `self.0` is dropped exactly once: here, in `Owned`'s own `Drop`, which runs at
        // most once and never after `into_inner` (which forgets `self`); nothing uses it after.
        profiler_scope(|| unsafe { ManuallyDrop::drop(&mut self.0) })
    }
}

impl<T> Deref for Owned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Owned<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> From<T> for Owned<T> {
    fn from(value: T) -> Self {
        Owned::new(value)
    }
}

/// A clone is the profiler's too: made inside the guard.
impl<T: Clone> Clone for Owned<T> {
    fn clone(&self) -> Self {
        profiler_scope(|| Owned::new(T::clone(&self.0)))
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for Owned<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

/// `for x in &owned_vec` as for the `Vec` itself.
impl<'a, T> IntoIterator for &'a Owned<T>
where
    &'a T: IntoIterator,
{
    type Item = <&'a T as IntoIterator>::Item;
    type IntoIter = <&'a T as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        (&*self.0).into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derefs_iterates_and_moves_out() {
        let v: Owned<Vec<u8>> = profiler_scope(|| Owned::new(vec![1, 2, 3]));
        assert_eq!(v.len(), 3);
        assert_eq!((&v).into_iter().sum::<u8>(), 6);
        let w = v.clone();
        let inner = w.into_inner();
        assert_eq!(inner, [1, 2, 3]);
        profiler_scope(|| drop(inner));
    }
}
