//! A program that links heapsight but installs another global allocator (`System`) pays nothing
//! for it: no thread at start-up, no fork handlers, no unwinder warm-up; `is_active()` is false,
//! and the readers say "heapsight is not the global allocator" instead of printing zeros.
use std::alloc::System;

mod support;

#[global_allocator]
static GLOBAL: System = System;

/// Threads of this process, from /proc/self/task.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Called first, before anything else in `main` could start a thread.
fn nothing_ran_at_start_up() {
    assert_eq!(threads(), 1, "a thread was started before main");
    assert!(!heapsight::is_active());
    let s = heapsight::stats();
    assert_eq!(
        (s.alloc_objects, s.samples, s.thread_slots, s.dwarf_captures),
        (0, 0, 0, 0),
        "{s:?}"
    );
}

fn readers_say_not_the_global_allocator() {
    let v: Vec<Vec<u8>> = (0..100).map(|i| vec![0u8; 100 + i]).collect();
    std::hint::black_box(&v);
    assert!(!heapsight::is_active(), "allocations through System");
    let p = heapsight::profile();
    assert!(p.sites().is_empty());
    let top = p.top(10, heapsight::SampleType::InuseSpace).to_string();
    assert!(
        top.contains("heapsight is not the global allocator"),
        "{top}"
    );
    let (_, usage) = heapsight::measure(|| vec![1u8; 1000]);
    assert_eq!(usage.alloc_objects, 0);
    assert!(!heapsight::is_active(), "measure() does not activate");
    #[cfg(feature = "http")]
    {
        for path in ["/metrics", "/debug/heapsight"] {
            let r = heapsight::http::respond(path);
            let body = String::from_utf8_lossy(&r.body);
            assert_eq!(r.status, 200, "{path}");
            assert!(
                body.contains("heapsight is not the global allocator"),
                "{path}: {body}"
            );
            assert!(
                !body.contains("heapsight_alloc_bytes_total"),
                "{path}: zero counters printed"
            );
        }
    }
    #[cfg(not(feature = "http"))]
    eprintln!("SKIPPED: /metrics and /debug/heapsight need feature http");
    // Still no thread of heapsight's (the test itself starts none).
    assert_eq!(threads(), 1);
    drop(v);
}

/// No fork handlers: `fork()` does not wait for a heapsight lock another thread holds (with the
/// handlers registered, the prepare handler would wait for the site lock until that thread lets
/// go, which it does only after the fork returned: a deadlock, turned into a failure by alarm).
fn fork_runs_no_heapsight_handler() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    static HELD: AtomicBool = AtomicBool::new(false);
    static FORKED: AtomicBool = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            heapsight::with_site_lock_held(|| {
                HELD.store(true, SeqCst);
                while !FORKED.load(SeqCst) {
                    std::thread::yield_now();
                }
            })
        });
        while !HELD.load(SeqCst) {
            std::thread::yield_now();
        }
        // SAFETY: alarm(2) has no preconditions; SIGALRM's default action ends the process.
        unsafe { libc::alarm(20) };
        // SAFETY: the child only calls `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: cancels the alarm.
        unsafe { libc::alarm(0) };
        FORKED.store(true, SeqCst);
        assert!(pid > 0, "fork failed");
        let mut status = 0;
        // SAFETY: our child; `status` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    });
    assert!(!heapsight::is_active());
}

fn main() {
    // No watchdog: it is a thread, and the first check counts threads. Nothing here can block.
    support::run(&[
        ("nothing_ran_at_start_up", nothing_ran_at_start_up),
        (
            "readers_say_not_the_global_allocator",
            readers_say_not_the_global_allocator,
        ),
        (
            "fork_runs_no_heapsight_handler",
            fork_runs_no_heapsight_handler,
        ),
    ]);
}
