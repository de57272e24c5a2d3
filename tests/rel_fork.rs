//! Guarantee 5: `fork()` while other threads hold heapsight's locks. One thread takes profiles in
//! a loop (it holds the site lock while copying the table and the symbol-cache lock while
//! symbolizing; the first fork lands during the first, slow, symbolization), another allocates
//! with every allocation sampled (it takes the site lock, and with the DWARF unwinder,
//! backtrace's lock). The main thread forks while the profiler is inside `profile()`; each child
//! allocates, reads `stats()`, takes a symbolized profile and exits with a status code that the
//! parent checks. A child that hangs is killed after a generous bound and reported as a deadlock.
//! Then 1,000 forks against each concurrent activity in turn (a thread interning tags, one taking
//! symbolized profiles, one taking unsymbolized profiles, four allocating at rate 1); every child
//! allocates, tags, takes both kinds of profile and exits, under an alarm that turns a hang into
//! a counted SIGALRM death.
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use heapsight::{HeapSight, Unwinder};

mod support;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

const ROUNDS: usize = 20;
/// Per child; a hang detector, not a timing assertion (a child takes milliseconds).
const CHILD_BOUND: Duration = Duration::from_secs(30);

static STOP: AtomicBool = AtomicBool::new(false);

/// Stops the helper threads when dropped, also when an assertion fails, so the failure is
/// reported instead of a thread scope waiting for them forever.
struct StopOnDrop;

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        STOP.store(true, SeqCst);
    }
}
static IN_PROFILE: AtomicBool = AtomicBool::new(false);

/// What a forked child checks. Returns its exit status: 0 = all good.
#[inline(never)]
fn child_check() -> i32 {
    let v: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 100 + i]).collect();
    black_box(&v);
    let s = heapsight::stats();
    if s.inuse_objects != s.alloc_objects - s.free_objects || s.inuse_bytes < 10_000 {
        return 2;
    }
    let p = heapsight::profile();
    if p.sites().is_empty() {
        return 3;
    }
    // The child's own allocations were sampled and symbolized in the child.
    if !p
        .sites()
        .iter()
        .any(|s| support::site_has(s, "child_check"))
    {
        return 4;
    }
    drop(p);
    drop(v);
    let s2 = heapsight::stats();
    if s2.inuse_bytes >= s.inuse_bytes {
        return 5;
    }
    0
}

fn profiler_loop() {
    while !STOP.load(SeqCst) {
        IN_PROFILE.store(true, SeqCst);
        let p = heapsight::profile();
        black_box(p.sites().len());
        drop(p);
        drop(heapsight::profile_unsymbolized());
        IN_PROFILE.store(false, SeqCst);
        std::thread::yield_now();
    }
}

#[inline(never)]
fn allocator_loop() {
    let mut i = 0usize;
    while !STOP.load(SeqCst) {
        support::on_distinct_stack(i as u64, 8, &mut || {
            black_box(vec![0u8; 64 + i % 512]);
        });
        i += 1;
    }
}

/// Forks; the child runs `child_check` and `_exit`s; returns the child's exit status.
fn fork_and_check(round: usize) -> i32 {
    // SAFETY: fork has no preconditions. The child only allocates (through heapsight and glibc
    // malloc, both fork-safe), takes a profile and calls `_exit`: it does not print or take any
    // std lock the other threads may have held.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(child_check).unwrap_or(6);
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid failed");
        if r == pid {
            break;
        }
        if start.elapsed() > CHILD_BOUND {
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("round {round}: the forked child hung for {CHILD_BOUND:?}: deadlock after fork");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        libc::WIFEXITED(status),
        "round {round}: child died: status {status:#x}"
    );
    libc::WEXITSTATUS(status)
}

fn fork_while_profiling(unwinder: Unwinder) {
    heapsight::set_unwinder(unwinder);
    heapsight::set_sample_rate(1);
    STOP.store(false, SeqCst);
    // Live blocks on many distinct stacks, so that profiles have work to do.
    let mut keep = Vec::new();
    for i in 0..2048u64 {
        support::on_distinct_stack(i, 11, &mut || keep.push(vec![1u8; 32]));
    }
    std::thread::scope(|s| {
        let _stop = StopOnDrop;
        let p = s.spawn(profiler_loop);
        let a = s.spawn(allocator_loop);
        for round in 0..ROUNDS {
            while !IN_PROFILE.load(SeqCst) {
                std::thread::yield_now();
            }
            let code = fork_and_check(round);
            assert_eq!(
                code, 0,
                "round {round} ({unwinder:?}): the child failed its check"
            );
        }
        STOP.store(true, SeqCst);
        p.join().unwrap();
        a.join().unwrap();
    });
    drop(keep);
    heapsight::set_unwinder(Unwinder::Auto);
}

fn fork_while_profiling_frame_pointers() {
    fork_while_profiling(Unwinder::Auto)
}

fn fork_while_profiling_dwarf() {
    fork_while_profiling(Unwinder::Dwarf)
}

/// Forks per concurrent activity.
const FORKS: usize = 1000;
/// A child that has not exited after this long is hung: SIGALRM (default action: terminate)
/// ends it and the parent counts it. A hang detector, not a timing assertion: a child takes a
/// few milliseconds.
const CHILD_ALARM_SECS: u32 = 10;

/// What every child of [`fork_against`] does: allocate (sampled at rate 1), intern a new tag and
/// allocate under it, take a symbolized and an unsymbolized profile, exit. 0 = all good.
#[inline(never)]
fn child_work(round: usize) -> i32 {
    let v: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; 64 + i]).collect();
    black_box(&v);
    let tagged = {
        let _g = heapsight::tag(&format!("child-{round}"));
        black_box(vec![7u8; 256])
    };
    let p = heapsight::profile();
    if !p.sites().iter().any(|s| support::site_has(s, "child_work")) {
        return 3;
    }
    drop(p);
    let raw = heapsight::profile_unsymbolized();
    if raw.sites().is_empty() {
        return 4;
    }
    drop(raw);
    drop((v, tagged));
    0
}

/// Forks `FORKS` times while `activity` runs on its threads (`threads` copies of it) and the main
/// thread allocates at rate 1 in between; returns (children that failed their check, children
/// that hung and were ended by their alarm).
fn fork_against(name: &str, threads: usize, activity: fn(usize)) -> (usize, usize) {
    heapsight::set_unwinder(Unwinder::Auto);
    heapsight::set_sample_rate(1);
    STOP.store(false, SeqCst);
    let (mut failed, mut hung) = (0, 0);
    std::thread::scope(|s| {
        let _stop = StopOnDrop;
        for t in 0..threads {
            s.spawn(move || activity(t));
        }
        // Symbolize here what the children will sample (the same code, hence the same return
        // addresses, and the activity's stacks): a child then only resolves an address or two
        // of code whose debug info is already parsed, instead of parsing it again in each of the
        // 1,000 children.
        assert_eq!(
            child_work(usize::MAX),
            0,
            "the child's work fails in the parent"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(heapsight::profile());
        for round in 0..FORKS {
            black_box(vec![round as u8; 32 + round % 64]);
            // SAFETY: fork has no preconditions. The child sets its alarm, allocates, tags and
            // profiles (heapsight's locks were held across the fork by its handlers) and calls
            // `_exit`; it takes no std lock another thread may have held.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                // SAFETY: alarm and _exit have no preconditions.
                unsafe { libc::alarm(CHILD_ALARM_SECS) };
                let code = std::panic::catch_unwind(|| child_work(round)).unwrap_or(6);
                // SAFETY: as above.
                unsafe { libc::_exit(code) };
            }
            if std::env::var_os("HEAPSIGHT_TEST_PROGRESS").is_some() && round % 100 == 0 {
                eprintln!("{name}: {round} forks");
            }
            let mut status = 0;
            // SAFETY: our child; `status` is a valid out-pointer. The child's alarm bounds the
            // wait.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            assert_eq!(r, pid, "waitpid");
            if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGALRM {
                hung += 1;
            } else if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                eprintln!("{name}: round {round}: child status {status:#x}");
                failed += 1;
            }
        }
    });
    heapsight::set_sample_rate(0);
    (failed, hung)
}

fn intern_tags(_: usize) {
    let mut i = 0usize;
    while !STOP.load(SeqCst) {
        // New names until the table is full, then look-ups and overflow: the lock either way.
        black_box(heapsight::Tag::new(&format!("parent-{i}")));
        i += 1;
    }
}

fn symbolized_profiles(_: usize) {
    while !STOP.load(SeqCst) {
        black_box(heapsight::profile().sites().len());
    }
}

fn unsymbolized_profiles(_: usize) {
    while !STOP.load(SeqCst) {
        black_box(heapsight::profile_unsymbolized().sites().len());
    }
}

fn allocate_sampled(t: usize) {
    let mut i = t as u64;
    while !STOP.load(SeqCst) {
        support::on_distinct_stack(i, 6, &mut || {
            black_box(vec![0u8; 16 + (i % 256) as usize]);
        });
        i += 1;
    }
}

/// What runs during the forks: a name, how many threads, the thread body (given its index).
type Activity = (&'static str, usize, fn(usize));

fn fork_against_each_activity() {
    let activities: [Activity; 4] = [
        ("a thread interning tags", 1, intern_tags),
        (
            "a thread taking symbolized profiles",
            1,
            symbolized_profiles,
        ),
        (
            "a thread taking unsymbolized profiles",
            1,
            unsymbolized_profiles,
        ),
        ("four threads allocating at rate 1", 4, allocate_sampled),
    ];
    let mut bad = Vec::new();
    for (name, threads, f) in activities {
        let (failed, hung) = fork_against(name, threads, f);
        println!("  {FORKS} forks against {name}: {failed} failed, {hung} hung");
        if failed + hung > 0 {
            bad.push(format!("{name}: {failed} failed, {hung} hung"));
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}

fn main() {
    support::watchdog(600, "rel_fork");
    support::run(&[
        // First, while the site table is small: each of its 4,000 children builds a profile.
        ("fork_against_each_activity", fork_against_each_activity),
        (
            "fork_while_profiling_frame_pointers",
            fork_while_profiling_frame_pointers,
        ),
        ("fork_while_profiling_dwarf", fork_while_profiling_dwarf),
    ]);
}
