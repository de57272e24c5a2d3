//! Golden files for the deterministic parts of the encoders, from a synthetic profile.
//!
//! `HEAPSIGHT_UPDATE_GOLDEN=1 cargo test --lib golden` rewrites them; review the diff. The
//! synthetic profile has a fixed time and fixed mappings, so nothing depends on the machine.
use std::sync::Arc;

use super::maps::Mapping;
use super::*;
use crate::sites::{estimates, Bucket, Estimates, LIFE_BINS};
use crate::symbols::{Frame, Symbol, Symbols};
use crate::Stats;

fn sym(f: &str, file: Option<&str>, line: u32) -> Symbol {
    Symbol {
        function: f.to_string(),
        file: file.map(str::to_string),
        line: file.map(|_| line),
    }
}

fn frame(address: usize, syms: Vec<Symbol>) -> Frame {
    Frame {
        address,
        symbols: Symbols::new(syms),
    }
}

/// Three sites and the overflow bucket:
/// * stack 1: `Vec::push` growth (inlined into `app::build`) under `app::main`; 4 KiB blocks at
///   512 KiB, tagged "cache", plus 64 B blocks sampled at 64 KiB (a rate change).
/// * stack 2: hashbrown growth under `app::index`; all freed.
/// * stack 3: an unsymbolized frame.
pub(crate) fn synthetic() -> HeapProfile {
    let s1: Arc<[Frame]> = vec![
        frame(
            0x5000_1010,
            vec![sym(
                "alloc::raw_vec::finish_grow",
                Some("/rustc/library/alloc/src/raw_vec.rs"),
                480,
            )],
        ),
        frame(
            0x5000_2020,
            vec![
                sym(
                    "alloc::raw_vec::RawVecInner<A>::grow_one",
                    Some("/rustc/library/alloc/src/raw_vec.rs"),
                    560,
                ),
                sym("app::build", Some("/src/app/src/main.rs"), 12),
            ],
        ),
        frame(
            0x5000_3030,
            vec![sym("app::main", Some("/src/app/src/main.rs"), 30)],
        ),
    ]
    .into();
    let s2: Arc<[Frame]> = vec![
        frame(
            0x5000_4040,
            vec![sym(
                "hashbrown::raw::RawTable<T,A>::reserve_rehash",
                None,
                0,
            )],
        ),
        frame(
            0x5000_5050,
            vec![sym("app::index", Some("/src/app/src/index.rs"), 7)],
        ),
        frame(
            0x5000_3030,
            vec![sym("app::main", Some("/src/app/src/main.rs"), 30)],
        ),
    ]
    .into();
    let s3: Arc<[Frame]> = vec![
        frame(0x7f00_0000_1234, vec![]),
        frame(
            0x5000_3030,
            vec![sym("app::main", Some("/src/app/src/main.rs"), 30)],
        ),
    ]
    .into();
    let rec = |stack, tag, size, rate, allocs, frees| Bucket {
        stack,
        tag,
        size,
        rate,
        allocs,
        frees,
        est: estimates(size, rate, allocs, frees),
    };
    let buckets = vec![
        rec(1, 1, 4096, 524288, 150, 10),
        rec(1, 0, 64, 65536, 40, 30),
        rec(2, 0, 1 << 20, 524288, 6, 6),
        rec(3, 0, 24, 1, 1000, 400),
        Bucket {
            stack: 0,
            tag: 0,
            size: 0,
            rate: 0,
            allocs: 5,
            frees: 2,
            est: Estimates {
                alloc_objects: 640.0,
                alloc_bytes: 655360.0,
                inuse_objects: 256.0,
                inuse_bytes: 262144.0,
            },
        },
    ];
    let mut lifetimes = vec![(1, [0u32; LIFE_BINS]), (2, [0u32; LIFE_BINS])];
    lifetimes[0].1[crate::sites::life_bin(2_000)] = 20;
    lifetimes[0].1[crate::sites::life_bin(3_000_000)] = 20;
    lifetimes[1].1[crate::sites::life_bin(45_000_000_000)] = 6;
    let stats = Stats {
        alloc_objects: 123_456,
        alloc_bytes: 987_654_321,
        free_objects: 100_000,
        free_bytes: 300_000_000,
        inuse_objects: 23_456,
        inuse_bytes: 687_654_321,
        peak_inuse_bytes: 700_000_000,
        sample_rate: 524288,
        samples: 1201,
        profiler_bytes: 65536,
        thread_slots: 2,
        dwarf_captures: 0,
        tag_names_refused: 0,
        sample_padding_bytes: 0,
        lost_samples: 0,
        unattributed_samples: 0,
    };
    let mut p = HeapProfile {
        time_nanos: 1_700_000_000_123_456_789,
        duration_nanos: 0,
        rate: 524288,
        stats,
        stacks: vec![Arc::from(Vec::new()), s1, s2, s3].into(),
        buckets: buckets.into(),
        sites: Default::default(),
        symbolized: true,
        live_samples: 753,
        overflow_samples: 5,
        symbol_cache_bytes: 4096,
        symbol_notes: Default::default(),
        notes: Default::default(),
        tag_names: vec![String::new(), "cache".to_string()].into(),
        tag_labels: Default::default(),
        lifetimes: lifetimes.into(),
        sites_by_tag: Default::default(),
    };
    p.assemble();
    p
}

pub(crate) fn synthetic_mappings() -> Vec<Mapping> {
    vec![
        Mapping {
            start: 0x5000_0000,
            limit: 0x5100_0000,
            offset: 0x1000,
            file: "/usr/bin/app".into(),
            build_id: "0123456789abcdef".into(),
            dev: (0, 0),
            inode: 0,
        },
        Mapping {
            start: 0x7f00_0000_0000,
            limit: 0x7f00_0010_0000,
            offset: 0,
            file: "/lib/libc.so.6".into(),
            build_id: String::new(),
            dev: (0, 0),
            inode: 0,
        },
    ]
}

fn golden(name: &str, actual: &[u8]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("HEAPSIGHT_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        eprintln!("updated {}", path.display());
        return;
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with HEAPSIGHT_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if want != actual {
        let got = path.with_extension("actual");
        let _ = std::fs::write(&got, actual);
        panic!(
            "{} differs from the encoder's output (written to {}); if the change is intended, rerun with \
             HEAPSIGHT_UPDATE_GOLDEN=1 (for .pb files compare with `protoc --decode_raw < FILE`)",
            path.display(),
            got.display()
        );
    }
}

#[test]
fn golden_pprof() {
    let p = synthetic();
    golden(
        "synthetic.pb",
        &pprof::encode(&p, None, &synthetic_mappings()),
    );
    golden(
        "synthetic_allocs.pb",
        &pprof::encode(&p, Some(SampleType::AllocSpace), &synthetic_mappings()),
    );
}

#[test]
fn golden_text() {
    let p = synthetic();
    let mut out = Vec::new();
    text::write(&p, None, &mut out).unwrap();
    golden("synthetic.txt", &out);
}

#[test]
fn golden_folded() {
    let p = synthetic();
    for ty in SampleType::ALL {
        let mut out = Vec::new();
        folded::write(&p, ty, &mut out).unwrap();
        golden(&format!("synthetic.{}.folded", ty.name()), &out);
    }
}

#[test]
fn golden_top() {
    let p = synthetic();
    golden(
        "synthetic.top.txt",
        p.top(10, SampleType::InuseSpace).to_string().as_bytes(),
    );
    golden(
        "synthetic.top_alloc.txt",
        p.top(2, SampleType::AllocSpace).to_string().as_bytes(),
    );
}

#[test]
fn text_lines_carry_raw_counts_of_header_rate_buckets() {
    let p = synthetic();
    let mut out = Vec::new();
    text::write(&p, None, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    // Header rate: most samples were taken at rate 1 (1000 samples at size 24).
    assert!(text.starts_with("heap profile: "), "{text}");
    assert!(
        text.lines().next().unwrap().ends_with("@ heap/2"),
        "{}",
        text.lines().next().unwrap()
    );
    // At header rate 1 a rate-1 bucket's line is its raw counts: 600 live of 1000.
    assert!(
        text.contains("\n600: 14400 [1000: 24000] @ 0x7f0000001234 0x50003030\n"),
        "{text}"
    );
    // Frame lines: pc = return address - 1, function, file:line; the program view: the growth
    // function inlined into `app::build` at that pc and the `finish_grow` frame are left out.
    assert!(
        text.contains(
            "] @ 0x50002020 0x50003030\n#\t0x5000201f\tapp::build\t/src/app/src/main.rs:12\n"
        ),
        "{text}"
    );
    // The trailer has the exact counters.
    assert!(text.contains("# AllocBytes = 987654321\n"));
}

#[test]
fn text_header_follows_go_quirks() {
    // One bucket, all live: alloc bytes == in-use bytes, so Go writes AB + 1.
    let mut p = synthetic();
    p.buckets.retain(|r| r.stack == 3);
    p.buckets[0].frees = 0;
    p.buckets[0].est = estimates(24, 1, 1000, 0);
    p.assemble();
    let mut out = Vec::new();
    text::write(&p, None, &mut out).unwrap();
    let head = String::from_utf8(out)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(head, "heap profile: 1000: 24000 [1000: 24001] @ heap/2");
}

#[test]
fn folded_names_are_root_first_with_inlined_frames() {
    let p = synthetic();
    let lines = folded::lines(&p, SampleType::AllocObjects);
    // The program view: the growth machinery (`grow_one` inlined into `build`, `finish_grow`)
    // is dropped, the unsymbolized frame is kept.
    let want_prefix = "app::main;app::build ";
    assert!(
        lines.iter().any(|l| l.starts_with(want_prefix)),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("app::main;0x7f0000001233 1000")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(folded::OVERFLOW_NAME)),
        "{lines:#?}"
    );
}

#[test]
fn top_names_the_program_frame_and_the_growth_frame() {
    let p = synthetic();
    let t = p.top(3, SampleType::AllocSpace);
    // Stack 1 (~19k x 4 KiB) before stack 2 (~7 x 1 MiB).
    assert_eq!(t.user_function(0), Some("app::build"));
    assert_eq!(
        t.growth_function(0),
        Some("alloc::raw_vec::RawVecInner<A>::grow_one")
    );
    assert_eq!(t.user_function(1), Some("app::index"));
    assert_eq!(
        t.growth_function(1),
        Some("hashbrown::raw::RawTable<T,A>::reserve_rehash")
    );
    // The overflow pseudo-site has no frames; the site with an unsymbolized leaf is named by
    // its first program symbol.
    assert_eq!(t.user_function(2), None);
    let t = p.top(4, SampleType::AllocSpace);
    assert_eq!(t.user_function(3), Some("app::main"));
    // What the program called, as it wrote it.
    assert_eq!(t.operation(0), Some("Vec::grow_one"));
    assert_eq!(t.operation(1), Some("HashMap::reserve_rehash"));
    assert_eq!(t.growth_function(3), None);
}

#[test]
fn delta_of_identical_profiles_allocates_nothing() {
    let p = synthetic();
    let q = synthetic();
    let d = p.delta(&q);
    for r in &d.buckets {
        assert_eq!(r.est.alloc_objects, 0.0, "{r:?}");
        assert!(
            r.est.inuse_objects > 0.0,
            "only sites with live blocks remain: {r:?}"
        );
    }
    assert!(d.lifetimes.is_empty(), "nothing was freed in between");
    // Stack 2 is all freed and allocated nothing in between: gone.
    assert!(d.buckets.iter().all(|r| r.stack != 2));
}

#[test]
fn delta_counts_what_was_allocated_in_between() {
    let earlier = synthetic();
    let mut later = synthetic();
    later.buckets[0].allocs += 50; // stack 1, 4096 B at 512 KiB
    later.buckets[0].est = estimates(4096, 524288, 200, 10);
    later.time_nanos += 5_000_000_000;
    later.assemble();
    let d = later.delta(&earlier);
    let r = d
        .buckets
        .iter()
        .find(|r| r.stack == 1 && r.size == 4096)
        .unwrap();
    let want = estimates(4096, 524288, 50, 0);
    assert!((r.est.alloc_objects - want.alloc_objects).abs() < 1e-9);
    assert_eq!(
        r.est.inuse_bytes,
        estimates(4096, 524288, 200, 10).inuse_bytes
    );
    assert_eq!(d.duration_nanos, 5_000_000_000);
}
