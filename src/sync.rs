//! The one lock type, every lock word of the crate in its order, and the `fork()` handlers.
//!
//! # The lock
//!
//! [`RawLock`] is a three-state futex mutex (Drepper's "Futexes are tricky", as Go's
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
//! The words live here and the data they guard lives with the module that owns it
//! ([`Lock`] and [`Locks`] pair a word of this file with a value): so the fork handlers below
//! can take every lock in order without this base module naming any higher one.
//!
//! # Every lock, outermost first
//!
//! A thread holding a lock of this list only ever waits for locks further down it; every holder
//! is inside the profiler guard (`guard::InProfiler`), so an allocation made while holding one
//! goes straight to the inner allocator and never takes a lock.
//!
//! 1. [`TAG_NAMES_LOCK`], the tag-name table (`tags`): `Tag::new` and readers; takes no other
//!    lock. Then [`HISTORY_RING_LOCK`], the history's ring (`history`): the recorder and
//!    readers; takes no other lock.
//! 2. [`STACK_CACHE_LOCKS`], the trimmed-stack caches (`snapshot`): `profile()` after the site
//!    table was copied; takes the symbol cache inside.
//! 3. [`SYMBOL_CACHE_LOCK`], the symbol cache (`symbols`: look-ups and inserts at dump time,
//!    never held while resolving), then [`SYMBOL_NOTES_LOCK`], the symbolizer's notes (a leaf).
//! 4. [`DWARF_UNWIND_GATE`], the DWARF unwinder's fork gate (not a lock: `fork()` waits for
//!    captures in progress, which hold backtrace's global lock, and new ones return no frames).
//! 5. [`SITE_TABLE_LOCK`], the site table (`sites`), then [`LIVE_SHARD_LOCKS`], the live-sample
//!    shards in index order: the only locks taken inside the allocation hook (sampled
//!    allocations, frees that pass the sampled-block filter), one at a time, and by `profile()`
//!    to copy the table. Innermost: their holders take nothing else.
//!
//! # fork()
//!
//! [`atfork_prepare`] takes every lock above in that order before the fork (so it waits for each
//! holder to finish, and no holder can be waiting on a lock the forking thread has), and
//! [`atfork_parent`] / [`atfork_child`] release them all after it. A child forked while another
//! thread held any of them (interning a tag, symbolizing, unwinding, recording a sample) can
//! still allocate, tag and profile. Threads do not survive into the child: a module that started
//! one compares [`fork_generation`] with the generation it started it in. The handlers are
//! registered when heapsight activates (the hook's process set-up), not in programs that only
//! link the crate.
use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

const FREE: u32 = 0;
const HELD: u32 = 1;
const CONTENDED: u32 = 2;
/// Spins before sleeping: the hook's critical sections are shorter than a futex round trip.
const SPINS: u32 = 100;

/// A lock's state word, without the data it guards (see [`Lock`], [`Locks`]).
pub(crate) struct RawLock {
    state: AtomicU32,
}

impl RawLock {
    pub const fn new() -> Self {
        RawLock {
            state: AtomicU32::new(FREE),
        }
    }

    fn lock(&self) {
        // Counted before the lock can be held: a signal handler that runs on this thread while
        // it holds (or is taking) the lock must see it (`held_here`).
        HELD_HERE.with(|h| h.set(h.get() + 1));
        if self
            .state
            .compare_exchange(FREE, HELD, Acquire, Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
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

    fn unlock(&self) {
        if self.state.swap(FREE, Release) == CONTENDED {
            wake_one(&self.state);
        }
        HELD_HERE.with(|h| h.set(h.get().saturating_sub(1)));
    }
}

thread_local! {
    /// Locks of this file this thread holds or is taking (const, no destructor: readable
    /// during thread exit and in signal handlers).
    static HELD_HERE: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
}

/// Whether this thread holds (or is taking) any lock of this file, e.g. because the code a
/// signal handler interrupted did, or because `with_site_lock_held` runs the caller's code: then
/// it must not wait for one (it could be its own).
pub(crate) fn held_here() -> bool {
    HELD_HERE.with(|h| h.get() != 0)
}

/// A value guarded by one lock word of this file.
pub(crate) struct Lock<T> {
    raw: &'static RawLock,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `raw` (Acquire on lock, Release on unlock).
unsafe impl<T: Send> Sync for Lock<T> {}

impl<T> Lock<T> {
    /// `raw` must be a word no other value uses (one of this file's statics).
    pub const fn new(raw: &'static RawLock, value: T) -> Self {
        Lock {
            raw,
            value: UnsafeCell::new(value),
        }
    }

    pub fn lock(&self) -> LockGuard<'_, T> {
        self.raw.lock();
        LockGuard {
            raw: self.raw,
            value: self.value.get(),
            _borrow: PhantomData,
        }
    }
}

/// `N` values, the `i`-th guarded by the `i`-th of `N` lock words of this file.
pub(crate) struct Locks<T, const N: usize> {
    raw: &'static [RawLock; N],
    values: UnsafeCell<[T; N]>,
}

// SAFETY: access to `values[i]` is serialised by `raw[i]`, and no access spans two elements.
unsafe impl<T: Send, const N: usize> Sync for Locks<T, N> {}

impl<T, const N: usize> Locks<T, N> {
    /// `raw` must be words no other value uses (one of this file's statics).
    pub const fn new(raw: &'static [RawLock; N], values: [T; N]) -> Self {
        Locks {
            raw,
            values: UnsafeCell::new(values),
        }
    }

    /// Locks the `i`-th value; `i < N`.
    pub fn lock(&self, i: usize) -> LockGuard<'_, T> {
        let raw = &self.raw[i];
        raw.lock();
        LockGuard {
            raw,
            // In bounds: `raw[i]` above did not panic. A pointer to the element, not a reference
            // to the array, so holders of other elements' locks are not aliased.
            value: self.values.get().cast::<T>().wrapping_add(i),
            _borrow: PhantomData,
        }
    }
}

pub(crate) struct LockGuard<'a, T> {
    raw: &'a RawLock,
    value: *mut T,
    _borrow: PhantomData<&'a mut T>,
}

impl<T> Deref for LockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `value` points to the live value `raw` guards (in a `Lock` or `Locks` that
        // outlives the guard), and the guard proves `raw` is held, so no other reference to it
        // exists.
        unsafe { &*self.value }
    }
}

impl<T> DerefMut for LockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access through the guard.
        unsafe { &mut *self.value }
    }
}

impl<T> Drop for LockGuard<'_, T> {
    fn drop(&mut self) {
        self.raw.unlock();
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

/// Lets a thread that may not wait for a fork in progress either run or step aside. `fork()`
/// closes the gate and waits until nobody is inside; who finds it closed does not enter (see
/// [`DWARF_UNWIND_GATE`]).
pub(crate) struct ForkGate {
    inside: AtomicUsize,
    closed: AtomicBool,
}

impl ForkGate {
    const fn new() -> Self {
        ForkGate {
            inside: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Enters unless a fork is in progress; `true` must be followed by one [`Self::leave`].
    pub fn enter(&self) -> bool {
        self.inside.fetch_add(1, SeqCst);
        if self.closed.load(SeqCst) {
            self.inside.fetch_sub(1, SeqCst);
            return false;
        }
        true
    }

    pub fn leave(&self) {
        self.inside.fetch_sub(1, SeqCst);
    }

    /// Closes the gate and waits for those inside to leave.
    fn close(&self) {
        self.closed.store(true, SeqCst);
        while self.inside.load(SeqCst) != 0 {
            // SAFETY: no preconditions; neither allocates nor locks.
            unsafe { libc::sched_yield() };
        }
    }

    /// Opens the gate. In the child, a thread that does not exist there may have been between
    /// its enter and its leave: the count restarts at 0.
    fn open(&self, child: bool) {
        if child {
            self.inside.store(0, SeqCst);
        }
        self.closed.store(false, SeqCst);
    }
}

/// The tag-name table's lock (`tags`).
pub(crate) static TAG_NAMES_LOCK: RawLock = RawLock::new();
/// The history ring's lock (`history`).
pub(crate) static HISTORY_RING_LOCK: RawLock = RawLock::new();
/// The two trimmed-stack caches' locks, unsymbolized then symbolized (`snapshot`).
pub(crate) static STACK_CACHE_LOCKS: [RawLock; 2] = [const { RawLock::new() }; 2];
/// The symbol cache's lock (`symbols`).
pub(crate) static SYMBOL_CACHE_LOCK: RawLock = RawLock::new();
/// The symbolizer's notes' lock (`symbols`).
pub(crate) static SYMBOL_NOTES_LOCK: RawLock = RawLock::new();
/// The DWARF unwinder's fork gate (`stack`). `backtrace::trace` holds backtrace's global lock
/// while it unwinds; a child forked at that moment inherits the lock held by a thread it does
/// not have, and its first DWARF capture or symbolization waits forever. So `fork()` closes the
/// gate and waits until no capture is in progress; captures that find the gate closed do not
/// wait (the thread may hold a lock the forking thread needs, e.g. backtrace's own, in a program
/// that calls `backtrace` itself) but return no frames.
pub(crate) static DWARF_UNWIND_GATE: ForkGate = ForkGate::new();
/// The site table's lock (`sites`).
pub(crate) static SITE_TABLE_LOCK: RawLock = RawLock::new();
/// How many live-sample shards `sites` keeps (one lock each).
pub(crate) const LIVE_SHARD_COUNT: usize = 32;
/// The live-sample shards' locks (`sites`).
pub(crate) static LIVE_SHARD_LOCKS: [RawLock; LIVE_SHARD_COUNT] =
    [const { RawLock::new() }; LIVE_SHARD_COUNT];

/// Forks this process is deep: 0 in the first process, one more in each child than in its
/// parent (see [`fork_generation`]).
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// How many forks separate this process from the first one. A thread started in an older
/// generation does not exist in this process.
pub(crate) fn fork_generation() -> u64 {
    FORK_GENERATION.load(SeqCst)
}

/// Takes the site table's lock, then every live-sample shard's in index order. (The hook never
/// holds two of them at once, so any fixed order is deadlock-free; this one is the fork
/// handlers', which take them after the dump-time locks.)
pub(crate) fn lock_site_tables() {
    SITE_TABLE_LOCK.lock();
    for s in &LIVE_SHARD_LOCKS {
        s.lock();
    }
}

/// Releases what [`lock_site_tables`] took, in reverse order.
///
/// # Safety
/// * [`lock_site_tables`] must have been called by this thread (or, in a forked child, by the
///   thread that forked) with no release since, and no guard may exist for these locks (their
///   holder is the caller).
pub(crate) unsafe fn unlock_site_tables() {
    for s in LIVE_SHARD_LOCKS.iter().rev() {
        s.unlock();
    }
    SITE_TABLE_LOCK.unlock();
}

/// `pthread_atfork` prepare: every lock, in the order of the list above.
pub(crate) extern "C" fn atfork_prepare() {
    TAG_NAMES_LOCK.lock();
    HISTORY_RING_LOCK.lock();
    for c in &STACK_CACHE_LOCKS {
        c.lock();
    }
    SYMBOL_CACHE_LOCK.lock();
    SYMBOL_NOTES_LOCK.lock();
    DWARF_UNWIND_GATE.close();
    lock_site_tables();
}

/// `pthread_atfork` parent: releases what [`atfork_prepare`] took.
pub(crate) extern "C" fn atfork_parent() {
    // SAFETY: `atfork_prepare` took every lock on this thread just before the fork.
    unsafe { release_after_fork(false) }
}

/// `pthread_atfork` child: releases what [`atfork_prepare`] took in the parent; this thread is
/// the child's copy of the one that took them.
pub(crate) extern "C" fn atfork_child() {
    FORK_GENERATION.fetch_add(1, SeqCst);
    // SAFETY: as in `atfork_parent`, for the forking thread's copy.
    unsafe { release_after_fork(true) }
}

/// Releases every lock in the reverse of [`atfork_prepare`]'s order.
///
/// # Safety
/// * [`atfork_prepare`] must have run on this thread (or, in a forked child, on the thread that
///   forked) with no release since.
unsafe fn release_after_fork(child: bool) {
    // SAFETY: per this function's contract `atfork_prepare` took the site locks here.
    unsafe { unlock_site_tables() };
    DWARF_UNWIND_GATE.open(child);
    SYMBOL_NOTES_LOCK.unlock();
    SYMBOL_CACHE_LOCK.unlock();
    for c in STACK_CACHE_LOCKS.iter().rev() {
        c.unlock();
    }
    HISTORY_RING_LOCK.unlock();
    TAG_NAMES_LOCK.unlock();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contended_lock_excludes_and_wakes_sleepers() {
        static W: RawLock = RawLock::new();
        static L: Lock<u64> = Lock::new(&W, 0);
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
        assert_eq!(W.state.load(SeqCst), FREE);
    }

    #[test]
    fn raw_unlock_releases_a_raw_lock() {
        static W: RawLock = RawLock::new();
        let l = Lock::new(&W, 1u8);
        W.lock();
        assert_ne!(W.state.load(SeqCst), FREE);
        W.unlock();
        assert_eq!(*l.lock(), 1);
    }

    #[test]
    fn locks_guard_each_element_apart() {
        static W: [RawLock; 3] = [const { RawLock::new() }; 3];
        static L: Locks<u32, 3> = Locks::new(&W, [10, 20, 30]);
        let mut a = L.lock(0);
        let mut c = L.lock(2);
        *a += 1;
        *c += 3;
        assert_eq!(W[1].state.load(SeqCst), FREE);
        assert_ne!(W[0].state.load(SeqCst), FREE);
        drop((a, c));
        assert_eq!([*L.lock(0), *L.lock(1), *L.lock(2)], [11, 20, 33]);
        assert!(W.iter().all(|w| w.state.load(SeqCst) == FREE));
    }

    #[test]
    fn fork_gate_turns_away_entries_while_closed() {
        let g = ForkGate::new();
        assert!(g.enter());
        g.leave();
        g.closed.store(true, SeqCst);
        assert!(!g.enter());
        assert_eq!(g.inside.load(SeqCst), 0);
        g.open(false);
        assert!(g.enter());
        g.leave();
    }
}
