//! Guarantees 2 and 3: no deadlock and no drift under concurrent load.
//!
//! Four threads do 10^6 mixed operations in total (allocate, allocate zeroed, grow and shrink in
//! place or by moving (realloc), free, and hand blocks to each other to free) with every
//! allocation sampled (rate 1), while one thread takes profiles (symbolized and not) and reads
//! `stats()` in a loop and another keeps changing the sample rate. The run is repeated with the
//! DWARF unwinder forced. A watchdog aborts the process if it has not finished after 120 s (a
//! hang detector, not a timing assertion). Afterwards the exact counters are back at the
//! baseline and every site of the workload shows zero in use.
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;

use heapsight::{HeapSight, Unwinder};

mod support;
use support::{assert_back_to, assert_sites_freed, exact, Rng};

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

const OPS: usize = 1_000_000;
const WORKERS: usize = 4;
/// Blocks one worker holds at most; blocks waiting in the exchange at most.
const POOL: usize = 256;
const EXCHANGE: usize = 1024;

static STOP: AtomicBool = AtomicBool::new(false);
static PROFILES: AtomicU64 = AtomicU64::new(0);
static RATE_CHANGES: AtomicU64 = AtomicU64::new(0);

fn size(rng: &mut Rng) -> usize {
    if rng.below(64) == 0 {
        64 * 1024 + rng.below(4096) as usize
    } else {
        1 + rng.below(2048) as usize
    }
}

#[inline(never)]
fn stress_worker(id: u64, ops: usize, exchange: &Mutex<Vec<Vec<u8>>>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut pool: Vec<Vec<u8>> = Vec::with_capacity(POOL);
    for _ in 0..ops {
        let op = rng.below(16);
        match op {
            // Allocate (plain or zeroed).
            0..=4 if pool.len() < POOL => {
                let n = size(&mut rng);
                let v = if op % 2 == 0 {
                    vec![0u8; n]
                } else {
                    Vec::with_capacity(n)
                };
                pool.push(black_box(v));
            }
            // Grow or shrink: realloc.
            5..=8 if !pool.is_empty() => {
                let i = rng.below(pool.len() as u64) as usize;
                let v = &mut pool[i];
                if rng.below(2) == 0 {
                    v.reserve_exact(v.capacity() + size(&mut rng));
                } else {
                    v.truncate(v.capacity() / 2);
                    v.shrink_to(v.capacity() / 2);
                }
                black_box(v.as_ptr());
            }
            // Hand a block to another thread.
            9..=10 if !pool.is_empty() => {
                let v = pool.swap_remove(rng.below(pool.len() as u64) as usize);
                let mut x = exchange.lock().unwrap();
                if x.len() < EXCHANGE {
                    x.push(v);
                }
            }
            // Free a block another thread allocated.
            11..=12 => {
                let v = exchange.lock().unwrap().pop();
                drop(black_box(v));
            }
            // Free one of ours.
            _ if !pool.is_empty() => {
                drop(pool.swap_remove(rng.below(pool.len() as u64) as usize));
            }
            _ => {}
        }
    }
}

/// Takes profiles, writes them with every encoder and reads stats until told to stop; at least
/// once.
fn profiler_loop() {
    let mut out = Vec::new();
    loop {
        let p = heapsight::profile();
        let mut frames = 0usize;
        for s in p.sites() {
            frames += s.frames().len();
            for f in s.frames() {
                black_box(f.function().map(str::len));
            }
            black_box((s.alloc_bytes, s.inuse_bytes, s.overflow));
        }
        black_box(frames);
        // Every encoder, into a reused buffer, while the workers allocate at rate 1.
        for write in [
            |p: &heapsight::HeapProfile, b: &mut Vec<u8>| p.write_pprof(b),
            |p: &heapsight::HeapProfile, b: &mut Vec<u8>| p.write_text(b),
            |p: &heapsight::HeapProfile, b: &mut Vec<u8>| {
                p.write_folded(b, heapsight::SampleType::InuseSpace)
            },
        ] {
            out.clear();
            write(&p, &mut out).expect("encoding into a Vec cannot fail");
            assert!(!out.is_empty());
        }
        black_box(p.top(10, heapsight::SampleType::AllocSpace).to_string());
        drop(p);
        black_box(heapsight::stats());
        drop(heapsight::profile_unsymbolized());
        PROFILES.fetch_add(1, SeqCst);
        if STOP.load(SeqCst) {
            break;
        }
    }
}

fn rate_changer() {
    // Mostly 1 (every allocation sampled), with every kind of change in between.
    const RATES: [u64; 9] = [1, 0, 1, 64, 1, 4096, 1, 512 * 1024, 1];
    let mut i = 0;
    while !STOP.load(SeqCst) {
        let rate = RATES[i % RATES.len()];
        heapsight::set_sample_rate(rate);
        RATE_CHANGES.fetch_add(1, SeqCst);
        i += 1;
        // Other threads switch at their next sample, so a short spell at a large rate (or 0)
        // already leaves them sampling rarely for a while: stay at 1 the longest.
        let ms = if rate == 1 { 5 } else { 1 };
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    heapsight::set_sample_rate(1);
}

fn stress(unwinder: Unwinder) {
    heapsight::set_unwinder(unwinder);
    heapsight::set_sample_rate(1);
    STOP.store(false, SeqCst);
    let dwarf0 = heapsight::stats().dwarf_captures;
    let samples0 = heapsight::stats().samples;
    let base = exact();
    let exchange = Mutex::new(Vec::with_capacity(EXCHANGE));
    std::thread::scope(|s| {
        let profiler = s.spawn(profiler_loop);
        let rates = s.spawn(rate_changer);
        let workers: Vec<_> = (0..WORKERS as u64)
            .map(|id| {
                let exchange = &exchange;
                s.spawn(move || stress_worker(id, OPS / WORKERS, exchange))
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        STOP.store(true, SeqCst);
        profiler.join().unwrap();
        rates.join().unwrap();
    });
    drop(exchange);
    heapsight::set_sample_rate(1);
    assert_back_to(base, "after the stress run");
    let p = heapsight::profile();
    assert!(
        assert_sites_freed(&p, "stress_worker") >= 1,
        "the workload was never sampled"
    );
    drop(p);
    let dwarf = heapsight::stats().dwarf_captures - dwarf0;
    let samples = heapsight::stats().samples - samples0;
    if unwinder == Unwinder::Dwarf {
        assert!(dwarf > 0, "the DWARF unwinder was forced but never used");
    }
    println!(
        "  ({unwinder:?}: {samples} samples, {dwarf} by DWARF, {} profiles, {} rate changes)",
        PROFILES.swap(0, SeqCst),
        RATE_CHANGES.swap(0, SeqCst)
    );
    heapsight::set_unwinder(Unwinder::Auto);
}

fn no_deadlock_no_drift_frame_pointers() {
    stress(Unwinder::Auto)
}

fn no_deadlock_no_drift_dwarf() {
    stress(Unwinder::Dwarf)
}

fn main() {
    support::watchdog(120, "rel_stress");
    support::run(&[
        (
            "no_deadlock_no_drift_frame_pointers",
            no_deadlock_no_drift_frame_pointers,
        ),
        ("no_deadlock_no_drift_dwarf", no_deadlock_no_drift_dwarf),
    ]);
}
