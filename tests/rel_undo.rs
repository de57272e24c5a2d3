//! Guarantee: a failed allocation is taken back exactly, even when other allocations run on the
//! same thread during the failing inner call. The undo uses the size the call itself holds, not
//! a thread-local slot that a nested allocation overwrites.
//!
//! The global allocator is `HeapSight<Strict>` (tests/support/strict.rs) with a re-entry hook:
//! before each inner call, the inner allocator allocates through the global allocator (as a
//! logging or lazily initialised allocator does), or raises a signal whose handler allocates.
//! 200 `try_reserve` calls that the inner allocator fails, at the default rate, at rate 1 and at
//! a rate of 1 GiB: in-use objects and bytes come back to the baseline exactly, and no layout is
//! wrong.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use heapsight::HeapSight;

#[path = "support/strict.rs"]
mod strict;
mod support;

use strict::Strict;

#[global_allocator]
static GLOBAL: HeapSight<Strict> = HeapSight::new(Strict::system());

static NESTED: AtomicU64 = AtomicU64::new(0);

/// An inner allocator that allocates: a short-lived block and a kept one, then frees it.
fn allocating_hook() {
    NESTED.fetch_add(1, Relaxed);
    let a: Vec<u8> = Vec::with_capacity(100);
    let b: Vec<u64> = Vec::with_capacity(700);
    drop(std::hint::black_box(a));
    drop(std::hint::black_box(b));
}

extern "C" fn on_signal(_: libc::c_int) {
    allocating_hook();
}

/// The same from a signal handler that runs during the inner call.
fn signalling_hook() {
    // SAFETY: raises a signal whose handler (installed in `main`) only allocates and frees.
    unsafe { libc::raise(libc::SIGUSR1) };
}

fn failed_reserves(rate: u64, hook: fn()) -> Result<(), String> {
    heapsight::set_sample_rate(rate);
    // Warm up this thread at the rate (its countdown redrawn, slot flushed).
    drop(std::hint::black_box(vec![0u8; 1 << 20]));
    let base = support::exact();
    let nested0 = NESTED.load(Relaxed);
    strict::set_reentry_hook(Some(hook));
    let mut failed = 0;
    for i in 0..200usize {
        // 1 KiB to 4 MiB: below and above the countdown, so both the fast path's undo and the
        // slow path's are taken.
        let size = 1024 << (i % 13);
        let mut v: Vec<u8> = Vec::new();
        // Two: a sampled allocation refused at its raised alignment is retried as asked.
        strict::fail_next_on_this_thread(2);
        if v.try_reserve_exact(size).is_err() {
            failed += 1;
        }
        strict::fail_next_on_this_thread(0);
    }
    strict::set_reentry_hook(None);
    let now = support::exact();
    let nested = NESTED.load(Relaxed) - nested0;
    println!("  rate {rate}: {failed} failed reserves, {nested} nested allocations");
    if failed != 200 || nested < 200 {
        return Err(format!(
            "{failed} reserves failed and {nested} nested allocations ran: tested nothing"
        ));
    }
    strict::check()?;
    if (now.inuse_objects, now.inuse_bytes) != (base.inuse_objects, base.inuse_bytes) {
        return Err(format!(
            "phantom in-use after failed allocations: {:+} objects, {:+} bytes\nbase {base:?}\nnow  {now:?}",
            now.inuse_objects as i64 - base.inuse_objects as i64,
            now.inuse_bytes as i64 - base.inuse_bytes as i64
        ));
    }
    Ok(())
}

fn main() {
    // SAFETY: installs a handler that only allocates and frees.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let mut r = support::Runner::new();
    for (name, rate) in [("default", 512 * 1024), ("rate_1", 1), ("rate_1g", 1 << 30)] {
        r.check_ok(&format!("allocating_inner_allocator_{name}"), || {
            failed_reserves(rate, allocating_hook)
        });
        r.check_ok(&format!("allocating_signal_handler_{name}"), || {
            failed_reserves(rate, signalling_hook)
        });
    }
    r.finish();
}
