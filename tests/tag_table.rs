//! The tag table's cap: a process of its own, since filling the table is permanent.
use std::hint::black_box;

use heapsight::{Tag, TagError, MAX_TAG_NAMES, OVERFLOW_TAG};

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

#[test]
fn names_past_the_cap_overflow_or_fail() {
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
    let stats = heapsight::tag_stats();
    assert_eq!(stats.len(), MAX_TAG_NAMES + 1); // every name plus the overflow tag
    let o = stats.iter().find(|s| s.name == OVERFLOW_TAG).unwrap();
    assert_eq!((o.alloc_objects, o.alloc_bytes), (1, 77));
    assert!(stats
        .iter()
        .filter(|s| s.name != OVERFLOW_TAG)
        .all(|s| s.alloc_objects == 0));
}
