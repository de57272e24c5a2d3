//! The locks, all in one place.
//!
//! * [`SpinLock`] guards the site table ([`crate::sites`]). It is the only lock taken inside the
//!   allocation hook, and only for a sampled allocation or a free that passed the sampled-block
//!   filter. It never parks (parking_lot's park path takes a bucket lock and can allocate while
//!   holding it, dhat-rs#25), never allocates, and is held for a hash-table insert or remove.
//!   Waiters spin briefly, then `sched_yield`. Every holder is inside the profiler guard, so an
//!   allocation made while holding it goes straight to the inner allocator.
//! * The symbol cache in [`crate::symbols`] is a second `SpinLock`, taken only at dump time by
//!   `profile()` (held while symbolizing, so waiters mostly yield), never in the hook. It is not a
//!   `parking_lot::Mutex` because of `fork()`, below.
//! * `fork()`: `pthread_atfork` handlers take the symbol-cache lock and then the site lock before
//!   the fork and release both in parent and child, so a child forked while another thread held
//!   either can still allocate, symbolize and profile. Holding the cache lock also means no
//!   heapsight thread is inside `backtrace::resolve` (and its global lock) at the fork. Releasing
//!   in the child is a plain store; a `parking_lot::Mutex` could not be released safely there
//!   (with parked waiters its unlock goes through parking_lot's global table, whose bucket locks
//!   may belong to threads that do not exist in the child).
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering::*};

pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked` (Acquire on lock, Release on unlock).
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the value; no thread-affine state.
unsafe impl<T: Send> Send for SpinLock<T> {}

pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> SpinLock<T> {
    pub const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    pub fn lock(&self) -> SpinGuard<'_, T> {
        let mut spins = 0u32;
        loop {
            if !self.locked.swap(true, Acquire) {
                return SpinGuard { lock: self };
            }
            while self.locked.load(Relaxed) {
                if spins < 64 {
                    core::hint::spin_loop();
                    spins += 1;
                } else {
                    // SAFETY: sched_yield has no preconditions; it neither allocates nor locks.
                    unsafe { libc::sched_yield() };
                }
            }
        }
    }

    /// Takes the lock without a guard (the `pthread_atfork` prepare handler).
    pub fn raw_lock(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases a lock taken by [`Self::raw_lock`].
    ///
    /// # Safety
    /// * The lock must be held through `raw_lock` by this thread (or, in a forked child, by the
    ///   thread that forked), and no `SpinGuard` for it may exist.
    pub unsafe fn raw_unlock(&self) {
        self.locked.store(false, Release);
    }
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held, so no other reference to `value` exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Release);
    }
}
