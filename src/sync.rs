//! The one lock type, every lock of the crate, their order, and the `fork()` handlers.
//!
//! # The lock
//!
//! [`Lock`] is a three-state futex mutex (Drepper's "Futexes are tricky", as Go's
//! `lock_futex.go`): 0 free, 1 held, 2 held with possible sleepers. Taking it is one
//! compare-and-swap; a waiter spins briefly (the site table is held for a hash-table insert or
//! remove), then sleeps in the kernel until the holder's unlock wakes it, so a holder doing long
//! work is not competed with by yielding spinners (under `SCHED_FIFO` a spinner that yields never
//! lets a lower-priority holder run). It never allocates and keeps no state outside its word,
//! so a forked child can release a lock the forking thread held (a plain store; the sleepers it
//! may have had do not exist in the child). Off Linux, waiters spin and then yield. A
//! `parking_lot` mutex has neither property: its park path takes a bucket lock of a global
//! table and can allocate while holding it (dhat-rs#25), and with parked waiters its unlock
//! goes through that table, whose bucket locks a thread that does not exist in a child may hold.
//!
//! # Every lock, outermost first
//!
//! A thread holding a lock of this list only ever waits for locks further down it; every holder
//! is inside the profiler guard (`guard::InProfiler`), so an allocation made while holding one
//! goes straight to the inner allocator and never takes a lock.
//!
//! 1. `tags::NAMES`, the tag-name table: `Tag::new` and readers; takes no other lock. Then
//!    `history::RING`, the history's ring: the recorder and readers; takes no other lock.
//! 2. `snapshot::STACK_CACHES[0..2]`, the trimmed-stack caches: `profile()` after the site table
//!    was copied; takes the symbol cache inside.
//! 3. `symbols::CACHE`, the symbol cache (look-ups and inserts at dump time, never held while
//!    resolving), then `symbols::NOTES`, the symbolizer's notes (a leaf).
//! 4. The DWARF unwinder's fork gate (`stack::fork_gate_close`, not a lock: `fork()` waits for
//!    captures in progress, which hold backtrace's global lock, and new ones return no frames).
//! 5. `sites::TABLE`, the site table, then `sites::SHARDS`, the live-sample shards in index
//!    order: the only locks taken inside the allocation hook (sampled allocations, frees that
//!    pass the sampled-block filter), one at a time, and by `profile()` to copy the table.
//!    Innermost: their holders take nothing else.
//!
//! # fork()
//!
//! [`atfork_prepare`] takes every lock above in that order before the fork (so it waits for each
//! holder to finish, and no holder can be waiting on a lock the forking thread has), and
//! [`atfork_parent`] / [`atfork_child`] release them all after it. A child forked while another
//! thread held any of them (interning a tag, symbolizing, unwinding, recording a sample) can
//! still allocate, tag and profile. The handlers are registered when heapsight activates
//! (`alloc::init_global`), not in programs that only link the crate.
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering::*};

const FREE: u32 = 0;
const HELD: u32 = 1;
const CONTENDED: u32 = 2;
/// Spins before sleeping: the hook's critical sections are shorter than a futex round trip.
const SPINS: u32 = 100;

pub(crate) struct Lock<T> {
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `state` (Acquire on lock, Release on unlock).
unsafe impl<T: Send> Sync for Lock<T> {}
// SAFETY: moving the lock moves the value; no thread-affine state.
unsafe impl<T: Send> Send for Lock<T> {}

pub(crate) struct LockGuard<'a, T> {
    lock: &'a Lock<T>,
}

impl<T> Lock<T> {
    pub const fn new(value: T) -> Self {
        Lock {
            state: AtomicU32::new(FREE),
            value: UnsafeCell::new(value),
        }
    }

    pub fn lock(&self) -> LockGuard<'_, T> {
        if self
            .state
            .compare_exchange(FREE, HELD, Acquire, Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        LockGuard { lock: self }
    }

    #[cold]
    fn lock_contended(&self) {
        for _ in 0..SPINS {
            if self.state.load(Relaxed) == FREE
                && self
                    .state
                    .compare_exchange(FREE, HELD, Acquire, Relaxed)
                    .is_ok()
            {
                return;
            }
            core::hint::spin_loop();
        }
        // From here on we may sleep, so the lock is marked contended: its unlock must wake us.
        // Taking it this way also leaves it marked, which at worst costs one needless wake.
        while self.state.swap(CONTENDED, Acquire) != FREE {
            wait(&self.state, CONTENDED);
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
    ///   thread that forked), and no `LockGuard` for it may exist.
    pub unsafe fn raw_unlock(&self) {
        self.unlock();
    }

    fn unlock(&self) {
        if self.state.swap(FREE, Release) == CONTENDED {
            wake_one(&self.state);
        }
    }
}

impl<T> Deref for LockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held, so no other reference to `value` exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for LockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for LockGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

/// One futex call on `word` that keeps the caller's `errno`: the site table is locked inside
/// `malloc`, whose callers may not expect `errno` to change.
#[cfg(all(target_os = "linux", not(heapsight_portable)))]
fn futex(word: &AtomicU32, op: libc::c_int, val: u32) {
    // SAFETY: `word` is a live, aligned u32 for the duration of the call; FUTEX_WAIT (with a null
    // timeout) only reads it and FUTEX_WAKE does not access it. `__errno_location` is this
    // thread's errno. Neither allocates.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op | libc::FUTEX_PRIVATE_FLAG,
            val,
            core::ptr::null::<libc::timespec>(),
        );
        *errno = saved;
    }
}

/// Sleeps while `*word == val` (or until woken, or spuriously).
#[cfg(all(target_os = "linux", not(heapsight_portable)))]
fn wait(word: &AtomicU32, val: u32) {
    futex(word, libc::FUTEX_WAIT, val);
}

/// Wakes one sleeper of `word`.
#[cfg(all(target_os = "linux", not(heapsight_portable)))]
fn wake_one(word: &AtomicU32) {
    futex(word, libc::FUTEX_WAKE, 1);
}

#[cfg(not(all(target_os = "linux", not(heapsight_portable))))]
fn wait(word: &AtomicU32, val: u32) {
    if word.load(Relaxed) == val {
        std::thread::yield_now();
    }
}

#[cfg(not(all(target_os = "linux", not(heapsight_portable))))]
fn wake_one(_: &AtomicU32) {}

/// `pthread_atfork` prepare: every lock, in the order of the list above.
pub(crate) extern "C" fn atfork_prepare() {
    crate::tags::lock_for_fork();
    crate::history::lock_for_fork();
    crate::snapshot::lock_for_fork();
    crate::symbols::lock_for_fork();
    crate::stack::fork_gate_close();
    crate::sites::lock_for_fork();
}

/// `pthread_atfork` parent: releases what [`atfork_prepare`] took.
pub(crate) extern "C" fn atfork_parent() {
    // SAFETY: `atfork_prepare` took every lock on this thread just before the fork.
    unsafe { release_after_fork(false) }
}

/// `pthread_atfork` child: releases what [`atfork_prepare`] took in the parent; this thread is
/// the child's copy of the one that took them.
pub(crate) extern "C" fn atfork_child() {
    // SAFETY: as in `atfork_parent`, for the forking thread's copy.
    unsafe { release_after_fork(true) }
}

/// # Safety
/// * [`atfork_prepare`] must have run on this thread (or, in a forked child, on the thread that
///   forked) with no release since.
unsafe fn release_after_fork(child: bool) {
    // SAFETY: per this function's contract every lock is held through `raw_lock`.
    unsafe {
        crate::sites::unlock_after_fork();
        crate::stack::fork_gate_open(child);
        crate::symbols::unlock_after_fork();
        crate::snapshot::unlock_after_fork();
        crate::history::unlock_after_fork(child);
        crate::tags::unlock_after_fork();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn contended_lock_excludes_and_wakes_sleepers() {
        static L: Lock<u64> = Lock::new(0);
        static IN: AtomicBool = AtomicBool::new(false);
        const N: u64 = 20_000;
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..N {
                        let mut g = L.lock();
                        assert!(!IN.swap(true, SeqCst), "two holders at once");
                        // A long hold now and then, so waiters go to sleep.
                        if i % 1000 == 0 {
                            std::thread::sleep(std::time::Duration::from_micros(200));
                        }
                        *g += 1;
                        IN.store(false, SeqCst);
                    }
                });
            }
        });
        assert_eq!(*L.lock(), 4 * N);
        assert_eq!(L.state.load(SeqCst), FREE);
    }

    #[test]
    fn raw_unlock_releases_a_raw_lock() {
        let l = Lock::new(1u8);
        l.raw_lock();
        assert_ne!(l.state.load(SeqCst), FREE);
        // SAFETY: taken by raw_lock just above on this thread; no guard exists.
        unsafe { l.raw_unlock() };
        assert_eq!(*l.lock(), 1);
    }
}
