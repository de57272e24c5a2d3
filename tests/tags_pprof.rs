//! Tags reach pprof as the string label `tag`: `go tool pprof -tags` lists them and
//! `-tagfocus=tag=NAME` keeps only that tag's samples.
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

#[test]
fn pprof_tags_and_tagfocus() {
    if !support::have_tool("go") {
        return;
    }
    heapsight::set_sample_rate(1); // every allocation sampled, weight 1: exact values
    let a = heapsight::with_tag("pprof-alpha", || black_box(vec![0u8; 40_000]));
    let b = heapsight::with_tag("pprof-beta", || black_box(vec![0u8; 70_000]));
    heapsight::set_sample_rate(heapsight::DEFAULT_SAMPLE_RATE);
    let dir = std::env::temp_dir().join(format!("heapsight-tags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
    let inuse: Vec<i64> = raw
        .lines()
        .skip_while(|l| !l.starts_with("Samples:"))
        .skip(2)
        .take_while(|l| !l.starts_with("Locations"))
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .trim_end_matches(':')
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(inuse.iter().sum::<i64>(), 40_000, "{raw}");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}
