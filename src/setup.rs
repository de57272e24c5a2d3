//! Process set-up: the configuration from the environment, and what a program whose allocator
//! heapsight is gets once (fork handlers, the exit dump, the unwinder warm-up). A program that only
//! links the crate never gets here, so it pays nothing: no constructor runs at start-up.
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering::*};

use crate::{config, sampler, sites, stack, thread};

static GLOBAL_STATE: AtomicU8 = AtomicU8::new(0);
static SET_UP: AtomicBool = AtomicBool::new(false);

/// Sets the rate and re-arms the calling thread at once; other threads pick it up at their next
/// countdown expiry (within about one interval of the old rate, 1 MiB if it was 0).
pub(crate) fn set_sample_rate(rate: u64) {
    init_global();
    sampler::store_rate(rate);
    thread::rearm_current();
}

pub(crate) fn set_seed(seed: u64) {
    init_global();
    thread::reseed(seed);
}

/// The configuration from the environment, once. Runs on the first slow-path call (normally the
/// process's first allocation, before `main`) and before a setting is changed through the API
/// (so a later first allocation does not overwrite it); a thread that finds it in progress
/// carries on with the defaults rather than wait inside the allocator.
pub(crate) fn init_global() {
    if GLOBAL_STATE.load(Acquire) == 2 {
        return;
    }
    if GLOBAL_STATE
        .compare_exchange(0, 1, Acquire, Relaxed)
        .is_err()
    {
        return;
    }
    read_env();
    GLOBAL_STATE.store(2, Release);
}

/// The one-time process set-up: fork handlers, the exit dump, the unwinder warm-up.
///
/// Runs on the first thread initialisation, inside the profiler guard (what it allocates is
/// forwarded uncounted) and before that thread takes any heapsight lock: locks are only taken
/// under the guard, and the guard's slow path returns before thread initialisation. So the DWARF
/// warm-up, whose first call runs libgcc's set-up (it walks the loaded objects under the
/// loader's lock and may allocate), happens while this thread holds no heapsight lock and no
/// sampled allocation is in flight on it; a concurrent thread's sample may find the set-up still
/// running, and libgcc serialises its own first-call initialisation.
pub(crate) fn activate() {
    thread::mark_active();
    if SET_UP.swap(true, AcqRel) {
        return;
    }
    #[cfg(unix)]
    // SAFETY: the handlers are `extern "C"` functions that only take and release heapsight's
    // locks and the unwinder's fork gate, in the order `sync` documents.
    unsafe {
        libc::pthread_atfork(
            Some(crate::sync::atfork_prepare),
            Some(crate::sync::atfork_parent),
            Some(crate::sync::atfork_child),
        );
    }
    if config::getenv(b"HEAPSIGHT_DUMP_ON_EXIT\0").is_some_and(|v| !v.is_empty()) {
        // SAFETY: registers a plain `extern "C" fn()` that catches its own panics.
        unsafe { libc::atexit(crate::dump::dump_at_exit) };
    }
    stack::warm_up_dwarf();
}

fn read_env() {
    let env = config::env_settings();
    if let Some(r) = env.sample_rate {
        sampler::store_rate(r);
    }
    if let Some(d) = env.max_depth {
        stack::MAX_DEPTH.store(d, Relaxed);
    }
    if let Some(n) = env.max_sites {
        sites::MAX_SITES.store(n, Relaxed);
    }
    if let Some(u) = env.unwinder {
        stack::set_unwinder(u);
    }
}
