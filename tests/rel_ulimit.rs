//! Guarantee: a process that runs out of address space (`ulimit -v`, `RLIMIT_AS`) is not killed
//! by heapsight, neither while it allocates nor when it gives memory back.
//!
//! The test re-runs its own binary as a child (env `HEAPSIGHT_TEST_ULIMIT_CHILD`), which, at
//! rate 1 over `Strict` (layout-checking), limits its address space to what it uses plus 48 MiB,
//! then
//! 1. allocates one block on each of 4,096 distinct stacks (4,096 stacks in the site table, none
//!    freed yet, so none has a lifetime row);
//! 2. allocates until the inner allocator refuses: 256 KiB blocks, then 4 KiB, then 64 B, each
//!    on a new stack (so the profiler needs memory for each), each result checked;
//! 3. frees the 4,096 blocks while memory is exhausted: each is its stack's first sampled free
//!    (before this release the lifetime row was created right there, and its `Vec` growth
//!    aborted inside `dealloc`);
//! 4. frees the rest, and checks that the exact counters are back at the baseline, `Strict` saw
//!    no wrong layout, and a profile can be taken.
//!
//! The parent asserts that the child exited with status 0 and printed its report.
use std::alloc::{GlobalAlloc, Layout};

use heapsight::HeapSight;

#[path = "support/strict.rs"]
mod strict;
mod support;
use strict::Strict;
use support::{exact, on_distinct_stack};

#[global_allocator]
static GLOBAL: HeapSight<Strict> = HeapSight::new(Strict::system());

const CHILD: &str = "HEAPSIGHT_TEST_ULIMIT_CHILD";
const STACKS: u64 = 4096;

/// Bytes of address space this process has mapped now (`/proc/self/statm`, first field).
fn vm_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = s.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

fn child() {
    heapsight::set_sample_rate(1);
    // Everything the child keeps is reserved before the limit.
    let small = Layout::from_size_align(48, 8).unwrap();
    let mut on_stacks: Vec<*mut u8> = Vec::with_capacity(STACKS as usize);
    let mut filler: Vec<(*mut u8, Layout)> = Vec::with_capacity(1 << 21);
    let limit = vm_bytes() + (48 << 20);
    let before = heapsight::stats();
    let base = exact();
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit for this process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);

    let (mut allocs, mut refused) = (0u64, 0u64);
    for bits in 0..STACKS {
        on_distinct_stack(bits, 12, &mut || {
            // SAFETY: a nonzero size.
            let p = unsafe { GLOBAL.alloc(small) };
            if p.is_null() {
                refused += 1;
            } else {
                on_stacks.push(p);
                allocs += 1;
            }
        });
    }
    // Down to blocks smaller than what the profiler needs for a new stack (its frames alone are
    // over 100 bytes), so that the program's allocation can succeed where the profiler's fails.
    for size in [256 << 10, 4096, 64, 16] {
        let l = Layout::from_size_align(size, 8).unwrap();
        let mut misses = 0;
        while misses < 64 && filler.len() < filler.capacity() {
            // Each on a new stack: the profiler needs memory for each (a stack copy, its entry,
            // a lifetime row's room) just when there is none.
            let mut p = core::ptr::null_mut();
            on_distinct_stack(STACKS + filler.len() as u64, 16, &mut || {
                // SAFETY: a nonzero size.
                p = unsafe { GLOBAL.alloc(l) };
            });
            if p.is_null() {
                refused += 1;
                misses += 1;
            } else {
                filler.push((p, l));
                allocs += 1;
            }
        }
    }
    let exhausted = heapsight::stats();
    for &p in &on_stacks {
        // SAFETY: allocated above with `small`, freed once.
        unsafe { GLOBAL.dealloc(p, small) };
    }
    for &(p, l) in &filler {
        // SAFETY: allocated above with `l`, freed once.
        unsafe { GLOBAL.dealloc(p, l) };
    }
    let frees = (on_stacks.len() + filler.len()) as u64;
    support::assert_back_to(base, "after the frees");
    let now = exact();
    assert_eq!(
        (now.alloc_objects - base.alloc_objects, frees),
        (allocs, allocs),
        "allocations counted, and blocks freed, against the child's own tally"
    );
    drop(on_stacks);
    drop(filler);
    strict::assert_clean();
    assert!(
        refused > 0,
        "the limit was never reached: the test proves nothing"
    );
    let after = heapsight::stats();
    assert!(
        after.lost_samples + after.unattributed_samples
            > before.lost_samples + before.unattributed_samples,
        "no profiler allocation failed: the test proves nothing"
    );
    let p = heapsight::profile_unsymbolized();
    println!(
        "ulimit child: ok: {allocs} allocations, {refused} refused under a {} MiB limit, \
         {} samples, {} lost and {} unattributed (at exhaustion: {} lost), profile of {} sites",
        limit >> 20,
        after.samples - before.samples,
        after.lost_samples - before.lost_samples,
        after.unattributed_samples - before.unattributed_samples,
        exhausted.lost_samples - before.lost_samples,
        p.sites().len(),
    );
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    support::watchdog(300, "rel_ulimit");
    let mut r = support::Runner::new();
    r.check_ok("out_of_address_space_then_free", || {
        let out = support::rerun_with_env(&[(CHILD, "1".as_ref())], &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !stdout.contains("ulimit child: ok") {
            return Err(format!(
                "child failed ({}):\n{stdout}\n{stderr}",
                out.status
            ));
        }
        println!(
            "  ({})",
            stdout.trim().trim_start_matches("ulimit child: ok: ")
        );
        Ok(())
    });
    r.finish();
}
