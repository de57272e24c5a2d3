//! Deterministic instruction counts for what tags cost, under callgrind (the criterion bench
//! `tags` gives times; on a shared machine they are noisy).
//!
//! ```text
//! cargo bench -p heapsight-dev --bench tags_callgrind --no-run
//! B=$(ls -t target/release/deps/tags_callgrind-* | grep -v '\.d$' | head -1)
//! for m in system untagged tagged switch; do for n in 100000 200000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null $B $m $n 2>&1 | grep refs
//! done; done
//! ```
//! Instructions per operation = (refs at 200000 - refs at 100000) / 100000, which cancels start-up.
//! Modes: `system` (the pair straight to `System`, for scale), `untagged` and `tagged` (a 32-byte alloc+free pair without and with a tag in force),
//! `switch` (enter and drop an interned tag). Without arguments (as `cargo bench` runs it) each
//! mode runs briefly, as a smoke test.
use std::alloc::{alloc, dealloc, GlobalAlloc, Layout, System};
use std::hint::black_box;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

fn run(mode: &str, n: u64) {
    let layout = Layout::from_size_align(32, 8).unwrap();
    let pairs = |n: u64| {
        for _ in 0..n {
            // SAFETY: nonzero size; freed with the same layout; never dereferenced.
            unsafe {
                let p = alloc(black_box(layout));
                black_box(p);
                dealloc(p, layout);
            }
        }
    };
    match mode {
        "system" => {
            for _ in 0..n {
                // SAFETY: as above, straight to the inner allocator.
                unsafe {
                    let p = System.alloc(black_box(layout));
                    black_box(p);
                    System.dealloc(p, layout);
                }
            }
        }
        "untagged" => pairs(n),
        "tagged" => {
            let _g = heapsight::tag("callgrind");
            pairs(n)
        }
        "switch" => {
            let t = heapsight::Tag::new("callgrind");
            for _ in 0..n {
                drop(black_box(t).enter());
            }
        }
        other => panic!("unknown mode {other}"),
    }
}

fn main() {
    // Same samples in every mode, so the modes differ only in what they measure.
    heapsight::set_sampling_seed(1);
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.as_slice() {
        [mode, n] => run(mode, n.parse().expect("a count")),
        _ => {
            for m in ["system", "untagged", "tagged", "switch"] {
                run(m, 1000);
            }
        }
    }
}
