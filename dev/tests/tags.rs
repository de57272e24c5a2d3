//! Tags: exact per-tag allocation counts (guards, nesting, futures across threads, a real
//! multi-threaded tokio runtime), sampled per-tag in-use, tags in `profile()`.
//!
//! Tests run in parallel and tag counts are process-wide, so every test uses its own tag names.
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use heapsight::{measure, tag, tag_stats, with_tag, Tag, TagError, TagFutureExt, TagStats};

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

fn stats_of(name: &str) -> TagStats {
    tag_stats()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("tag {name} not in tag_stats()"))
}

/// (alloc_objects, alloc_bytes) of a tag.
fn counts(name: &str) -> (u64, u64) {
    let s = stats_of(name);
    (s.alloc_objects, s.alloc_bytes)
}

#[test]
fn guard_counts_exactly_what_measure_sees() {
    let t = Tag::new("t-guard");
    assert_eq!(counts("t-guard"), (0, 0));
    let (_, u) = measure(|| {
        let _g = t.enter();
        let mut v = Vec::new();
        for i in 0..1000u32 {
            v.push(black_box(i));
        }
        let s = black_box(format!("{}", v.len()));
        (v.len(), s)
    });
    assert!(u.alloc_objects >= 9);
    assert_eq!(counts("t-guard"), (u.alloc_objects, u.alloc_bytes));
}

#[test]
fn guards_nest_and_restore() {
    let _outer = tag("t-nest-outer");
    let a = black_box(vec![0u8; 100]);
    {
        let _inner = tag("t-nest-inner");
        let b = black_box(vec![0u8; 1000]);
        with_tag("t-nest-innermost", || black_box(vec![0u8; 7]).len());
        drop(b);
    }
    let c = black_box(vec![0u8; 10]);
    drop(_outer);
    let untagged = black_box(vec![0u8; 55]);
    assert_eq!(counts("t-nest-outer"), (2, 110));
    assert_eq!(counts("t-nest-inner"), (1, 1000));
    assert_eq!(counts("t-nest-innermost"), (1, 7));
    drop((a, c, untagged));
}

#[test]
fn same_tag_twice_and_untagged_scope() {
    let _a = tag("t-same");
    let _b = tag("t-same");
    black_box(vec![0u8; 11]);
    {
        let _none = tag(""); // documented: the empty name is an untagged scope
        black_box(vec![0u8; 13]);
    }
    drop(_b);
    black_box(vec![0u8; 17]);
    drop(_a);
    assert_eq!(counts("t-same"), (2, 28));
}

#[test]
fn errors_and_truncation() {
    assert_eq!(heapsight::try_tag("").err(), Some(TagError::Empty));
    let long = "t-long-".to_string() + &"x".repeat(300);
    match heapsight::try_tag(&long) {
        Err(TagError::TooLong { len }) => assert_eq!(len, long.len()),
        other => panic!("{other:?}"),
    }
    {
        let _g = tag(&long);
        black_box(vec![0u8; 3]);
    }
    let s = stats_of(&long[..heapsight::MAX_TAG_LEN]);
    assert_eq!((s.alloc_objects, s.alloc_bytes), (1, 3));
    assert!(heapsight::try_tag("t-ok").is_ok());
}

#[test]
fn leaked_guard_does_not_tag_the_next_owner_of_the_slot() {
    std::thread::spawn(|| {
        std::mem::forget(tag("t-leak"));
        black_box(vec![0u8; 100]);
    })
    .join()
    .unwrap();
    let after_exit = counts("t-leak");
    assert!(after_exit.0 >= 1 && after_exit.1 >= 100, "{after_exit:?}");
    // New threads adopt exited threads' counter slots; none of them may count for "t-leak".
    for _ in 0..8 {
        std::thread::spawn(|| black_box(vec![0u8; 1 << 16]).len())
            .join()
            .unwrap();
    }
    assert_eq!(counts("t-leak"), after_exit);
}

#[test]
fn sampled_inuse_follows_frees_at_rate_1() {
    // Rate 1 samples every allocation on this thread (re-armed at once) with weight 1, so the
    // per-tag in-use estimate is exact here. Other threads keep their own countdowns.
    heapsight::set_sample_rate(1);
    let blocks: Vec<Box<[u8; 1000]>> = with_tag("t-live", || {
        (0..100).map(|_| Box::new([1u8; 1000])).collect()
    });
    let mut blocks = blocks;
    let s = stats_of("t-live");
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    // The 100 boxes plus the collected Vec (one allocation of 100 pointers).
    assert_eq!((s.alloc_objects, s.alloc_bytes), (101, 100 * 1000 + 800));
    assert_eq!((s.inuse_objects, s.inuse_bytes), (101, 100_800));
    assert_eq!((s.samples, s.live_samples), (101, 101));
    // Frees are attributed for sampled blocks, wherever they happen (untagged, other thread).
    blocks.truncate(50);
    let s = stats_of("t-live");
    assert_eq!((s.inuse_objects, s.inuse_bytes), (51, 50_800));
    std::thread::spawn(move || drop(blocks)).join().unwrap();
    let s = stats_of("t-live");
    assert_eq!((s.inuse_objects, s.inuse_bytes, s.live_samples), (0, 0, 0));
    // Exact counts are allocation counts: frees do not lower them.
    assert_eq!(s.alloc_objects, 101);
}

#[test]
fn profile_carries_tags() {
    heapsight::set_sample_rate(1);
    let kept = with_tag("t-profile", || black_box(vec![0u8; 3000]));
    let kept2 = with_tag("t-profile-2", || black_box(vec![0u8; 5000]));
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    let p = heapsight::profile();
    let by_tag = p.sites_by_tag();
    let site = by_tag
        .iter()
        .find(|s| s.tag() == Some("t-profile"))
        .expect("a site tagged t-profile");
    assert_eq!((site.inuse_objects, site.inuse_bytes), (1, 3000));
    let names: Vec<&str> = site
        .frames()
        .iter()
        .flat_map(|f| f.symbols.iter().map(|s| s.function.as_str()))
        .collect();
    assert!(
        names.iter().any(|n| n.contains("profile_carries_tags")),
        "{names:#?}"
    );
    let site2 = by_tag
        .iter()
        .find(|s| s.tag() == Some("t-profile-2"))
        .unwrap();
    assert_eq!(site2.inuse_bytes, 5000);
    // Per-stack sites add every tag up and carry none.
    assert!(p.sites().iter().all(|s| s.tag().is_none()));
    drop(p);
    drop((kept, kept2));
}

/// Returns `Pending` once (waking itself), like `yield_now`, without allocating.
struct Yield(bool);
impl Future for Yield {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// A stable, allocation-free id of the current thread.
fn thread_key() -> usize {
    thread_local!(static K: u8 = const { 0 });
    K.with(|k| k as *const u8 as usize)
}

#[test]
fn tagged_future_follows_the_future_across_threads() {
    // Polled by hand: once on this thread, then moved to another thread and finished there.
    static POLLED_ON: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];
    let fut = async move {
        let a = black_box(vec![0u8; 111]);
        POLLED_ON[0].store(thread_key(), SeqCst);
        Yield(false).await;
        let b = black_box(vec![0u8; 222]);
        POLLED_ON[1].store(thread_key(), SeqCst);
        a.len() + b.len()
    };
    let mut fut = Box::pin(fut.tagged("t-hop"));
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    let (r, u1) = measure(|| fut.as_mut().poll(&mut cx));
    assert!(r.is_pending());
    let main_alloc = black_box(vec![0u8; 999]); // untagged, between the polls
    let (r, u2) = std::thread::spawn(move || {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let r = measure(|| fut.as_mut().poll(&mut cx));
        black_box(vec![0u8; 4444]); // untagged, on the other thread
        r
    })
    .join()
    .unwrap();
    assert_eq!(r, Poll::Ready(333));
    assert_ne!(
        POLLED_ON[0].load(SeqCst),
        POLLED_ON[1].load(SeqCst),
        "polled on two threads"
    );
    assert_eq!((u1.alloc_objects, u1.alloc_bytes), (1, 111));
    assert_eq!((u2.alloc_objects, u2.alloc_bytes), (1, 222));
    assert_eq!(counts("t-hop"), (2, 333));
    drop(main_alloc);
}

const TASKS: usize = 16;

/// Per task: the first worker thread it was polled on, and another one if it moved.
static TASK_THREADS: [[AtomicUsize; 2]; TASKS] =
    [const { [const { AtomicUsize::new(0) }, const { AtomicUsize::new(0) }] }; TASKS];

/// What one task of the tokio test allocates: `rounds` vectors of known sizes, a yield after
/// each. Nothing else in it allocates while polled (the yield and the bookkeeping do not).
async fn task_work(task: usize, rounds: usize) -> usize {
    let mut total = 0;
    for r in 0..rounds {
        let v = black_box(vec![0u8; size_of_round(task, r)]);
        total += v.len();
        drop(v);
        let k = thread_key();
        let seen = &TASK_THREADS[task];
        if seen[0].load(Relaxed) == 0 {
            seen[0].store(k, Relaxed);
        } else if seen[0].load(Relaxed) != k {
            seen[1].store(k, Relaxed);
        }
        Yield(false).await;
    }
    total
}

fn size_of_round(task: usize, round: usize) -> usize {
    16 + task * 8 + round
}

#[test]
fn tokio_multi_thread_per_tag_counts_are_exact() {
    const ROUNDS: usize = 40;
    const TAGS: usize = 4;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let names: Vec<String> = (0..TAGS).map(|i| format!("t-tokio-route-{i}")).collect();
    let tags: Vec<Tag> = names.iter().map(|n| Tag::new(n)).collect();
    let handles: Vec<_> = (0..TASKS)
        .map(|task| rt.spawn(task_work(task, ROUNDS).tagged_with(tags[task % TAGS])))
        .collect();
    let totals: Vec<usize> = rt.block_on(async {
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    });
    drop(rt);
    for (i, name) in names.iter().enumerate() {
        let tasks: Vec<usize> = (0..TASKS).filter(|t| t % TAGS == i).collect();
        let bytes: usize = tasks.iter().map(|&t| totals[t]).sum();
        let expected: usize = tasks
            .iter()
            .map(|&t| (0..ROUNDS).map(|r| size_of_round(t, r)).sum::<usize>())
            .sum();
        assert_eq!(bytes, expected);
        assert_eq!(
            counts(name),
            ((tasks.len() * ROUNDS) as u64, expected as u64),
            "{name}"
        );
    }
    let mut threads: Vec<usize> = TASK_THREADS
        .iter()
        .flatten()
        .map(|a| a.load(Relaxed))
        .filter(|&k| k != 0)
        .collect();
    let moved = TASK_THREADS
        .iter()
        .filter(|t| t[1].load(Relaxed) != 0)
        .count();
    threads.sort_unstable();
    threads.dedup();
    println!(
        "tokio: {TASKS} tasks polled on {} distinct worker threads; {moved} tasks moved between \
         workers",
        threads.len()
    );
}

/// Deterministic migration on tokio: task T is first polled on worker A, then spawns a hostage
/// task H into A's LIFO slot (not stealable) and parks; H keeps A busy until T has run again, so
/// the wake from outside the runtime must be served by worker B. T's allocations on both workers
/// count for its tag.
#[test]
fn tokio_task_moves_between_workers_with_its_tag() {
    static FIRST: AtomicUsize = AtomicUsize::new(0);
    static SECOND: AtomicUsize = AtomicUsize::new(0);
    static RELEASE_HOSTAGE: AtomicBool = AtomicBool::new(false);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let waker_slot: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
    let ws = waker_slot.clone();
    struct Park(Arc<Mutex<Option<Waker>>>, bool);
    impl Future for Park {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.1 {
                return Poll::Ready(());
            }
            self.1 = true;
            *self.0.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
    let t = async move {
        let a = black_box(vec![0u8; 1234]);
        FIRST.store(thread_key(), SeqCst);
        tokio::spawn(async {
            // The hostage: runs on worker A and holds it until T has been polled elsewhere
            // (bounded, so a scheduler that behaves differently fails the test, not hangs it).
            let mut spins = 0u64;
            while !RELEASE_HOSTAGE.load(SeqCst) && spins < 2_000_000_000 {
                std::hint::spin_loop();
                spins += 1;
            }
        });
        Park(ws, false).await;
        let b = black_box(vec![0u8; 4321]);
        SECOND.store(thread_key(), SeqCst);
        RELEASE_HOSTAGE.store(true, SeqCst);
        a.len() + b.len()
    };
    let handle = rt.spawn(t.tagged("t-tokio-hop"));
    // Wait (outside the runtime) until T has parked, then wake it from this thread.
    let waker = loop {
        if let Some(w) = waker_slot.lock().unwrap().take() {
            break w;
        }
        std::thread::yield_now();
    };
    waker.wake();
    let n = rt.block_on(handle).unwrap();
    drop(rt);
    assert_eq!(n, 1234 + 4321);
    let (first, second) = (FIRST.load(SeqCst), SECOND.load(SeqCst));
    assert_ne!(first, second, "T was polled on two different workers");
    // T allocated the two vectors and the hostage task (spawned from inside T's poll, so tokio's
    // task cell for it is T's allocation too); the waker clone is an Arc bump, not an allocation.
    let (o, b) = counts("t-tokio-hop");
    println!("t-tokio-hop: {o} allocations, {b} bytes");
    assert_eq!(o, 3, "two vectors and the hostage's task cell");
    assert!(b > 1234 + 4321, "{b}");
}

#[inline(never)]
async fn tagged_leaf_work() -> usize {
    black_box(vec![0u8; 2345]).len()
}

#[inline(never)]
fn tagged_leaf_sync() -> Vec<u8> {
    black_box(vec![0u8; 3456])
}

/// The user code a tagged future or `with_tag` runs must stay in sampled stacks: heapsight's
/// wrappers (`Tagged::poll`, `with_tag`) sit between it and the caller, and are not allocator
/// frames to trim.
#[test]
fn user_frames_inside_heapsight_wrappers_are_kept() {
    heapsight::set_sample_rate(1);
    let mut fut = Box::pin(tagged_leaf_work().tagged("t-frames"));
    let r = fut.as_mut().poll(&mut Context::from_waker(&noop_waker()));
    let kept = with_tag("t-frames-closure", tagged_leaf_sync);
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    assert_eq!(r, Poll::Ready(2345));
    let p = heapsight::profile();
    let symbols_of = |tag: &str| -> Vec<String> {
        let site = p
            .sites_by_tag()
            .iter()
            .find(|s| s.tag() == Some(tag))
            .expect(tag);
        site.frames()
            .iter()
            .flat_map(|f| f.symbols.iter().map(|s| s.function.clone()))
            .collect()
    };
    let f = symbols_of("t-frames");
    assert!(f.iter().any(|n| n.contains("tagged_leaf_work")), "{f:#?}");
    let c = symbols_of("t-frames-closure");
    assert!(c.iter().any(|n| n.contains("tagged_leaf_sync")), "{c:#?}");
    drop(p);
    drop(kept);
}
