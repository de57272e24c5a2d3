//! Tags: "for what" next to the stacks' "where".
//!
//! A tag is a name interned once into a small id. The id of the innermost live [`TagGuard`] sits in
//! this thread's [`ThreadState`](crate::guard::ThreadState); a sampled allocation reads it into its
//! site-table bucket, and the exact per-tag counts come from the thread's counter slot (see
//! `counters`: entering or leaving a tag closes one interval of the slot's own counts and opens
//! another). The allocation fast path reads nothing tag-related at all.
//!
//! # What a tag counts, exactly and not
//!
//! * `alloc_objects` / `alloc_bytes`: exact, every allocation made on a thread while the tag was
//!   the innermost one (a `realloc` counts as one allocation, as in [`crate::Stats`]).
//! * `inuse_objects` / `inuse_bytes`: sampled estimates. A sampled block remembers the tag it was
//!   allocated under, and freeing it takes its weight out of that tag wherever and whenever the
//!   free happens. Unsampled frees are not attributed to any tag: there is no per-block header to
//!   say which tag a block belonged to, and looking it up would cost every free a hash probe. So
//!   exact per-tag in-use bytes are not available; the estimate has the usual sampling error
//!   (relative error about `1/sqrt(live samples)`).
//! * Samples that land in the site table's overflow bucket (past the site cap) lose their tag.
//!
//! # Names
//!
//! At most [`MAX_TAG_NAMES`] distinct names per process (the table is never emptied, so a tag per
//! request *id* is the wrong granularity: tag by route, job kind or tenant class). Names are at
//! most [`MAX_TAG_LEN`] bytes. [`tag`] and [`Tag::new`] never fail: they truncate a long name at a
//! character boundary, map `""` to "untagged", and send new names past the cap to the
//! [`OVERFLOW_TAG`] tag. [`try_tag`] and [`Tag::try_new`] report the same cases as a [`TagError`]
//! instead.
//!
//! # Labels
//!
//! A tag is a set of key/value string labels, interned as one id: [`Tag::new`]`("x")` is the set
//! `{tag: "x"}`, and [`Tag::with_labels`] makes any other set (`{route: "/search", tenant:
//! "free"}`), at most [`MAX_LABELS`] pairs, keys at most [`MAX_LABEL_KEY_LEN`] bytes, values at
//! most [`MAX_TAG_LEN`]. Sets share the [`MAX_TAG_NAMES`] cap with names, and the allocation
//! path still carries one small id: labels cost nothing until a profile is written, where each
//! pair is a pprof string label (`go tool pprof -tags`, `-tagfocus=route=/search`). The order of
//! the pairs does not matter; a set's name (in [`tag_stats`], `top`, the page) is its value for a
//! plain `{tag: ...}` set and `key=value,key=value` in key order otherwise.
use core::fmt;
use core::future::Future;
use core::marker::PhantomData;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::counters::{self, MAX_TAGS};
use crate::guard::{profiler_scope, THREAD};
use crate::owned::Owned;
use crate::sync::Lock;

/// Longest tag name in bytes; [`tag`] truncates longer names (at a character boundary).
pub const MAX_TAG_LEN: usize = 128;
/// Most distinct tag names per process. Further names go to [`OVERFLOW_TAG`] (or fail with
/// [`TagError::TableFull`] from [`try_tag`]).
pub const MAX_TAG_NAMES: usize = MAX_TAGS - 2;
/// The name of the tag that collects allocations of names beyond [`MAX_TAG_NAMES`].
pub const OVERFLOW_TAG: &str = "<overflow>";

/// Most key/value pairs in one label set ([`Tag::with_labels`]).
pub const MAX_LABELS: usize = 8;
/// Longest label key in bytes.
pub const MAX_LABEL_KEY_LEN: usize = 64;
/// The label key of a plain tag: [`Tag::new`]`("x")` is the label set `{tag: "x"}`.
pub const TAG_KEY: &str = "tag";
/// Keys a label set may not use: pprof samples already carry the numeric label `bytes` (the
/// allocation size).
const RESERVED_KEYS: [&str; 1] = ["bytes"];

/// Id of the overflow tag; id 0 is "untagged".
const OVERFLOW_ID: u32 = 1;

/// Why [`try_tag`] / [`Tag::try_new`] refused a name.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TagError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_TAG_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// [`MAX_TAG_NAMES`] distinct names are already interned.
    TableFull,
    /// More than [`MAX_LABELS`] pairs in a label set.
    TooManyLabels {
        /// How many were given.
        count: usize,
    },
    /// A label key that is empty, longer than [`MAX_LABEL_KEY_LEN`], reserved (`bytes`), or
    /// given twice in one set.
    BadLabelKey {
        /// The key as given.
        key: String,
    },
}

impl fmt::Display for TagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagError::Empty => write!(f, "tag name is empty"),
            TagError::TooLong { len } => {
                write!(
                    f,
                    "tag name is {len} bytes long; the limit is {MAX_TAG_LEN}"
                )
            }
            TagError::TableFull => {
                write!(f, "the tag table is full ({MAX_TAG_NAMES} distinct names)")
            }
            TagError::TooManyLabels { count } => {
                write!(f, "{count} labels in one set; the limit is {MAX_LABELS}")
            }
            TagError::BadLabelKey { key } => write!(
                f,
                "label key {key:?} is empty, longer than {MAX_LABEL_KEY_LEN} bytes, reserved \
                 (bytes) or repeated"
            ),
        }
    }
}

impl std::error::Error for TagError {}

/// One interned label set, pairs sorted by key.
type LabelSet = Arc<[(Arc<str>, Arc<str>)]>;

struct Names {
    /// Label set (as [`set_key`] encodes it) to id.
    ids: HashMap<String, u32>,
    /// Index = id. `list[0]` is "" (untagged), `list[1]` the overflow tag.
    list: Vec<Arc<str>>,
    /// Index = id: the label set behind each name (empty for untagged).
    labels: Vec<LabelSet>,
}

/// The interning table. Taken only by `Tag::new` and readers, never by the allocation hook, and
/// always inside the profiler guard (interning allocates). Held across `fork()` (see `sync`).
static NAMES: Lock<Option<Names>> = Lock::new(&crate::sync::TAG_NAMES_LOCK, None);

fn with_names<R>(f: impl FnOnce(&mut Names) -> R) -> R {
    profiler_scope(|| {
        let mut g = NAMES.lock();
        let names = g.get_or_insert_with(|| Names {
            ids: HashMap::from([(set_key(&[(TAG_KEY, OVERFLOW_TAG)]), OVERFLOW_ID)]),
            list: vec![Arc::from(""), Arc::from(OVERFLOW_TAG)],
            labels: vec![
                Arc::from(Vec::new()),
                Arc::from(vec![(Arc::from(TAG_KEY), Arc::from(OVERFLOW_TAG))]),
            ],
        });
        f(names)
    })
}

/// An unambiguous key for a sorted label set: each string prefixed with its length.
fn set_key(pairs: &[(&str, &str)]) -> String {
    use fmt::Write;
    let mut k = String::new();
    for (a, b) in pairs {
        let _ = write!(k, "{}:{a}{}:{b}", a.len(), b.len());
    }
    k
}

/// A set's display name: the value of a plain `{tag: v}` set, else `k=v,k=v`.
fn display_name(pairs: &[(&str, &str)]) -> String {
    match pairs {
        [(k, v)] if *k == TAG_KEY => v.to_string(),
        _ => {
            let mut n = String::new();
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    n.push(',');
                }
                n.push_str(k);
                n.push('=');
                n.push_str(v);
            }
            n
        }
    }
}

/// Checks a label set without allocating (but for the error's key, which is the caller's).
fn check(pairs: &[(&str, &str)]) -> Result<(), TagError> {
    if pairs.is_empty() {
        return Err(TagError::Empty);
    }
    if pairs.len() > MAX_LABELS {
        return Err(TagError::TooManyLabels { count: pairs.len() });
    }
    for (i, (k, v)) in pairs.iter().enumerate() {
        let repeated = pairs[..i].iter().any(|(seen, _)| seen == k);
        if k.is_empty() || k.len() > MAX_LABEL_KEY_LEN || RESERVED_KEYS.contains(k) || repeated {
            return Err(TagError::BadLabelKey { key: k.to_string() });
        }
        if v.is_empty() {
            return Err(TagError::Empty);
        }
        if v.len() > MAX_TAG_LEN {
            return Err(TagError::TooLong { len: v.len() });
        }
    }
    Ok(())
}

/// Interns a checked label set. Everything it allocates, the sorted copy included, is the
/// profiler's: entering a tag must not count as an allocation under the tag in force, and an
/// error (whose key the caller owns and frees) is made before, outside the guard.
fn intern_set(pairs: &[(&str, &str)]) -> Result<u32, TagError> {
    check(pairs)?;
    profiler_scope(|| {
        let mut sorted: Vec<(&str, &str)> = pairs.to_vec();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        with_names(|n| {
            let key = set_key(&sorted);
            if let Some(&id) = n.ids.get(&key) {
                return Ok(id);
            }
            if n.list.len() >= MAX_TAGS {
                note_refused();
                return Err(TagError::TableFull);
            }
            let id = n.list.len() as u32;
            n.list.push(Arc::from(display_name(&sorted)));
            n.labels.push(
                sorted
                    .iter()
                    .map(|(k, v)| (Arc::from(*k), Arc::from(*v)))
                    .collect(),
            );
            n.ids.insert(key, id);
            Ok(id)
        })
    })
}

/// New names refused because the table was full, since start-up (`Stats::tag_names_refused`).
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Counts a refusal; the first one is also said once on stderr, since from then on new tags
/// silently share [`OVERFLOW_TAG`]. Called under the names lock, inside the profiler guard:
/// `eprintln!` writes to unbuffered stderr and allocates nothing that reaches the counters.
fn note_refused() {
    if REFUSED.fetch_add(1, Relaxed) == 0 {
        eprintln!(
            "heapsight: the tag table is full ({MAX_TAG_NAMES} names): new tags count under \
             {OVERFLOW_TAG:?} from now on (tag by route or job kind, not by per-request values); \
             metric heapsight_tag_names_refused_total counts them"
        );
    }
}

/// New tag names refused since start-up because the table was full.
pub(crate) fn refused() -> u64 {
    REFUSED.load(Relaxed)
}

fn intern(name: &str) -> Result<u32, TagError> {
    intern_set(&[(TAG_KEY, name)])
}

fn truncate(name: &str) -> &str {
    if name.len() <= MAX_TAG_LEN {
        return name;
    }
    let mut end = MAX_TAG_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Every interned name, index = id (`[0]` = "" for untagged); the profiler's memory.
pub(crate) fn names() -> Owned<Vec<Arc<str>>> {
    with_names(|n| Owned::new(n.list.clone()))
}

/// Every interned label set as owned strings, index = id (`[0]` empty for untagged); the
/// profiler's memory.
pub(crate) fn label_sets() -> Owned<Vec<Vec<(String, String)>>> {
    with_names(|n| {
        Owned::new(
            n.labels
                .iter()
                .map(|set| {
                    set.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .collect(),
        )
    })
}

/// An interned tag name: a small `Copy` id. Intern once, enter often: [`Tag::enter`] costs a few
/// nanoseconds, while [`tag`] looks its name up under a lock each time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tag(u32);

impl Tag {
    /// "No tag": allocations in its scope count for no tag (as outside any guard).
    pub const UNTAGGED: Tag = Tag(0);

    /// Interns `name`. Never fails: a name longer than [`MAX_TAG_LEN`] is truncated, `""` is
    /// [`Tag::UNTAGGED`], and a new name beyond [`MAX_TAG_NAMES`] is the [`OVERFLOW_TAG`] tag.
    pub fn new(name: &str) -> Tag {
        match intern(truncate(name)) {
            Ok(id) => Tag(id),
            Err(TagError::Empty) => Tag::UNTAGGED,
            Err(_) => Tag(OVERFLOW_ID),
        }
    }

    /// Interns `name`, or says why it cannot be a tag as given.
    pub fn try_new(name: &str) -> Result<Tag, TagError> {
        intern(name).map(Tag)
    }

    /// Interns a set of key/value labels as one tag (see the module docs). Never fails, like
    /// [`Tag::new`]: pairs with an empty, over-long, reserved or repeated key are left out,
    /// values are truncated to [`MAX_TAG_LEN`] bytes, pairs past [`MAX_LABELS`] are left out, an
    /// empty set is [`Tag::UNTAGGED`], and a new set beyond [`MAX_TAG_NAMES`] is the
    /// [`OVERFLOW_TAG`] tag.
    ///
    /// ```
    /// let t = heapsight::Tag::with_labels(&[("route", "/search"), ("tenant", "free")]);
    /// let _g = t.enter(); // samples now carry the pprof labels route and tenant
    /// ```
    pub fn with_labels(labels: &[(&str, &str)]) -> Tag {
        profiler_scope(|| Tag::with_labels_inside(labels))
    }

    fn with_labels_inside(labels: &[(&str, &str)]) -> Tag {
        let mut kept: Vec<(&str, &str)> = Vec::new();
        for &(k, v) in labels {
            let v = truncate(v);
            if kept.len() < MAX_LABELS
                && check(&[(k, v)]).is_ok()
                && !kept.iter().any(|(seen, _)| *seen == k)
            {
                kept.push((k, v));
            }
        }
        if kept.is_empty() {
            return Tag::UNTAGGED;
        }
        match intern_set(&kept) {
            Ok(id) => Tag(id),
            Err(_) => Tag(OVERFLOW_ID),
        }
    }

    /// Interns a label set, or says why it cannot be one as given.
    pub fn try_with_labels(labels: &[(&str, &str)]) -> Result<Tag, TagError> {
        intern_set(labels).map(Tag)
    }

    /// The labels of this tag, sorted by key (`[("tag", name)]` for a plain tag, empty for
    /// [`Tag::UNTAGGED`]).
    pub fn labels(self) -> Vec<(String, String)> {
        let set = profiler_scope(|| {
            let list = NAMES.lock();
            Owned::new(
                list.as_ref()
                    .and_then(|n| n.labels.get(self.0 as usize).cloned()),
            )
        });
        let out = set
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        out
    }

    /// Makes this the current thread's tag until the guard drops.
    pub fn enter(self) -> TagGuard {
        TagGuard {
            prev: set_current(self.0),
            _not_send: PhantomData,
        }
    }

    /// The interned id (0 = untagged): the index into the profile's tag names.
    pub fn id(self) -> u32 {
        self.0
    }

    /// The name (`""` for [`Tag::UNTAGGED`]).
    pub fn name(self) -> String {
        // The `Arc` clone is made inside the guard; the table keeps the name alive, so dropping
        // it frees nothing, but keep the rule simple: it is the profiler's.
        let name = profiler_scope(|| {
            let list = NAMES.lock();
            Owned::new(
                list.as_ref()
                    .and_then(|n| n.list.get(self.0 as usize).cloned()),
            )
        });
        name.as_deref().unwrap_or("").to_string()
    }
}

/// Sets this thread's tag id, returns the previous one: for scopes that cannot hold a
/// [`TagGuard`] (the `tracing` layer's enter and exit callbacks).
#[cfg(feature = "tracing")]
pub(crate) fn swap_current(id: u32) -> u32 {
    set_current(id)
}

/// Sets this thread's tag id, returns the previous one.
fn set_current(id: u32) -> u32 {
    THREAD.with(|t| {
        let prev = t.tag.replace(id);
        if prev != id {
            if let Some(slot) = crate::thread::current_slot(t) {
                counters::switch_tag(slot, id);
            }
        }
        prev
    })
}

/// Restores the previous tag of this thread when dropped. Not `Send`: it belongs to the thread
/// whose tag it set. Guards nest; drop them in reverse order (as scopes do). To tag work across
/// `.await` points use [`TagFutureExt::tagged`], not a guard held across them.
#[must_use = "the tag is in force only while the guard lives"]
pub struct TagGuard {
    prev: u32,
    _not_send: PhantomData<*const ()>,
}

impl Drop for TagGuard {
    fn drop(&mut self) {
        set_current(self.prev);
    }
}

impl fmt::Debug for TagGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagGuard").finish_non_exhaustive()
    }
}

/// Tags this thread's allocations with `name` until the guard drops (innermost guard wins).
/// Never fails; see [`Tag::new`] for what happens to empty, over-long and excess names.
///
/// ```
/// let _g = heapsight::tag("cache-rebuild");
/// let v: Vec<u8> = Vec::with_capacity(1024); // counted for "cache-rebuild"
/// # drop(v);
/// ```
pub fn tag(name: &str) -> TagGuard {
    Tag::new(name).enter()
}

/// Like [`tag`], but returns an error instead of truncating, untagging or overflowing.
pub fn try_tag(name: &str) -> Result<TagGuard, TagError> {
    Tag::try_new(name).map(Tag::enter)
}

/// Runs `f` with this thread's allocations tagged `name`.
pub fn with_tag<R>(name: &str, f: impl FnOnce() -> R) -> R {
    let _g = tag(name);
    f()
}

/// A future whose every poll runs with a tag in force; from [`TagFutureExt::tagged`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Tagged<F> {
    tag: Tag,
    inner: F,
}

impl<F> Tagged<F> {
    /// The tag this future polls under.
    pub fn tag(&self) -> Tag {
        self.tag
    }
}

impl<F: Future> Future for Tagged<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: structural pinning of `inner`: it is never moved out of a pinned `Tagged` (no
        // method hands it out by value or `&mut`, and `Tagged` has no `Drop` impl), and `Tagged`
        // is `Unpin` only when `F` is (auto trait).
        let this = unsafe { self.get_unchecked_mut() };
        let _g = this.tag.enter();
        // SAFETY: see above; `this.inner` stays pinned for as long as `self` is.
        unsafe { Pin::new_unchecked(&mut this.inner) }.poll(cx)
    }
}

/// Tags futures: `fut.tagged("name")` sets the tag around every poll, so it follows the task
/// across `.await` points and across the worker threads of any runtime. Std only.
///
/// ```
/// use heapsight::TagFutureExt;
/// async fn handle() -> Vec<u8> { vec![0; 64] }
/// let fut = handle().tagged("request:/search");
/// # drop(fut);
/// ```
pub trait TagFutureExt: Future + Sized {
    /// Wraps `self` so that each poll runs under the tag `name` (interned now, once).
    fn tagged(self, name: &str) -> Tagged<Self> {
        self.tagged_with(Tag::new(name))
    }

    /// Wraps `self` so that each poll runs under an already interned tag.
    fn tagged_with(self, tag: Tag) -> Tagged<Self> {
        Tagged { tag, inner: self }
    }
}

impl<F: Future> TagFutureExt for F {}

/// Per-tag totals, from [`tag_stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TagStats {
    /// The tag's name.
    pub name: String,
    /// Its id (index into the profile's tag names).
    pub id: u32,
    /// Allocations made under the tag, exact (all threads, since start-up).
    pub alloc_objects: u64,
    /// Bytes allocated under the tag, exact.
    pub alloc_bytes: u64,
    /// Estimated blocks allocated under the tag and live now (sampled; see the module docs:
    /// unsampled frees are not attributed).
    pub inuse_objects: u64,
    /// Estimated bytes allocated under the tag and live now (sampled).
    pub inuse_bytes: u64,
    /// Samples taken under the tag since start-up (freed ones included).
    pub samples: u64,
    /// Samples taken under the tag whose block is still live: the precision of the in-use
    /// estimates (relative error about `1/sqrt(live_samples)`).
    pub live_samples: u64,
}

/// Every tag interned so far, in id order, with exact allocation counts and sampled in-use
/// estimates. Lock-free for the counts; copies the site table's buckets under its lock briefly.
/// The returned vector is ordinary (counted) program memory.
pub fn tag_stats() -> Vec<TagStats> {
    let names = names();
    let mut out: Vec<TagStats> = names
        .iter()
        .enumerate()
        .skip(1)
        .map(|(id, n)| TagStats {
            name: n.to_string(),
            id: id as u32,
            alloc_objects: 0,
            alloc_bytes: 0,
            inuse_objects: 0,
            inuse_bytes: 0,
            samples: 0,
            live_samples: 0,
        })
        .collect();
    let mut exact = [(0u64, 0u64); MAX_TAGS];
    counters::add_tag_totals(&mut exact[..names.len()]);
    let mut est = [(0f64, 0f64, 0u64, 0u64); MAX_TAGS];
    profiler_scope(|| {
        for b in crate::sites::buckets() {
            let tag = b.tag as usize;
            if tag == 0 || tag >= names.len() {
                continue;
            }
            let e = crate::sites::estimates(b.size, b.rate, b.allocs, b.frees);
            let t = &mut est[tag];
            t.0 += e.inuse_objects;
            t.1 += e.inuse_bytes;
            t.2 += b.allocs;
            t.3 += b.allocs.saturating_sub(b.frees);
        }
    });
    for s in &mut out {
        let i = s.id as usize;
        (s.alloc_objects, s.alloc_bytes) = exact[i];
        s.inuse_objects = est[i].0.round() as u64;
        s.inuse_bytes = est[i].1.round() as u64;
        s.samples = est[i].2;
        s.live_samples = est[i].3;
    }
    // The overflow tag is interned up front; it is only news once something landed in it.
    out.retain(|s| s.id != OVERFLOW_ID || s.alloc_objects > 0 || s.samples > 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_at_a_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let t = truncate(&long);
        assert!(t.len() <= MAX_TAG_LEN && t.len() > MAX_TAG_LEN - 2);
        assert!(long.starts_with(t));
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn errors_are_typed_and_displayed() {
        assert_eq!(Tag::try_new(""), Err(TagError::Empty));
        let long = "x".repeat(MAX_TAG_LEN + 1);
        assert_eq!(
            Tag::try_new(&long),
            Err(TagError::TooLong {
                len: MAX_TAG_LEN + 1
            })
        );
        assert!(TagError::TooLong { len: 200 }.to_string().contains("200"));
        assert_eq!(Tag::new(""), Tag::UNTAGGED);
        let t = Tag::new(&long);
        assert_eq!(t, Tag::new(&long[..MAX_TAG_LEN]));
        assert_eq!(t.name().len(), MAX_TAG_LEN);
    }

    #[test]
    fn label_sets_intern_in_any_order() {
        let a = Tag::with_labels(&[("route", "/a"), ("tenant", "t1")]);
        assert_eq!(Tag::with_labels(&[("tenant", "t1"), ("route", "/a")]), a);
        assert_ne!(Tag::with_labels(&[("route", "/a")]), a);
        assert_eq!(a.name(), "route=/a,tenant=t1");
        assert_eq!(
            a.labels(),
            [
                ("route".into(), "/a".into()),
                ("tenant".into(), "t1".into())
            ]
        );
        // A plain tag is the set {tag: name}.
        assert_eq!(
            Tag::with_labels(&[(TAG_KEY, "plain-x")]),
            Tag::new("plain-x")
        );
        assert_eq!(
            Tag::new("plain-x").labels(),
            [("tag".into(), "plain-x".into())]
        );
        // Names and sets cannot collide through the encoding.
        assert_ne!(Tag::new("route=/a,tenant=t1"), a);
    }

    #[test]
    fn label_sets_are_bounded() {
        let many: Vec<(String, String)> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(
            Tag::try_with_labels(&many),
            Err(TagError::TooManyLabels {
                count: MAX_LABELS + 1
            })
        );
        assert_eq!(Tag::with_labels(&many).labels().len(), MAX_LABELS);
        for bad in ["", "bytes"] {
            assert_eq!(
                Tag::try_with_labels(&[(bad, "v")]),
                Err(TagError::BadLabelKey { key: bad.into() })
            );
        }
        assert!(Tag::try_with_labels(&[("k", "1"), ("k", "2")]).is_err());
        assert_eq!(Tag::try_with_labels(&[]), Err(TagError::Empty));
        assert_eq!(Tag::with_labels(&[("bytes", "x")]), Tag::UNTAGGED);
        assert_eq!(
            Tag::with_labels(&[("k", "1"), ("k", "2")]).labels().len(),
            1
        );
        let long_key = "k".repeat(MAX_LABEL_KEY_LEN + 1);
        assert!(Tag::try_with_labels(&[(&long_key, "v")]).is_err());
    }

    #[test]
    fn interning_is_stable() {
        let a = Tag::new("unit-a");
        assert_eq!(Tag::new("unit-a"), a);
        assert_ne!(Tag::new("unit-b"), a);
        assert_eq!(a.name(), "unit-a");
        assert!(a.id() > OVERFLOW_ID);
    }
}
