//! Guarantee 3 (thread churn): after 10,000 short-lived threads that allocate, hand blocks to
//! other threads, free blocks after their own thread-locals are gone, and exit, the exact counters
//! are back at the baseline, counter slots were recycled, and every freed site shows zero in use.
//! Also: values taken out of a profile (cloned frames and symbol lists) never move the program's
//! counters, whenever they are dropped.
use std::ffi::c_void;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use heapsight::HeapSight;

mod support;
use support::{assert_back_to, assert_sites_freed, exact};

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

const THREADS: usize = 10_000;
/// Threads alive at once.
const BATCH: usize = 8;

/// A pthread key whose destructor frees a block and allocates another: glibc runs such
/// destructors after the thread's Rust thread-locals (heapsight's exit hook among them) are gone,
/// so these calls take the no-slot ("orphan") path.
static KEY: AtomicUsize = AtomicUsize::new(usize::MAX);

#[inline(never)]
extern "C" fn late_key_destructor(p: *mut c_void) {
    // SAFETY: `p` is the `Box<[u8; 48]>` leaked by `short_lived_worker`.
    drop(unsafe { Box::from_raw(p.cast::<[u8; 48]>()) });
    let v = vec![7u8; 100];
    black_box(&v);
}

/// What one short-lived thread does: allocates a few blocks, frees some itself, leaves one for the
/// late key destructor, and returns the rest for its parent to free after it has exited.
#[inline(never)]
fn short_lived_worker(i: usize) -> Vec<Box<[u8]>> {
    let mut keep = Vec::with_capacity(2);
    for j in 0..4 {
        let b = vec![j as u8; 16 + (i * 7 + j) % 500].into_boxed_slice();
        if j % 2 == 0 {
            keep.push(b);
        } else {
            black_box(&b);
        }
    }
    let late = Box::into_raw(Box::new([1u8; 48]));
    // SAFETY: KEY was created by `pthread_key_create`; the value is freed by its destructor.
    unsafe { libc::pthread_setspecific(KEY.load(SeqCst) as libc::pthread_key_t, late.cast()) };
    keep
}

fn ten_thousand_short_lived_threads() {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-pointer; the destructor is an `extern "C" fn(*mut c_void)`.
    assert_eq!(
        unsafe { libc::pthread_key_create(&mut key, Some(late_key_destructor)) },
        0
    );
    KEY.store(key as usize, SeqCst);
    // Warm-up: whatever std sets up on the first spawn stays; take the baseline after it.
    std::thread::spawn(|| ()).join().unwrap();
    let slots0 = heapsight::stats().thread_slots;
    let base = exact();
    let mut handles = Vec::with_capacity(BATCH);
    let mut pending: Vec<Box<[u8]>> = Vec::with_capacity(2 * BATCH);
    for round in 0..THREADS / BATCH {
        // Half the run samples every allocation, half at a small rate.
        heapsight::set_sample_rate(if round % 2 == 0 { 1 } else { 256 });
        for t in 0..BATCH {
            let i = round * BATCH + t;
            handles.push(std::thread::spawn(move || short_lived_worker(i)));
        }
        // The previous batch's blocks: their owners have exited (joined) a round ago.
        pending.clear();
        for h in handles.drain(..) {
            pending.extend(h.join().unwrap());
        }
    }
    drop(pending);
    drop(handles);
    heapsight::set_sample_rate(1);
    assert_back_to(base, "after 10,000 short-lived threads");
    let slots = heapsight::stats().thread_slots;
    assert!(
        slots <= slots0 + BATCH as u64,
        "counter slots were not recycled: {slots0} before, {slots} after {THREADS} threads"
    );
    let p = heapsight::profile();
    assert!(
        assert_sites_freed(&p, "short_lived_worker") >= 1,
        "the workload was never sampled"
    );
    // Allocations after a thread's thread-locals are gone are counted but never sampled (the
    // thread has no sampler state any more), so `late_key_destructor` has no site of its own;
    // the sampled `late` blocks it frees belong to `short_lived_worker`, checked above.
    assert_eq!(assert_sites_freed(&p, "late_key_destructor"), 0);
    drop(p);
    assert_back_to(base, "after the profile");
}

/// Keeps a few sampled blocks live so the profile has sites with symbols.
#[inline(never)]
fn keep_some_blocks() -> Vec<Vec<u8>> {
    (0..64).map(|i| vec![0u8; 100 + i]).collect()
}

fn values_from_a_profile_never_move_the_counters() {
    heapsight::set_sample_rate(1);
    let live = keep_some_blocks();
    for symbolized in [true, false] {
        let base = exact();
        let p = if symbolized {
            heapsight::profile()
        } else {
            heapsight::profile_unsymbolized()
        };
        assert!(!p.sites().is_empty());
        // Clones of frames and of their symbol lists, kept past the profile.
        let frames: Vec<heapsight::Frame> =
            p.sites().iter().flat_map(|s| s.frames().to_vec()).collect();
        let symbols: Vec<heapsight::Symbols> = frames.iter().map(|f| f.symbols.clone()).collect();
        assert!(!frames.is_empty());
        drop(p);
        drop(symbols);
        drop(frames);
        assert_back_to(
            base,
            if symbolized {
                "profile()"
            } else {
                "profile_unsymbolized()"
            },
        );
    }
    drop(live);
}

fn main() {
    support::watchdog(120, "rel_threads");
    support::run(&[
        (
            "ten_thousand_short_lived_threads",
            ten_thousand_short_lived_threads,
        ),
        (
            "values_from_a_profile_never_move_the_counters",
            values_from_a_profile_never_move_the_counters,
        ),
    ]);
}
