//! What tags cost. Run: `cargo bench -p heapsight-dev --bench tags`.
//!
//! * `pair32/untagged` vs `pair32/tagged`: a 32-byte alloc+free pair through heapsight, with and
//!   without a tag in force, side by side in one run. Tags add nothing to the allocation path by
//!   design (the per-tag count is taken from the thread's own counters when the tag changes), so
//!   the ratio should be 1.00 within noise.
//! * `switch/enter_drop`: entering and leaving an interned tag (what `TagGuard` costs).
//! * `poll/plain` vs `poll/tagged`: polling a trivial future bare and wrapped in `.tagged()`,
//!   which enters and leaves the tag around every poll.
use std::alloc::{alloc, dealloc, GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, Criterion};
use heapsight::{Tag, TagFutureExt};

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

/// A waker that does nothing (`Waker::noop` needs Rust 1.85; the crate's MSRV is 1.80).
fn noop_waker() -> Waker {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    Waker::from(std::sync::Arc::new(Noop))
}

fn pair(layout: Layout) {
    // SAFETY: `layout` has a nonzero size; the block is freed with the layout it was allocated
    // with, and never used otherwise.
    unsafe {
        let p = alloc(layout);
        black_box(p);
        dealloc(p, layout);
    }
}

fn pairs(c: &mut Criterion) {
    let layout = Layout::from_size_align(32, 8).unwrap();
    let mut g = c.benchmark_group("pair32");
    // The inner allocator alone, for scale.
    g.bench_function("system", |b| {
        b.iter(|| {
            // SAFETY: as in `pair`, straight to `System`.
            unsafe {
                let p = System.alloc(black_box(layout));
                black_box(p);
                System.dealloc(p, layout);
            }
        })
    });
    g.bench_function("untagged", |b| b.iter(|| pair(black_box(layout))));
    g.bench_function("tagged", |b| {
        let _g = heapsight::tag("bench");
        b.iter(|| pair(black_box(layout)))
    });
    g.finish();
}

fn switch(c: &mut Criterion) {
    let t = Tag::new("bench-switch");
    c.bench_function("switch/enter_drop", |b| {
        b.iter(|| drop(black_box(t).enter()))
    });
}

/// A future that never completes: its poll does nothing, so the tag switch is what is measured.
struct Idle;
impl Future for Idle {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

fn polls(c: &mut Criterion) {
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut g = c.benchmark_group("poll");
    g.bench_function("plain", |b| {
        let mut f = pin!(Idle);
        b.iter(|| black_box(f.as_mut().poll(&mut cx)))
    });
    g.bench_function("tagged", |b| {
        let mut f = pin!(Idle.tagged("bench-poll"));
        b.iter(|| black_box(f.as_mut().poll(&mut cx)))
    });
    g.finish();
}

criterion_group!(benches, pairs, switch, polls);
criterion_main!(benches);
