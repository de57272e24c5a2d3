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

/// `main` of every binary: `BIN KERNEL N` runs kernel KERNEL N times (after one warm-up step,
/// which initialises the thread and the allocator outside the count), after starting
/// `ENTRY_IDLE_THREADS` idle threads (default 0).
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
    idle_threads(idle);
    match kernel {
        "pair4k" => {
            kernel_pair4k(1);
            kernel_pair4k(n)
        }
        "pair" => {
            kernel_pair(1);
            kernel_pair(n)
        }
        "zeroed" => {
            kernel_zeroed(1);
            kernel_zeroed(n)
        }
        "realloc" => {
            kernel_realloc(1);
            kernel_realloc(n)
        }
        "churn" => {
            let mut ring = churn_ring();
            kernel_churn(&mut ring, CHURN_LIVE as u64);
            kernel_churn(&mut ring, n);
            black_box(&ring);
        }
        other => {
            eprintln!("unknown kernel {other}: pair, zeroed, realloc or churn");
            std::process::exit(2);
        }
    }
}
