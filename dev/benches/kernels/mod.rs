//! Allocator kernels shared by every `benches/alloc_*.rs` binary.
//!
//! A process has exactly one `#[global_allocator]`, so each allocator configuration is its own
//! bench binary; they all `mod kernels;` this file, so every configuration runs the same code.
//! `benches/compare.py` runs all binaries in one go and turns criterion's estimates into the ratio
//! table. Criterion layout: one group per kernel (`pair_32B_1t`, ...), one function id per
//! configuration (`system`, `hs_system_r512k`, ...), so results land in
//! `target/criterion/<kernel>/<configuration>/new/estimates.json`.
//!
//! Kernels are ported from mimalloc-bench (github.com/daanx/mimalloc-bench):
//!
//! | kernel        | after                     | what one iteration is                              |
//! |---------------|---------------------------|----------------------------------------------------|
//! | `pair_*`      | glibc-simple              | one alloc + free of a fixed size                   |
//! | `batch_*`     | glibc-simple              | 1,000 allocs of 64 B, then 1,000 frees (per block) |
//! | `larson_*`    | larson                    | free a random slot of 1,024, alloc 16..1,024 B     |
//! | `xfree_2t`    | xmalloc-test              | one 64 B block allocated on A and freed on B       |
//! | `churn_*`     | mstress                   | a thread is born, does 256 larson ops on blocks    |
//! |               |                           | inherited from the previous thread, and exits      |
//! | `realloc_*`   | (Vec/String growth)       | 16 B grown by 16 B steps to 4 KiB (255 reallocs)   |
//! | `large_*`     | malloc-large              | free a random slot of 8, alloc 256 KiB..4 MiB      |
//! | `nested_*`    | the Go article's workload | build + drop `HashMap<String, Vec<String>>`        |
//!
//! `_2t` kernels run the same loop on two threads at once; the time reported is wall time per
//! iteration *per thread* (each thread does `iters` iterations).
#![allow(dead_code)]

pub mod nested;

use std::alloc::{alloc, dealloc, realloc, Layout};
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};

/// One allocator configuration inside a bench binary: its id in the tables and what to switch
/// before its measurements (heapsight's rate and unwinder can change at run time).
pub struct Variant {
    pub id: &'static str,
    pub setup: fn(),
    /// Kernels this configuration skips (rate 1 samples every allocation: the 500k-append
    /// workload would take ~40 s per configuration).
    pub skip: &'static [&'static str],
}

impl Variant {
    pub const fn plain(id: &'static str) -> Self {
        Variant {
            id,
            setup: || {},
            skip: &[],
        }
    }
}

/// Which kernels a binary runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Everything.
    Full,
    /// For dhat (~100x slower): skip the 500k-append nested-map workload, keep its 50k version.
    Small,
}

/// Criterion with short defaults so the whole comparison fits in ~15 minutes on two cores;
/// command-line flags (`--warm-up-time`, `--measurement-time`, a filter) still override them.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

type Kernel = fn(u64) -> Duration;

/// (group name, kernel, slow: few flat samples instead of 100 linear ones).
fn kernels(scale: Scale) -> Vec<(&'static str, Kernel, bool)> {
    let mut v: Vec<(&'static str, Kernel, bool)> = vec![
        ("pair_16B_1t", |n| timed(n, || pairs(n, 16)), false),
        ("pair_32B_1t", |n| timed(n, || pairs(n, 32)), false),
        ("pair_64B_1t", |n| timed(n, || pairs(n, 64)), false),
        ("pair_256B_1t", |n| timed(n, || pairs(n, 256)), false),
        ("pair_4096B_1t", |n| timed(n, || pairs(n, 4096)), false),
        ("pair_32B_2t", |n| on_threads(2, n, |n| pairs(n, 32)), false),
        ("batch_64B_1t", |n| timed(n, || batches(n)), false),
        ("batch_64B_2t", |n| on_threads(2, n, batches), false),
        ("larson_1t", |n| timed(n, || larson_alone(n)), false),
        ("larson_2t", larson_shared, false),
        ("xfree_2t", xfree, false),
        ("churn_1t", |n| churn(1, n), false),
        ("churn_2t", |n| churn(2, n), false),
        ("realloc_1t", |n| timed(n, || regrow(n)), false),
        ("realloc_2t", |n| on_threads(2, n, regrow), false),
        ("large_1t", |n| timed(n, || large(n)), false),
        ("large_2t", |n| on_threads(2, n, large), false),
        (
            "nested_50k",
            |n| timed(n, || nested_run(n, 50_000, 1_000)),
            true,
        ),
    ];
    if scale == Scale::Full {
        v.push((
            "nested_500k",
            |n| timed(n, || nested_run(n, 500_000, 10_000)),
            true,
        ));
    }
    v
}

/// Runs every kernel under every variant, kernel-major so that the configurations of one
/// kernel are measured back to back.
pub fn run_all(c: &mut Criterion, variants: &[Variant], scale: Scale) {
    for (name, kernel, slow) in kernels(scale) {
        let mut g = c.benchmark_group(name);
        if slow {
            g.sample_size(10).sampling_mode(SamplingMode::Flat);
        }
        for v in variants.iter().filter(|v| !v.skip.contains(&name)) {
            (v.setup)();
            g.bench_function(v.id, |b| b.iter_custom(kernel));
        }
        g.finish();
    }
}

/// Runs only the one-thread pair kernels (the sampled-path latency at rate 1, e.g. with DWARF).
pub fn run_pairs(c: &mut Criterion, variants: &[Variant]) {
    for (name, kernel, _) in kernels(Scale::Small)
        .into_iter()
        .filter(|k| k.0.starts_with("pair_32B_1t"))
    {
        let mut g = c.benchmark_group(name);
        for v in variants {
            (v.setup)();
            g.bench_function(v.id, |b| b.iter_custom(kernel));
        }
        g.finish();
    }
}

fn timed(_n: u64, f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// Runs `f(iters)` on `n` threads at once and returns the wall time from a common start to the
/// last finish. Thread creation and each thread's first allocation happen before the start line.
fn on_threads(n: usize, iters: u64, f: fn(u64)) -> Duration {
    let start = Barrier::new(n + 1);
    let end = Barrier::new(n + 1);
    std::thread::scope(|s| {
        for _ in 0..n {
            s.spawn(|| {
                black_box(Box::new(0u64));
                start.wait();
                f(iters);
                end.wait();
            });
        }
        start.wait();
        let t = Instant::now();
        end.wait();
        t.elapsed()
    })
}

/// xorshift64: the kernels' size and slot choices, identical in every configuration.
#[inline(always)]
fn rnd(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

// The kernels call `std::alloc::{alloc, dealloc, realloc}`, i.e. `__rust_alloc` & co, which is
// exactly the path `Box`, `Vec` and `String` take to the global allocator.

#[inline(never)]
pub fn pairs(n: u64, size: usize) {
    let l = layout(size);
    for _ in 0..n {
        // SAFETY: `l` has non-zero size; the block is freed with the layout it was allocated with.
        unsafe {
            let p = alloc(l);
            black_box(p);
            dealloc(p, l);
        }
    }
}

const BATCH: usize = 1000;

/// glibc-simple's batch: allocate 1,000 blocks, then free them all; `n` counts blocks.
fn batches(n: u64) {
    let l = layout(64);
    let mut ptrs = [std::ptr::null_mut::<u8>(); BATCH];
    let mut left = n as usize;
    while left > 0 {
        let k = left.min(BATCH);
        for p in &mut ptrs[..k] {
            // SAFETY: non-zero layout.
            *p = unsafe { alloc(l) };
        }
        black_box(&mut ptrs);
        for &p in &ptrs[..k] {
            // SAFETY: allocated just above with `l`.
            unsafe { dealloc(p, l) };
        }
        left -= k;
    }
}

const SLOTS: usize = 1024;

/// Blocks with their sizes, for the larson-style kernels.
struct Slots(Vec<(usize, usize)>);
// SAFETY: the pointers are plain heap blocks owned by this value; any thread may free them.
unsafe impl Send for Slots {}

impl Slots {
    fn new(n: usize, seed: u64) -> Slots {
        let mut s = seed;
        Slots(
            (0..n)
                .map(|_| {
                    let size = small_size(&mut s);
                    // SAFETY: non-zero layout.
                    (unsafe { alloc(layout(size)) } as usize, size)
                })
                .collect(),
        )
    }

    /// `ops` times: free a random slot, allocate a random 16..1,024 B block into it.
    #[inline(never)]
    fn churn(&mut self, ops: u64, rng: &mut u64) {
        for _ in 0..ops {
            let i = (rnd(rng) % self.0.len() as u64) as usize;
            let (p, size) = self.0[i];
            // SAFETY: every slot holds a live block allocated with `layout(size)`.
            unsafe { dealloc(p as *mut u8, layout(size)) };
            let size = small_size(rng);
            // SAFETY: non-zero layout.
            self.0[i] = (unsafe { alloc(layout(size)) } as usize, size);
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        for &(p, size) in &self.0 {
            // SAFETY: every slot holds a live block allocated with `layout(size)`.
            unsafe { dealloc(p as *mut u8, layout(size)) };
        }
    }
}

fn small_size(s: &mut u64) -> usize {
    ((rnd(s) % 64) as usize + 1) * 16
}

fn larson_alone(n: u64) {
    let mut slots = Slots::new(SLOTS, 0x1234_5678);
    let mut rng = 0x9E37_79B9;
    slots.churn(n, &mut rng);
}

/// larson on two threads: each works a slot array for 256 operations, then puts it in a shared
/// queue and takes the oldest one there, so arrays (and the frees of their blocks) travel between
/// the threads.
fn larson_shared(n: u64) -> Duration {
    static POOL: Mutex<VecDeque<Slots>> = Mutex::new(VecDeque::new());
    {
        let mut pool = POOL.lock().unwrap();
        pool.clear();
        pool.extend((0..3).map(|i| Slots::new(SLOTS, 7 + i)));
    }
    let d = on_threads(2, n, |n| {
        let mut rng = black_box(&0u64) as *const u64 as u64 | 1;
        let mut mine = POOL.lock().unwrap().pop_front().unwrap();
        let mut left = n;
        while left > 0 {
            let k = left.min(256);
            mine.churn(k, &mut rng);
            left -= k;
            let mut pool = POOL.lock().unwrap();
            pool.push_back(mine);
            mine = pool.pop_front().unwrap();
        }
        POOL.lock().unwrap().push_back(mine);
    });
    POOL.lock().unwrap().clear();
    d
}

/// xmalloc-test: thread A allocates 64 B blocks and hands them over in batches of 256 through a
/// channel; thread B frees them. `n` counts blocks.
fn xfree(n: u64) -> Duration {
    struct Batch(Vec<usize>);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(64);
    let start = Barrier::new(3);
    let l = layout(64);
    std::thread::scope(|s| {
        let start = &start;
        let producer = s.spawn(move || {
            black_box(Box::new(0u64));
            start.wait();
            let mut left = n as usize;
            while left > 0 {
                let k = left.min(256);
                // SAFETY: non-zero layout.
                let b: Vec<usize> = (0..k).map(|_| unsafe { alloc(l) } as usize).collect();
                tx.send(Batch(b)).unwrap();
                left -= k;
            }
        });
        let consumer = s.spawn(move || {
            black_box(Box::new(0u64));
            start.wait();
            for b in rx {
                for p in b.0 {
                    // SAFETY: allocated by the producer with `l`, handed over exactly once.
                    unsafe { dealloc(p as *mut u8, l) };
                }
            }
        });
        start.wait();
        let t = Instant::now();
        producer.join().unwrap();
        consumer.join().unwrap();
        t.elapsed()
    })
}

/// mstress: `n` generations of `chains` threads each. A thread inherits the slot array of the
/// previous generation (so it frees blocks another, dead thread allocated), does 256 larson
/// operations on it and exits. Per iteration: one thread lifetime per chain.
fn churn(chains: usize, n: u64) -> Duration {
    let mut arrays: Vec<Option<Slots>> = (0..chains)
        .map(|i| Some(Slots::new(128, 11 + i as u64)))
        .collect();
    let t = Instant::now();
    for g in 0..n {
        let handles: Vec<_> = arrays
            .iter_mut()
            .map(|a| {
                let mut slots = a.take().unwrap();
                std::thread::spawn(move || {
                    let mut rng = g * 2 + 1;
                    slots.churn(256, &mut rng);
                    slots
                })
            })
            .collect();
        for (a, h) in arrays.iter_mut().zip(handles) {
            *a = Some(h.join().unwrap());
        }
    }
    let d = t.elapsed();
    drop(arrays);
    d
}

/// Growth by realloc, as `Vec`/`String` growth without doubling would do: 16 B to 4 KiB in 16 B
/// steps (255 reallocs), then free.
fn regrow(n: u64) {
    for _ in 0..n {
        // SAFETY: each realloc gets the block and layout the previous call returned; the final
        // block is freed with its final layout.
        unsafe {
            let mut p = alloc(layout(16));
            let mut size = 16;
            while size < 4096 {
                p = realloc(p, layout(size), size + 16);
                size += 16;
                black_box(p);
            }
            dealloc(p, layout(size));
        }
    }
}

/// malloc-large: 8 live blocks of 256 KiB..4 MiB; each iteration frees a random one and
/// allocates a new one of random size, touching its first byte. At the default 512 KiB rate
/// nearly every one of these is sampled.
fn large(n: u64) {
    let mut rng = black_box(&0u8) as *const u8 as u64 | 1;
    let size_of = |rng: &mut u64| ((rnd(rng) % 16) as usize + 1) * 256 * 1024;
    let mut live: Vec<(usize, usize)> = Vec::with_capacity(8);
    for _ in 0..8 {
        let s = size_of(&mut rng);
        // SAFETY: non-zero layout.
        live.push((unsafe { alloc(layout(s)) } as usize, s));
    }
    for _ in 0..n {
        let i = (rnd(&mut rng) % 8) as usize;
        let (p, s) = live[i];
        // SAFETY: a live block allocated with `layout(s)`.
        unsafe { dealloc(p as *mut u8, layout(s)) };
        let s = size_of(&mut rng);
        // SAFETY: non-zero layout; the first byte is inside the new block.
        let p = unsafe {
            let p = alloc(layout(s));
            p.write_volatile(1);
            p
        };
        live[i] = (p as usize, s);
    }
    for (p, s) in live {
        // SAFETY: live blocks allocated with `layout(s)`.
        unsafe { dealloc(p as *mut u8, layout(s)) };
    }
}

fn nested_run(n: u64, appends: usize, keys: usize) {
    for _ in 0..n {
        black_box(nested::build_unsized(appends, keys));
    }
}

/// After the measurements: the profiler's own memory on the nested-map workload (500k appends
/// over 10k keys, kept live), next to the heap it profiles, at the rate in force. Printed, and
/// written to `target/criterion/profiler_memory_<id>.json` for `compare.py`. Only meaningful in
/// the binaries whose global allocator is heapsight.
pub fn profiler_memory_report(id: &str) {
    let before = heapsight::stats();
    let map = nested::build_unsized(500_000, 10_000);
    let s = heapsight::stats();
    let p = heapsight::profile();
    let after = heapsight::stats();
    let json = format!(
        "{{\"id\":\"{id}\",\"rate\":{},\"heap_inuse_bytes\":{},\"heap_peak_bytes\":{},\
         \"samples\":{},\"sites\":{},\"live_samples\":{},\"profiler_bytes_before_profile\":{},\
         \"profiler_bytes\":{},\"symbol_cache_bytes\":{}}}",
        s.sample_rate,
        s.inuse_bytes - before.inuse_bytes,
        s.peak_inuse_bytes,
        s.samples - before.samples,
        p.sites().len(),
        p.live_samples(),
        s.profiler_bytes,
        after.profiler_bytes,
        p.symbol_cache_bytes(),
    );
    drop(p);
    drop(map);
    let dir = std::env::var("CRITERION_HOME").unwrap_or_else(|_| "target/criterion".into());
    let _ = std::fs::create_dir_all(&dir);
    let path = format!("{dir}/profiler_memory_{id}.json");
    std::fs::write(&path, &json).expect("write profiler memory report");
    println!("profiler memory ({id}): {json}");
}
