//! `measure()`: exact per-thread counts, nesting, and no interference between parallel test
//! threads (the default harness runs these tests concurrently; `-- --test-threads=8` runs eight
//! at once, and `eight_threads_at_once` does so whatever the harness setting).
use std::hint::black_box;
use std::sync::{Arc, Barrier};

use heapsight::{measure, Usage};

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

/// `Vec<u64>` pushed 1..=100 grows through capacities 4, 8, 16, 32, 64, 128: one allocation of
/// 32 bytes and five reallocs (each one free plus one allocation).
fn grow_vec() -> Vec<u64> {
    let mut v = Vec::new();
    for i in 1..=100u64 {
        v.push(black_box(i));
    }
    v
}

fn expect_grow(u: &Usage) {
    assert_eq!(u.alloc_objects, 6, "{u:?}");
    assert_eq!(u.alloc_bytes, 32 + 64 + 128 + 256 + 512 + 1024, "{u:?}");
    assert_eq!(u.alloc_bytes, 2016);
    assert_eq!(u.free_objects, 5, "{u:?}");
    assert_eq!(u.free_bytes, 992, "{u:?}");
    assert_eq!(u.net(), 1024);
    assert_eq!(u.net_objects(), 1);
    // A realloc counts its free first: the peak is the final block, not old + new.
    assert_eq!(u.peak_bytes, 1024, "{u:?}");
}

#[test]
fn vec_growth_is_exact() {
    let (v, u) = measure(grow_vec);
    expect_grow(&u);
    assert_eq!(v.len(), 100);
    let ((), u) = measure(|| drop(v));
    assert_eq!(
        (u.alloc_objects, u.free_objects, u.free_bytes),
        (0, 1, 1024)
    );
    assert_eq!(u.net(), -1024);
    assert_eq!(u.peak_bytes, 0);
}

#[test]
fn vec_growth_and_drop_inside() {
    let (len, u) = measure(|| grow_vec().len());
    assert_eq!(len, 100);
    assert_eq!((u.alloc_objects, u.alloc_bytes), (6, 2016));
    assert_eq!((u.free_objects, u.free_bytes), (6, 2016));
    assert_eq!(u.net(), 0);
    assert_eq!(u.peak_bytes, 1024);
}

#[test]
fn measuring_nothing_is_zero_and_does_not_allocate() {
    let ((), u) = measure(|| ());
    assert_eq!(u, Usage::default());
    // measure() itself inside an outer measure adds nothing.
    let (_, outer) = measure(|| measure(|| ()));
    assert_eq!(outer, Usage::default());
}

#[test]
fn nested_measures() {
    let ((inner, keep), outer) = measure(|| {
        let a: Vec<u8> = Vec::with_capacity(100);
        let ((), inner) = measure(|| {
            let big: Vec<u8> = Vec::with_capacity(1000);
            black_box(&big);
            drop(big);
            // stats() resyncs this thread's peak tracking after the inner peak: the inner scope
            // must still hand its peak to the outer one.
            black_box(heapsight::stats());
        });
        let b = Box::new(black_box([7u8; 10]));
        (inner, (a, b))
    });
    assert_eq!(
        (
            inner.alloc_objects,
            inner.alloc_bytes,
            inner.free_objects,
            inner.free_bytes
        ),
        (1, 1000, 1, 1000)
    );
    assert_eq!(inner.peak_bytes, 1000);
    assert_eq!((outer.alloc_objects, outer.alloc_bytes), (3, 1110));
    assert_eq!((outer.free_objects, outer.free_bytes), (1, 1000));
    // 100 held plus the inner scope's 1000: the inner peak is folded into the outer one.
    assert_eq!(outer.peak_bytes, 1100);
    assert_eq!(outer.net(), 110);
    drop(keep);

    // The outer peak after the inner scope ended.
    let (_, outer) = measure(|| {
        let ((), inner) = measure(|| drop(black_box(vec![0u8; 300])));
        assert_eq!(inner.peak_bytes, 300);
        let v = black_box(vec![0u8; 5000]);
        v.len()
    });
    assert_eq!(outer.peak_bytes, 5000);
    assert_eq!((outer.alloc_objects, outer.free_objects), (2, 2));
}

#[test]
fn peak_survives_samples_inside_the_scope() {
    // At rate 1 every allocation is sampled, and each sample resyncs the thread's peak
    // candidate, resetting `high_water`; the scope's peak must not be lost with it. The rate is
    // global, but only this thread re-arms at once and other tests' exact counts do not depend
    // on it.
    heapsight::set_sample_rate(1);
    let (_, u) = measure(|| {
        let v = grow_vec();
        let w = black_box(vec![0u8; 4000]); // peak: 1024 + 4000
        drop(v);
        drop(w);
        black_box(vec![0u8; 100]).len()
    });
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    assert_eq!((u.alloc_objects, u.alloc_bytes), (8, 2016 + 4000 + 100));
    assert_eq!((u.free_objects, u.free_bytes), (8, 2016 + 4000 + 100));
    assert_eq!(u.peak_bytes, 5024);
}

#[test]
fn frees_of_other_threads_blocks_count_here() {
    let v = std::thread::spawn(|| vec![1u8; 4096]).join().unwrap();
    let ((), u) = measure(move || drop(v));
    assert_eq!(
        (u.alloc_objects, u.free_objects, u.free_bytes),
        (0, 1, 4096)
    );
    assert_eq!(u.net(), -4096);
    assert_eq!(u.peak_bytes, 0);
}

#[test]
fn works_on_a_fresh_thread() {
    let u = std::thread::spawn(|| measure(grow_vec).1).join().unwrap();
    expect_grow(&u);
}

#[test]
fn scope_state_is_restored_after_a_panic() {
    let (_, outer) = measure(|| {
        let r = std::panic::catch_unwind(|| {
            measure(|| {
                let v = black_box(vec![0u8; 8192]);
                if v.len() == 8192 {
                    panic!("on purpose");
                }
            })
        });
        assert!(r.is_err());
    });
    assert!(outer.peak_bytes >= 8192, "{outer:?}");
    assert!(outer.alloc_objects >= 1);
}

#[test]
fn assertion_macros_pass() {
    let v = heapsight::assert_max_allocs!(6, grow_vec());
    let sum = heapsight::assert_no_alloc!(v.iter().sum::<u64>());
    assert_eq!(sum, 5050);
}

#[test]
#[should_panic(expected = "allocated 6 times, at most 5 expected")]
fn assertion_macro_fails_when_over() {
    heapsight::assert_max_allocs!(5, grow_vec());
}

/// A workload with a size parameter, and its exact expected counts.
fn sized_work(n: usize) -> (usize, Usage) {
    measure(|| {
        let a = black_box(vec![0u8; n]);
        let s = black_box("x".repeat(n)); // one allocation of n bytes
        let b: Box<[u64]> = black_box(vec![1u64; n].into_boxed_slice());
        a.len() + s.len() + b.len()
    })
}

fn check_sized(n: usize, rounds: usize) {
    for _ in 0..rounds {
        let (len, u) = sized_work(n);
        assert_eq!(len, 3 * n);
        assert_eq!(u.alloc_objects, 3, "n={n} {u:?}");
        assert_eq!(u.alloc_bytes, (n + n + 8 * n) as u64, "n={n} {u:?}");
        assert_eq!(u.free_objects, 3);
        assert_eq!(u.free_bytes, u.alloc_bytes);
        assert_eq!(u.peak_bytes, u.alloc_bytes);
        let (_, g) = measure(grow_vec);
        expect_grow(&g);
    }
}

// Eight tests doing the same with different sizes; the harness runs them in parallel.
#[test]
fn parallel_0() {
    check_sized(1, 300)
}
#[test]
fn parallel_1() {
    check_sized(17, 300)
}
#[test]
fn parallel_2() {
    check_sized(100, 300)
}
#[test]
fn parallel_3() {
    check_sized(999, 300)
}
#[test]
fn parallel_4() {
    check_sized(4096, 300)
}
#[test]
fn parallel_5() {
    check_sized(10_000, 300)
}
#[test]
fn parallel_6() {
    check_sized(65_536, 100)
}
#[test]
fn parallel_7() {
    check_sized(200_000, 50)
}

#[test]
fn eight_threads_at_once() {
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                check_sized(1 + i * 1000, 200);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
