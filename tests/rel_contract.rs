//! Guarantee: the inner allocator is given the layout it allocated each block with, on every
//! path. A randomized operation sequence over `HeapSight<Strict>` (tests/support/strict.rs):
//! alloc / alloc_zeroed / realloc / free on four threads, the sample rate moved between 1, the
//! default, 0 and 64 KiB, profiler-guard sections that free and grow program blocks (as
//! `otlp::start` drops the caller's `Config`), program blocks freed while the site lock is held
//! (`with_site_lock_held`), signal handlers that allocate and free program blocks in the middle
//! of anything, `fork()` with a child that allocates and checks, and injected inner failures.
//! Two runs of 1.2 million operations each: 0 wrong layouts, 0 unknown blocks; and after the
//! first (without guard sections, whose unsampled program frees count as the profiler's), the
//! blocks `Strict` holds equal heapsight's in-use plus profiler bytes exactly.
use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};

use heapsight::HeapSight;

#[path = "support/strict.rs"]
mod strict;
mod support;

use strict::Strict;
use support::Rng;

#[global_allocator]
static GLOBAL: HeapSight<Strict> = HeapSight::new(Strict::system());

const THREADS: usize = 4;
const OPS_PER_THREAD: u64 = 300_000;
const RATES: [u64; 4] = [1, 512 * 1024, 0, 64 * 1024];

/// Program blocks handed to the signal handler to free: slot `i` holds a block of
/// `stash_layout(i)` (0 = empty).
const STASH: usize = 64;
static STASHED: [AtomicUsize; STASH] = [const { AtomicUsize::new(0) }; STASH];

fn stash_layout(i: usize) -> Layout {
    Layout::from_size_align(24 + 40 * i, 8).unwrap()
}

static HANDLED: AtomicU64 = AtomicU64::new(0);
static HANDLER_FREES: AtomicU64 = AtomicU64::new(0);

/// SIGUSR1: allocates and frees (through heapsight, wherever the thread was), and frees a
/// program block from the stash. Skipped while the thread is inside the inner allocator itself
/// (glibc's malloc is not async-signal-safe; heapsight's code is what is under test).
extern "C" fn on_signal(_: libc::c_int) {
    if strict::inside_inner() {
        return;
    }
    HANDLED.fetch_add(1, Relaxed);
    let n = HANDLED.load(Relaxed) as usize;
    // Raw, null-checked: an injected failure may be pending on this thread, and this
    // allocation may take it.
    let l = Layout::from_size_align(1 + n % 3000, 8).unwrap();
    // SAFETY: nonzero size; freed once with the same layout.
    unsafe {
        let p = alloc(l);
        if !p.is_null() {
            dealloc(std::hint::black_box(p), l);
        }
    }
    let i = n % STASH;
    let p = STASHED[i].swap(0, AcqRel);
    if p != 0 {
        HANDLER_FREES.fetch_add(1, Relaxed);
        // SAFETY: the stash holds blocks allocated with `stash_layout(i)`, each taken once.
        unsafe { dealloc(p as *mut u8, stash_layout(i)) };
    }
}

/// A block the worker owns: pointer, layout, fill byte.
struct Block(*mut u8, Layout, u8);

fn random_layout(r: &mut Rng) -> Layout {
    let size = match r.below(100) {
        0..=59 => 1 + r.below(256),
        60..=89 => 1 + r.below(8192),
        90..=97 => 1 + r.below(60_000),
        _ => 64 * 1024 + r.below(64 * 1024),
    } as usize;
    let align = match r.below(20) {
        0 => 64,
        1 => 4096,
        2..=5 => 16,
        _ => 8,
    };
    Layout::from_size_align(size, align).unwrap()
}

/// Checks a block's first and last byte (contents survive moves and reallocs).
fn check(b: &Block) {
    // SAFETY: `b.0` is live for `b.1.size()` bytes, all written with `b.2`.
    unsafe {
        assert_eq!(*b.0, b.2, "contents lost");
        assert_eq!(*b.0.add(b.1.size() - 1), b.2, "contents lost");
    }
}

fn new_block(r: &mut Rng, zeroed: bool) -> Option<Block> {
    let l = random_layout(r);
    // SAFETY: `l` has a nonzero size.
    let p = unsafe {
        if zeroed {
            alloc_zeroed(l)
        } else {
            alloc(l)
        }
    };
    if p.is_null() {
        return None;
    }
    assert_eq!(p as usize % l.align(), 0, "misaligned block");
    let tag = r.next() as u8;
    // SAFETY: `p` is live for `l.size()` bytes.
    unsafe {
        if zeroed {
            assert_eq!(*p.add(l.size() - 1), 0, "alloc_zeroed not zero");
        }
        p.write_bytes(tag, l.size());
    }
    Some(Block(p, l, tag))
}

fn free_block(b: Block) {
    check(&b);
    // SAFETY: allocated with this layout, freed once.
    unsafe { dealloc(b.0, b.1) }
}

/// Reallocates `b` to a random size; on failure `b` is unchanged.
fn realloc_block(r: &mut Rng, b: &mut Block) {
    check(b);
    let n = random_layout(r).size();
    // SAFETY: `b` was allocated with `b.1`; `n` is nonzero and small.
    let q = unsafe { realloc(b.0, b.1, n) };
    if q.is_null() {
        return;
    }
    let l = Layout::from_size_align(n, b.1.align()).unwrap();
    assert_eq!(q as usize % l.align(), 0, "misaligned realloc");
    // SAFETY: `q` is live for `n` bytes; the first `min` kept the old contents.
    unsafe {
        assert_eq!(*q, b.2, "realloc lost the contents");
        assert_eq!(
            *q.add(b.1.size().min(n) - 1),
            b.2,
            "realloc lost the contents"
        );
        q.write_bytes(b.2, n);
    }
    *b = Block(q, l, b.2);
}

/// A child that allocates, frees and checks Strict, then exits with its verdict.
fn fork_and_check(r: &mut Rng) {
    // No signal handler during fork(): glibc's fork holds malloc's locks, which the handler's
    // allocation (in glibc, under heapsight) would wait for.
    // SAFETY: sigset operations on a local set; fork's child only allocates, frees and exits
    // with `_exit`.
    let pid = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let pid = libc::fork();
        if pid != 0 {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
        pid
    };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mut live = Vec::with_capacity(64);
        for _ in 0..2000 {
            if let Some(b) = new_block(r, false) {
                live.push(b);
            }
            if live.len() > 32 {
                free_block(live.swap_remove(0));
            }
        }
        for b in live {
            free_block(b);
        }
        let ok = strict::check().is_ok();
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "forked child saw a wrong layout (status {status})"
    );
}

static GUARD_OPS: AtomicU64 = AtomicU64::new(0);
static LOCKED_OPS: AtomicU64 = AtomicU64::new(0);
static INJECTED_NULLS: AtomicU64 = AtomicU64::new(0);

fn worker(id: usize, ops: u64, guard_sections: bool) {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) * 0x2545_F491_4F6C_DD1D));
    let mut live: Vec<Block> = Vec::with_capacity(4096);
    for op in 0..ops {
        if op % 40_000 == 0 {
            heapsight::set_sample_rate(RATES[(op / 40_000 + id as u64) as usize % RATES.len()]);
        }
        if id == 0 && op % 100_000 == 50_000 {
            fork_and_check(&mut r);
        }
        match r.below(100) {
            0..=29 => live.extend(new_block(&mut r, false)),
            30..=39 => live.extend(new_block(&mut r, true)),
            40..=59 if !live.is_empty() => {
                let k = r.below(live.len() as u64) as usize;
                realloc_block(&mut r, &mut live[k]);
            }
            60..=88 if !live.is_empty() => {
                let k = r.below(live.len() as u64) as usize;
                free_block(live.swap_remove(k));
            }
            89..=92 if guard_sections && live.len() > 4 => {
                // Profiler code drops and grows values the program allocated.
                GUARD_OPS.fetch_add(1, Relaxed);
                let k = r.below(live.len() as u64) as usize;
                let b = live.swap_remove(k);
                let k2 = r.below(live.len() as u64) as usize;
                let mut g = std::mem::replace(&mut live[k2], Block(std::ptr::null_mut(), b.1, 0));
                heapsight::in_profiler_scope(|| {
                    free_block(b);
                    realloc_block(&mut r, &mut g);
                });
                live[k2] = g;
            }
            93 if guard_sections && !live.is_empty() => {
                // Freed and grown while this thread holds the site lock.
                LOCKED_OPS.fetch_add(1, Relaxed);
                let k = r.below(live.len() as u64) as usize;
                let b = live.swap_remove(k);
                heapsight::with_site_lock_held(|| free_block(b));
                if !live.is_empty() {
                    let k = r.below(live.len() as u64) as usize;
                    let mut g =
                        std::mem::replace(&mut live[k], Block(std::ptr::null_mut(), b_l(), 0));
                    heapsight::with_site_lock_held(|| realloc_block(&mut r, &mut g));
                    live[k] = g;
                }
            }
            94 => {
                // A program block for the signal handler to free.
                let i = r.below(STASH as u64) as usize;
                // SAFETY: nonzero size.
                let p = unsafe { alloc(stash_layout(i)) };
                if !p.is_null() {
                    let old = STASHED[i].swap(p as usize, AcqRel);
                    if old != 0 {
                        // SAFETY: stash slot `i` holds blocks of `stash_layout(i)`.
                        unsafe { dealloc(old as *mut u8, stash_layout(i)) };
                    }
                }
            }
            95..=97 => {
                // The inner allocator fails the next call (the allocation or the realloc).
                strict::fail_next_on_this_thread(1);
                if live.is_empty() || r.below(2) == 0 {
                    match new_block(&mut r, false) {
                        Some(b) => live.push(b),
                        None => {
                            INJECTED_NULLS.fetch_add(1, Relaxed);
                        }
                    }
                } else {
                    let k = r.below(live.len() as u64) as usize;
                    realloc_block(&mut r, &mut live[k]);
                }
                strict::fail_next_on_this_thread(0);
            }
            _ => {}
        }
        if live.len() > 3000 {
            free_block(live.swap_remove(0));
        }
    }
    for b in live {
        free_block(b);
    }
}

fn b_l() -> Layout {
    Layout::new::<u8>()
}

fn randomized_operations(guard_sections: bool) -> Result<(), String> {
    // SAFETY: installs a handler that only allocates and frees (see `on_signal`).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let stop = AtomicBool::new(false);
    let tids: Vec<AtomicUsize> = (0..THREADS).map(|_| AtomicUsize::new(0)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|id| {
                let tid = &tids[id];
                s.spawn(move || {
                    // SAFETY: the calling thread's own id.
                    tid.store(unsafe { libc::pthread_self() } as usize, SeqCst);
                    worker(id, OPS_PER_THREAD, guard_sections);
                    tid.store(0, SeqCst);
                })
            })
            .collect();
        s.spawn(|| {
            let mut k = 0usize;
            while !stop.load(Relaxed) {
                let t = tids[k % THREADS].load(SeqCst);
                if t != 0 {
                    // SAFETY: a live thread of this scope (it clears its id before it ends;
                    // a signal that arrives after that is handled by the same handler).
                    unsafe { libc::pthread_kill(t as libc::pthread_t, libc::SIGUSR1) };
                }
                k += 1;
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        });
        for h in handles {
            h.join().unwrap();
        }
        stop.store(true, Relaxed);
    });
    for (i, s) in STASHED.iter().enumerate() {
        let p = s.swap(0, AcqRel);
        if p != 0 {
            // SAFETY: as in `on_signal`.
            unsafe { dealloc(p as *mut u8, stash_layout(i)) };
        }
    }
    heapsight::set_sample_rate(512 * 1024);
    let st = heapsight::stats();
    let t = strict::totals();
    println!(
        "\n  {} ops on {THREADS} threads; {} samples; {} guard sections, {} under the site lock; \
         {} signals handled ({} freed a program block); {} injected failures ({} of them \
         allocations); inner allocator: {} allocations, {} frees, {} reallocs",
        THREADS as u64 * OPS_PER_THREAD,
        st.samples,
        GUARD_OPS.load(Relaxed),
        LOCKED_OPS.load(Relaxed),
        HANDLED.load(Relaxed),
        HANDLER_FREES.load(Relaxed),
        t.injected,
        INJECTED_NULLS.load(Relaxed),
        t.allocs,
        t.frees,
        t.reallocs
    );
    strict::check()?;
    if !guard_sections {
        // A program block that is not a sample and is freed inside the guard is counted as the
        // profiler's own (nothing tells it apart; see `Owned` for the other direction), so the
        // exact comparison is made over the run without guard sections, which comes first.
        strict::check_counters(&st)?;
    }
    if st.samples < 10_000 || HANDLER_FREES.load(Relaxed) == 0 || t.injected == 0 {
        return Err("the sequence did not exercise what it claims".into());
    }
    Ok(())
}

fn main() {
    support::watchdog(900, "rel_contract");
    let mut r = support::Runner::new();
    r.check_ok("counters_exact_against_the_inner_allocator", || {
        randomized_operations(false)
    });
    r.check_ok("guard_sections_and_site_lock_keep_every_layout", || {
        randomized_operations(true)
    });
    r.finish();
}
