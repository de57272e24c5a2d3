//! Tags reach pprof as the string label `tag`: `go tool pprof -tags` lists them and
//! `-tagfocus=tag=NAME` keeps only that tag's samples. A label set ([`heapsight::Tag::with_labels`])
//! reaches it as one string label per pair.
use std::hint::black_box;

mod support;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

/// Runs `go tool pprof ARGS FILE`, returns its standard output; fails the test on an error.
fn pprof(args: &[&str], file: &std::path::Path) -> String {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.push(file.as_os_str());
    support::go_pprof(&all)
}

/// The in-use bytes (fourth column) summed over the samples of `go tool pprof -raw` output.
fn inuse_bytes(raw: &str) -> i64 {
    raw.lines()
        .skip_while(|l| !l.starts_with("Samples:"))
        .skip(2)
        .take_while(|l| !l.starts_with("Locations"))
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .trim_end_matches(':')
                .parse::<i64>()
                .ok()
        })
        .sum()
}

#[test]
fn pprof_tags_and_tagfocus() {
    if !support::have_tool("go") {
        return;
    }
    heapsight::set_sample_rate(1); // every allocation sampled, weight 1: exact values
    let a = heapsight::with_tag("pprof-alpha", || black_box(vec![0u8; 40_000]));
    let b = heapsight::with_tag("pprof-beta", || black_box(vec![0u8; 70_000]));
    let labelled = heapsight::Tag::with_labels(&[("route", "/search"), ("tenant", "free")]);
    let c = {
        let _g = labelled.enter();
        black_box(vec![0u8; 90_000])
    };
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    let dir = support::TempDir::new("tags");
    let path = dir.join("heap.pb.gz");
    let p = heapsight::profile();
    p.write_pprof(std::fs::File::create(&path).unwrap())
        .unwrap();
    drop(p);

    let text = pprof(&["-tags"], &path);
    assert!(text.contains("tag:"), "{text}");
    assert!(
        text.contains("pprof-alpha") && text.contains("pprof-beta"),
        "{text}"
    );

    // -tagfocus keeps one tag: in-use bytes are exactly that tag's 40,000 (plus nothing else).
    let raw = pprof(&["-raw", "-tagfocus=tag=pprof-alpha"], &path);
    assert_eq!(inuse_bytes(&raw), 40_000, "{raw}");

    // The label set: each pair is its own label, and either focuses on the labelled block.
    for key in ["route:", "tenant:", "/search", "free"] {
        assert!(text.contains(key), "-tags lacks {key}:\n{text}");
    }
    for focus in ["-tagfocus=route=/search", "-tagfocus=tenant=free"] {
        let raw = pprof(&["-raw", focus], &path);
        assert_eq!(inuse_bytes(&raw), 90_000, "{focus}:\n{raw}");
    }
    let stats = heapsight::tag_stats();
    let t = stats
        .iter()
        .find(|t| t.name == "route=/search,tenant=free")
        .unwrap();
    assert_eq!((t.alloc_objects, t.alloc_bytes), (1, 90_000));
    drop((a, b, c));
}
