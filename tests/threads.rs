//! Threads: cross-thread frees and short-lived threads leave the counters exactly at baseline,
//! and counter slots of exited threads are reused.
use std::sync::mpsc;
use std::thread;

use heapsight::HeapSight;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

mod support;

fn assert_back_to(base: &heapsight::Stats) {
    let now = heapsight::stats();
    assert_eq!(now.inuse_objects, now.alloc_objects - now.free_objects);
    assert_eq!(now.inuse_bytes, now.alloc_bytes - now.free_bytes);
    assert_eq!(
        (now.inuse_objects, now.inuse_bytes),
        (base.inuse_objects, base.inuse_bytes),
        "in-use did not return to baseline"
    );
}

/// Four producers allocate blocks of varied sizes; each sends half of them to the next thread,
/// which frees them: every thread frees blocks it did not allocate.
fn cross_thread_frees(threads: usize) {
    let base = heapsight::stats();
    let mut txs = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..threads {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        txs.push(tx);
        rxs.push(rx);
    }
    let handles: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            let tx = txs[(i + 1) % threads].clone();
            thread::spawn(move || {
                let mut mine = Vec::new();
                for j in 0..20_000usize {
                    let b = vec![j as u8; 16 + (j * 37 + i) % 2000];
                    if j % 2 == 0 {
                        tx.send(b).unwrap();
                    } else {
                        mine.push(b);
                    }
                    if j % 64 == 0 {
                        mine.clear();
                    }
                    while let Ok(other) = rx.try_recv() {
                        drop(other);
                    }
                }
                drop(tx);
                // Drain what the neighbour still sends until it hangs up.
                for other in rx {
                    drop(other);
                }
            })
        })
        .collect();
    drop(txs);
    for h in handles {
        h.join().unwrap();
    }
    assert_back_to(&base);
}

/// 1,000 short-lived threads, eight at a time: counters exact, slots recycled.
fn short_lived_threads() {
    let base = heapsight::stats();
    for _ in 0..125 {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                thread::spawn(move || {
                    let v: Vec<String> = (0..100).map(|k| format!("{i}-{k}")).collect();
                    v.len()
                })
            })
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), 100);
        }
    }
    assert_back_to(&base);
    let slots = heapsight::stats().thread_slots;
    // At most the 8 workers plus main and the earlier test's threads were ever alive at once.
    assert!(
        slots <= 16,
        "{slots} slots for at most ~9 live threads: not recycled"
    );
}

/// A thread that only frees still moves the shared in-use figure the peak is taken from (its
/// free countdown flushes every 1 MiB): after it freed 64 MiB that another thread allocated, a
/// later 32 MiB on the first thread is no new peak (within the stated bound). Without the
/// free-side flush the stale figure would report 64 + 32 MiB.
fn free_only_thread_flushes() {
    const MIB: usize = 1 << 20;
    heapsight::set_sample_rate(0);
    let before = heapsight::stats();
    let blocks: Vec<Vec<u8>> = (0..64).map(|_| Vec::with_capacity(MIB)).collect();
    let (tx, rx) = mpsc::channel::<Vec<Vec<u8>>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let consumer = thread::spawn(move || {
        drop(rx.recv().unwrap());
        done_tx.send(()).unwrap();
        // Stay alive (a thread's exit flushes too) until the main thread has read the peak.
        exit_rx.recv().unwrap();
    });
    tx.send(blocks).unwrap();
    done_rx.recv().unwrap();
    let again: Vec<Vec<u8>> = (0..32).map(|_| Vec::with_capacity(MIB)).collect();
    drop(again);
    let after = heapsight::stats();
    exit_tx.send(()).unwrap();
    consumer.join().unwrap();
    // The true peak is the 64 MiB (plus the vector holding them and the channels' and the
    // thread's small blocks). The stated bound above it (`counters`): what the other threads
    // freed since this thread's last flush, counted until this thread's next flush (< one
    // countdown, 1 MiB at rate 0), plus the consumer's unflushed frees (< 1 MiB).
    let true_peak = before.inuse_bytes + (64 * MIB) as u64 + 64 * 1024;
    assert!(
        after.peak_inuse_bytes >= before.inuse_bytes + (64 * MIB) as u64,
        "peak {} lost the 64 MiB",
        after.peak_inuse_bytes
    );
    assert!(
        after.peak_inuse_bytes <= true_peak.max(before.peak_inuse_bytes) + 2 * MIB as u64,
        "peak {} above the true peak {} by more than the stated bound",
        after.peak_inuse_bytes,
        true_peak
    );
    heapsight::set_sample_rate(4096);
}

fn main() {
    // Warm-up: the first spawn initialises std's lazily allocated thread state.
    thread::spawn(|| ()).join().unwrap();
    heapsight::set_sample_rate(4096);
    support::run(&[
        ("free_only_thread_flushes", free_only_thread_flushes),
        ("cross_thread_frees_2", || cross_thread_frees(2)),
        ("cross_thread_frees_4", || cross_thread_frees(4)),
        ("short_lived_threads", short_lived_threads),
        ("cross_thread_frees_at_rate_1", || {
            heapsight::set_sample_rate(1);
            cross_thread_frees(3);
            heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
        }),
    ]);
}
