//! What the raised alignment of sampled blocks really costs in memory, per inner allocator.
//!
//! A sampled block under 64 KiB is asked of the inner allocator at a raised alignment (4 KiB at
//! the default rate; `src/filter.rs`), so that its free can be told by its address. The
//! allocator pays for that in padding, size-class rounding or an unreusable gap, depending on
//! how it serves aligned requests. This program measures it the only way that is true for every
//! allocator: the resident anonymous memory of a process that keeps `--live` bytes of blocks of
//! one size alive, with heapsight sampling at the given rate, against the same process with
//! sampling off (rate 0); minus the difference in heapsight's own tables (`profiler_bytes`).
//!
//! ```sh
//! cargo run --release -p heapsight-dev --example align_cost            # the table below
//! cargo run --release -p heapsight-dev --example align_cost -- 524288  # one rate
//! ```
//!
//! Each measurement is a child process of this binary (env `ALIGN_COST_CHILD`), whose global
//! allocator is `HeapSight<Switch>`: `Switch` forwards to glibc (`System`), mimalloc or jemalloc
//! as `ALIGN_COST_INNER` says, read once with `getenv` before the first allocation.
use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use heapsight::HeapSight;

/// The inner allocator, chosen by `ALIGN_COST_INNER` (`system`, `mimalloc`, `jemalloc`).
struct Switch;

static CHOICE: AtomicU8 = AtomicU8::new(0);

fn choice() -> u8 {
    let c = CHOICE.load(Relaxed);
    if c != 0 {
        return c;
    }
    // SAFETY: a NUL-terminated name; `getenv` does not allocate.
    let v = unsafe { libc::getenv(c"ALIGN_COST_INNER".as_ptr()) };
    let c = if v.is_null() {
        1
    } else {
        // SAFETY: `getenv` returned a NUL-terminated string.
        match unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes() {
            b"mimalloc" => 2,
            b"jemalloc" => 3,
            _ => 1,
        }
    };
    CHOICE.store(c, Relaxed);
    c
}

// SAFETY: every call goes to one allocator, the same for the whole process (chosen before the
// first allocation and never changed), with the caller's arguments.
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's layout.
        unsafe {
            match choice() {
                2 => mimalloc::MiMalloc.alloc(l),
                3 => tikv_jemallocator::Jemalloc.alloc(l),
                _ => System.alloc(l),
            }
        }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's layout.
        unsafe {
            match choice() {
                2 => mimalloc::MiMalloc.alloc_zeroed(l),
                3 => tikv_jemallocator::Jemalloc.alloc_zeroed(l),
                _ => System.alloc_zeroed(l),
            }
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: allocated by the same allocator with `l` (the caller's guarantee).
        unsafe {
            match choice() {
                2 => mimalloc::MiMalloc.dealloc(p, l),
                3 => tikv_jemallocator::Jemalloc.dealloc(p, l),
                _ => System.dealloc(p, l),
            }
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: the caller's block, layout and size.
        unsafe {
            match choice() {
                2 => mimalloc::MiMalloc.realloc(p, l, n),
                3 => tikv_jemallocator::Jemalloc.realloc(p, l, n),
                _ => System.realloc(p, l, n),
            }
        }
    }
}

#[global_allocator]
static GLOBAL: HeapSight<Switch> = HeapSight::new(Switch);

/// Resident anonymous memory of this process, bytes (`RssAnon` in /proc/self/status).
fn rss_anon() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// The child: keeps `live` bytes of `size`-byte blocks alive at `rate`, prints
/// `samples rss_delta profiler_delta raised_live`.
fn child(size: usize, live: usize, rate: u64) {
    heapsight::set_sampling_seed(42);
    heapsight::set_sample_rate(rate);
    let n = live / size;
    let mut blocks: Vec<*mut u8> = Vec::with_capacity(n);
    let layout = Layout::from_size_align(size, 8).unwrap();
    let s0 = heapsight::stats();
    let r0 = rss_anon();
    for _ in 0..n {
        // SAFETY: a nonzero size.
        let p = unsafe { std::alloc::alloc(layout) };
        assert!(!p.is_null());
        // Touch it, as a program does.
        // SAFETY: valid for `size` bytes.
        unsafe { p.write_bytes(1, size) };
        blocks.push(p);
    }
    let r1 = rss_anon();
    let s1 = heapsight::stats();
    println!(
        "{} {} {}",
        s1.samples - s0.samples,
        r1 as i64 - r0 as i64,
        s1.profiler_bytes as i64 - s0.profiler_bytes as i64,
    );
    for p in blocks {
        // SAFETY: allocated above with `layout`.
        unsafe { std::alloc::dealloc(p, layout) };
    }
}

fn run(inner: &str, size: usize, live: usize, rate: u64) -> (u64, i64, i64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("ALIGN_COST_CHILD", format!("{size} {live} {rate}"))
        .env("ALIGN_COST_INNER", inner)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    let v: Vec<i64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[0] as u64, v[1], v[2])
}

fn main() {
    if let Ok(args) = std::env::var("ALIGN_COST_CHILD") {
        let v: Vec<u64> = args.split(' ').map(|x| x.parse().unwrap()).collect();
        child(v[0] as usize, v[1] as usize, v[2]);
        return;
    }
    let rates: Vec<u64> = match std::env::args().nth(1) {
        Some(r) => vec![r.parse().unwrap()],
        None => vec![512 * 1024, 64 * 1024],
    };
    let live = 256 << 20;
    println!(
        "live {} MiB of one block size; cost = (RssAnon at rate R - at rate 0) - (profiler_bytes \
         at R - at 0); three runs each: median (min-max per sample)",
        live >> 20
    );
    println!(
        "{:<9} {:>6} {:>8} {:>8} {:>12} {:>24} {:>10}",
        "inner", "size", "rate", "samples", "cost", "per sample", "of bytes"
    );
    for rate in rates {
        for inner in ["system", "mimalloc", "jemalloc"] {
            for size in [24, 1000, 5000] {
                let mut costs = Vec::new();
                let mut samples = 0;
                for _ in 0..3 {
                    let (_, rss0, prof0) = run(inner, size, live, 0);
                    let (n, rss, prof) = run(inner, size, live, rate);
                    samples = n;
                    costs.push((rss - rss0) - (prof - prof0));
                }
                costs.sort();
                let cost = costs[1];
                let per = |c: i64| c / samples.max(1) as i64;
                let spread = format!("{} B ({}-{})", per(cost), per(costs[0]), per(costs[2]));
                println!(
                    "{inner:<9} {size:>6} {rate:>8} {samples:>8} {:>8} KiB {spread:>24} {:>9.2}%",
                    cost / 1024,
                    100.0 * cost as f64 / live as f64,
                );
            }
        }
    }
}
