//! Allocation kernels for the entry-point benchmark. Each is `#[inline(never)]` and allocates
//! through `std::alloc::{alloc, dealloc, realloc, alloc_zeroed}`, which call the `__rust_*`
//! symbols: the allocator is in another crate (the binary), so none of it is inlined here.
//! `callgrind.py` counts the instructions inside one kernel at two iteration counts and divides
//! the difference by the difference of the counts (start-up and first-call costs cancel).
use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::hint::black_box;

fn layout(size: usize) -> Layout {
    // A run-time size and alignment, as behind `__rust_alloc(size, align)` in real callers.
    Layout::from_size_align(black_box(size), black_box(8)).unwrap()
}

/// `n` × (alloc 32 B, free it): the same block, everything in L1.
#[inline(never)]
pub fn kernel_pair(n: u64) {
    let l = layout(32);
    for _ in 0..n {
        // SAFETY: non-zero size; freed with its layout.
        unsafe {
            let p = alloc(l);
            black_box(p);
            dealloc(p, l);
        }
    }
}

/// `n` × (alloc 4 KiB, free it): with 4 KiB per pair the countdown expires often (every ~128
/// pairs at the default rate, 256 at rate 0), so the flush's cost is in the slope.
#[inline(never)]
pub fn kernel_pair4k(n: u64) {
    let l = layout(4096);
    for _ in 0..n {
        // SAFETY: non-zero size; freed with its layout.
        unsafe {
            let p = alloc(l);
            black_box(p);
            dealloc(p, l);
        }
    }
}

/// Starts `k` threads that allocate once (so each owns a counter slot) and then sleep until the
/// process exits: the idle threads of a thread-per-connection server or a blocking pool.
pub fn idle_threads(k: usize) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    for _ in 0..k {
        let tx = tx.clone();
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                black_box(Box::new(1u64));
                tx.send(()).unwrap();
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
    }
    for _ in 0..k {
        rx.recv().unwrap();
    }
}

/// `n` × (alloc_zeroed 32 B, free it).
#[inline(never)]
pub fn kernel_zeroed(n: u64) {
    let l = layout(32);
    for _ in 0..n {
        // SAFETY: as above.
        unsafe {
            let p = alloc_zeroed(l);
            black_box(p);
            dealloc(p, l);
        }
    }
}

/// `n` × (alloc 32 B, realloc to 64 B, free): one more call than `kernel_pair`, so the
/// difference of the two per-iteration counts is the cost of one `realloc`.
#[inline(never)]
pub fn kernel_realloc(n: u64) {
    let l = layout(32);
    for _ in 0..n {
        // SAFETY: as above; the reallocated block is freed with its new size.
        unsafe {
            let p = alloc(l);
            black_box(p);
            let q = realloc(p, l, black_box(64));
            black_box(q);
            dealloc(q, Layout::from_size_align_unchecked(64, 8));
        }
    }
}

/// Live blocks kept by `kernel_churn`.
pub const CHURN_LIVE: usize = 20_000;

/// A heap in steady state: `CHURN_LIVE` live blocks of 16..=1024 bytes; each of `n` steps frees
/// the oldest and allocates a new one, so frees see addresses spread over a few MiB (as a real
/// heap does) instead of one block that stays in L1.
#[inline(never)]
pub fn kernel_churn(ring: &mut [(usize, usize)], n: u64) {
    let mut i = 0usize;
    let mut x = 0x9E37_79B9u32;
    for _ in 0..n {
        let (p, size) = ring[i];
        // SAFETY: `p` came from `alloc` with `size` (set up by `churn_ring` or a previous step).
        unsafe { dealloc(p as *mut u8, Layout::from_size_align_unchecked(size, 8)) };
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let size = 16 + (x as usize % 1009);
        // SAFETY: non-zero size.
        let p = unsafe { alloc(Layout::from_size_align_unchecked(size, 8)) };
        ring[i] = (black_box(p) as usize, size);
        i += 1;
        if i == ring.len() {
            i = 0;
        }
    }
}

/// Fills the churn ring (outside the measured kernel).
pub fn churn_ring() -> Vec<(usize, usize)> {
    (0..CHURN_LIVE)
        .map(|k| {
            let size = 16 + (k * 7919) % 1009;
            // SAFETY: non-zero size.
            (
                unsafe { alloc(Layout::from_size_align(size, 8).unwrap()) } as usize,
                size,
            )
        })
        .collect()
}

/// `n` × (build a `Vec<u64>` by 64 pushes from empty, drop it): one allocation, four reallocs
/// (4 → 8 → 16 → 32 → 64 elements: 32 B to 512 B) and one free, so 6 allocator calls per
/// iteration ([`VEC_CALLS`]).
#[inline(never)]
pub fn kernel_vec(n: u64) {
    for _ in 0..n {
        let mut v: Vec<u64> = Vec::new();
        for i in 0..black_box(64u64) {
            v.push(i);
        }
        black_box(&v);
    }
}

/// Allocator calls per `kernel_vec` iteration.
pub const VEC_CALLS: u64 = 6;

#[path = "../../benches/kernels/nested.rs"]
mod nested;

/// `n` × the seed workload at a tenth of its size: `HashMap<String, Vec<String>>`, 50,000
/// appends over 1,000 keys, built and dropped (dev/benches/kernels/nested.rs, the code the
/// real-workload benchmark runs at 500k appends).
#[inline(never)]
pub fn kernel_seed(n: u64) {
    for _ in 0..n {
        black_box(nested::build_unsized(50_000, 1_000));
    }
}

/// Bytes allocated by the warm-up of each kernel: 8 MiB, about 16 samples at the default rate
/// (512 KiB), all freed again before the measured loop starts (except `churn`'s, whose ring
/// keeps up to 20,000 blocks live and frees each sample `CHURN_LIVE` steps after it is taken).
/// The measured loop therefore runs on a heap that has taken and freed samples, as a program's
/// does after its first seconds, not in a fresh process.
const WARM_BYTES: u64 = 8 << 20;

/// Runs `kernel` for `WARM_BYTES / bytes_per_iteration` iterations, then for `n`. Both calls are
/// inside the counted function, so the warm-up is in both counts of the slope and cancels.
fn warm_then(bytes_per_iteration: u64, n: u64, kernel: impl Fn(u64)) {
    kernel(WARM_BYTES / bytes_per_iteration + 1);
    kernel(n);
}

/// `main` of every binary: `BIN KERNEL N` runs kernel KERNEL N times after a warm-up that takes
/// and frees samples ([`WARM_BYTES`]), after starting `ENTRY_IDLE_THREADS` idle threads
/// (default 0). `ENTRY_NO_WARMUP=1` runs one warm-up iteration instead (a fresh process).
pub fn run() {
    let args: Vec<String> = std::env::args().collect();
    let kernel = args.get(1).map(String::as_str).unwrap_or("pair");
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let idle: usize = std::env::var("ENTRY_IDLE_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let fresh = std::env::var_os("ENTRY_NO_WARMUP").is_some();
    idle_threads(idle);
    let warm = |bytes: u64| if fresh { WARM_BYTES } else { bytes };
    match kernel {
        "pair4k" => warm_then(warm(4096), n, kernel_pair4k),
        "pair" => warm_then(warm(32), n, kernel_pair),
        "zeroed" => warm_then(warm(32), n, kernel_zeroed),
        "realloc" => warm_then(warm(96), n, kernel_realloc),
        "vec" => warm_then(warm(32 + 64 + 128 + 256 + 512), n, kernel_vec),
        "seed" => warm_then(warm(4 << 20), n, kernel_seed),
        "churn" => {
            let mut ring = churn_ring();
            // Average block ~520 B; at least one full turn of the ring, so every block of the
            // measured loop replaces one allocated by the kernel.
            let steps = if fresh {
                CHURN_LIVE as u64
            } else {
                (WARM_BYTES / 520).max(CHURN_LIVE as u64)
            };
            kernel_churn(&mut ring, steps);
            kernel_churn(&mut ring, n);
            black_box(&ring);
        }
        other => {
            eprintln!("unknown kernel {other}: pair, zeroed, realloc, vec, seed or churn");
            std::process::exit(2);
        }
    }
}

/// `main` of the binaries that run heapsight with sampling off (counters only).
pub fn run_rate0() {
    heapsight::set_sample_rate(0);
    run()
}

/// `main` of the binaries that run heapsight at the default rate (512 KiB), with a fixed seed:
/// which allocations are sampled, and so where the inner allocator puts them, is the same in
/// every run (the counts are repeatable to the instruction).
pub fn run_default() {
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    heapsight::set_sampling_seed(42);
    run()
}
