//! The tag table's cap: a process of its own, since filling the table is permanent.
use std::hint::black_box;

use heapsight::{Tag, TagError, MAX_TAG_NAMES, OVERFLOW_TAG};

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

#[test]
fn names_past_the_cap_overflow_or_fail() {
    assert_eq!(heapsight::stats().tag_names_refused, 0);
    let first = Tag::new("name-0");
    for i in 1..MAX_TAG_NAMES {
        Tag::try_new(&format!("name-{i}")).unwrap();
    }
    // Known names still resolve; a new one does not fit.
    assert_eq!(Tag::try_new("name-0"), Ok(first));
    assert_eq!(Tag::try_new("one-too-many"), Err(TagError::TableFull));
    let over = Tag::new("one-too-many");
    assert_eq!(over.name(), OVERFLOW_TAG);
    assert_eq!(Tag::new("another-new-name"), over);
    {
        let _g = heapsight::tag("yet-another");
        black_box(vec![0u8; 77]);
    }
    // Every refusal is counted (the metric heapsight_tag_names_refused_total).
    assert_eq!(heapsight::stats().tag_names_refused, 4);
    let stats = heapsight::tag_stats();
    assert_eq!(stats.len(), MAX_TAG_NAMES + 1); // every name plus the overflow tag
    let o = stats.iter().find(|s| s.name == OVERFLOW_TAG).unwrap();
    assert_eq!((o.alloc_objects, o.alloc_bytes), (1, 77));
    assert!(stats
        .iter()
        .filter(|s| s.name != OVERFLOW_TAG)
        .all(|s| s.alloc_objects == 0));
}

/// The first refusal is said once on stderr, not once per refusal: the test above, run alone in
/// a child process with its output uncaptured.
#[test]
fn overflow_is_reported_once_on_stderr() {
    if std::env::var_os("HEAPSIGHT_TAG_TABLE_CHILD").is_some() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "names_past_the_cap_overflow_or_fail",
            "--nocapture",
        ])
        .env("HEAPSIGHT_TAG_TABLE_CHILD", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = stderr.matches("heapsight: the tag table is full").count();
    assert_eq!(said, 1, "{stderr}");
    assert!(
        stderr.contains("heapsight_tag_names_refused_total"),
        "{stderr}"
    );
}
