//! The pprof encoder: `perftools.profiles.Profile` (google/pprof `proto/profile.proto`) in the
//! layout of Go's heap profile (`runtime/pprof/protomem.go` `writeHeapProto`, `proto.go`).
//!
//! Field numbers are written out below next to the message they belong to, copied from
//! profile.proto. What a Go heap profile has, and so what we write:
//!
//! * `sample_type` = `alloc_objects/count, alloc_space/bytes, inuse_objects/count,
//!   inuse_space/bytes`, in that order; `period_type = space/bytes`; `period` = the sample rate.
//! * One `Sample` per bucket (stack × size × rate × tag): location ids leaf first, the four
//!   values *already unbiased* (pprof never rescales a proto profile: the weights were applied
//!   per sample when the snapshot was taken, see `sites::estimates`), rounded to integers; a
//!   numeric label `bytes` = the allocation size; when the bucket is tagged, one string label per
//!   pair of its tag's label set (`tag` = the name for a plain tag).
//! * `Location`: one per distinct return address, `address` = return address − 1 (inside the
//!   call instruction, so symbolizers report the call's line), inlined functions as several
//!   `Line`s, innermost first. Ids start at 1 (0 means "none" in proto3).
//! * `Mapping`: the executable mappings of `/proc/self/maps` with their ELF build IDs;
//!   `has_functions` & co. only when the locations in that mapping were symbolized in process, so
//!   that `go tool pprof BINARY PROFILE` symbolizes the others itself.
//! * Unsymbolized profiles (`profile_unsymbolized()`) keep heapsight's and the allocator's own
//!   frames and send `drop_frames` so pprof removes them once it has names for them.
use std::collections::HashMap;
use std::io::{self, Write};

use super::folded::{closing_bracket, SampleFrames};
use super::maps::Mapping;
use super::proto::Encoder;
use super::SampleType;
use crate::sites::FxBuild;
use crate::snapshot::HeapProfile;
use crate::symbols::{drop_frames_regex, Frame};

/// `drop_frames` for the symbolizer of the `go tool pprof` that ships with Go: it names Rust
/// functions by their DWARF short name (`take_sample`, not `heapsight::alloc::take_sample`), which
/// [`drop_frames_regex`] cannot match. Every sampled stack passes through `take_sample` (never
/// inlined), and pprof drops a matching frame *and everything leaf-ward of it*, so this one name
/// removes heapsight's frames under both symbolizers.
const SHORT_NAME_DROP: &str = "take_sample";

/// The growth machinery by name, for the `drop_frames` of unsymbolized profiles, where the
/// in-process program view (`program::view`) cannot be applied: pprof symbolizes, then drops,
/// on each stack, the rootmost frame matching `^(...)$` below a frame that does not match, and
/// everything leaf-ward of it. So the list names liballoc's modules that only run library code
/// (not `alloc::boxed`: `<Box<F> as FnOnce>::call_once` starts every thread's closure, and
/// matching it would drop the whole thread), hashbrown, std's collections, inherent methods of
/// `str` and slices (`str::repeat` as `/debug/pprof/symbol` names it), a trait method of alloc
/// on a generic type (`T as alloc::string::ToString::to_string`), and the short names Go's own
/// DWARF reader gives the growth functions (it names `finish_grow`, not its path). Unlike the
/// in-process view, a match that calls back into the program (`Vec::extend` running a closure
/// that allocates) charges the program's caller: documented in docs/profiles.md.
const MACHINERY_DROP: &[&str] = &[
    r"alloc::(raw_vec|alloc|fmt|string|vec|str|slice|collections|borrow|ffi)::.*",
    r"[^ ]* as alloc::.*",
    r"hashbrown::.*",
    r"std::collections::.*",
    r"str::.*",
    r"\[[^\]]*\]::.*",
    "finish_grow",
    "grow_one",
    "grow_amortized",
    "grow_exact",
    "try_allocate_in",
    "reserve_rehash",
    "do_alloc",
    "format_inner",
    "do_reserve_and_handle",
    "rustc_entry",
];

/// The string label naming what the library frames dropped from a stack did (see
/// `program::operation`): `go tool pprof -tags` splits the profile by it.
pub(crate) const OP_KEY: &str = "op";

/// The `Function.name` pprof displays. pprof shortens C++-looking names by deleting everything
/// in angle brackets, which turns Rust's `<alloc::raw_vec::RawVec<u8>>::grow_one` into
/// `::grow_one`. So the name loses its outer `<...>` wrapper (`alloc::raw_vec::RawVec<u8>::grow_one`,
/// which pprof shows as `alloc::raw_vec::RawVec::grow_one`; `<u64 as core::fmt::Display>::fmt`
/// becomes `u64 as core::fmt::Display::fmt`); `system_name` keeps the exact demangled name.
/// A turbofish loses its `::` for the same reason: pprof would show
/// `std::panic::catch_unwind::<F, R>` as `std::panic::catch_unwind::`, with a dangling `::`, and
/// shows `std::panic::catch_unwind<F, R>` as `std::panic::catch_unwind`.
pub(crate) fn display_name(function: &str) -> String {
    let name = outer_brackets_removed(function);
    if name.contains("::<") {
        name.replace("::<", "<")
    } else {
        name
    }
}

fn outer_brackets_removed(function: &str) -> String {
    if !function.starts_with('<') {
        return function.to_string();
    }
    match closing_bracket(function, 0) {
        Some(i) if function[i + 1..].starts_with("::") => {
            format!("{}{}", &function[1..i], &function[i + 1..])
        }
        _ => function.to_string(),
    }
}

/// The string table: `string_table[0]` must be "" (index 0 means "unset" everywhere).
#[derive(Default)]
pub(crate) struct Strings {
    index: HashMap<String, i64, FxBuild>,
    pub list: Vec<String>,
}

impl Strings {
    pub fn new() -> Self {
        let mut s = Strings::default();
        s.intern("");
        s
    }

    /// Index of `s`, adding it on first use.
    pub fn intern(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.list.len() as i64;
        self.list.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// Writes the gzip-compressed profile (what the format requires on disk and on the wire).
pub(crate) fn write_gzipped(
    p: &HeapProfile,
    default_type: Option<SampleType>,
    mappings: &[Mapping],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let raw = encode(p, default_type, mappings);
    // Go writes its profiles with gzip.BestSpeed too: the encoder is most of a dump's time
    // otherwise, and the size gain of harder levels is small on this data.
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    gz.write_all(&raw)?;
    gz.finish()?;
    Ok(())
}

/// Per-mapping facts gathered from its locations, for the `has_*` flags.
#[derive(Clone, Copy)]
struct Resolution {
    used: bool,
    functions: bool,
    filenames: bool,
    lines: bool,
    inline: bool,
}

/// The uncompressed `Profile` message.
pub(crate) fn encode(
    p: &HeapProfile,
    default_type: Option<SampleType>,
    mappings: &[Mapping],
) -> Vec<u8> {
    let mut st = Strings::new();
    let mut e = Encoder::default();

    // Profile.sample_type = 1: ValueType { type = 1, unit = 2 }.
    for t in SampleType::ALL {
        let (ty, unit) = (st.intern(t.name()), st.intern(t.unit()));
        e.message(1, |e| {
            e.i64_opt(1, ty);
            e.i64_opt(2, unit);
        });
    }

    // Locations: one per (return address, symbols kept), ids in order of first use.
    let mut loc_ids: HashMap<(usize, usize), u64, FxBuild> = HashMap::default();
    let mut locs: Vec<&Frame> = Vec::new();
    let bytes_key = st.intern("bytes");
    // Each tag's string labels as (key, value) string-table indices, interned once per tag.
    let tag_labels: Vec<Vec<(i64, i64)>> = (0..p.tag_names.len())
        .map(|id| match p.tag_labels.get(id) {
            _ if id == 0 => Vec::new(),
            Some(set) if !set.is_empty() => set
                .iter()
                .map(|(k, v)| (st.intern(k), st.intern(v)))
                .collect(),
            _ => p.tag_name(id as u32).map_or(Vec::new(), |name| {
                vec![(st.intern(crate::tags::TAG_KEY), st.intern(name))]
            }),
        })
        .collect();
    // Each stack's `op` label (what the dropped library frames did), interned once per stack.
    let op_key = st.intern(OP_KEY);
    let ops: Vec<i64> = p
        .stacks
        .iter()
        .map(|s| super::program::operation(s).map_or(0, |op| st.intern(&op)))
        .collect();
    let mut ids: Vec<u64> = Vec::new();
    let frames = SampleFrames::new(p);
    for r in &p.buckets {
        ids.clear();
        for f in frames.of(p, r.stack) {
            let next = locs.len() as u64 + 1;
            let id = *loc_ids
                .entry((f.address, f.symbols.len()))
                .or_insert_with(|| {
                    locs.push(f);
                    next
                });
            ids.push(id);
        }
        // Profile.sample = 2: Sample { location_id = 1, value = 2, label = 3 }.
        let size = r.label_size();
        let labels: &[(i64, i64)] = tag_labels.get(r.tag as usize).map_or(&[], Vec::as_slice);
        e.message(2, |e| {
            e.packed(1, ids.iter().copied());
            e.packed(
                2,
                SampleType::ALL.map(|t| t.of(&r.est).round() as i64 as u64),
            );
            // Label { key = 1, str = 2, num = 3, num_unit = 4 }.
            e.message(3, |e| {
                e.i64_opt(1, bytes_key);
                e.i64_opt(3, size);
            });
            if let Some(&op) = ops.get(r.stack).filter(|&&op| op != 0) {
                e.message(3, |e| {
                    e.i64_opt(1, op_key);
                    e.i64_opt(2, op);
                });
            }
            for &(key, value) in labels {
                e.message(3, |e| {
                    e.i64_opt(1, key);
                    e.i64_opt(2, value);
                });
            }
        });
    }

    // Profile.location = 4 and Profile.function = 5.
    let mut fn_ids: HashMap<(i64, i64), u64, FxBuild> = HashMap::default();
    let mut functions: Vec<(i64, i64)> = Vec::new();
    // Mappings where a written location has no name: only their symbolization notes are
    // worth a comment (pprof prints every comment above every report).
    let mut unnamed = vec![false; mappings.len()];
    let mut res = vec![
        Resolution {
            used: false,
            functions: true,
            filenames: true,
            lines: true,
            inline: false
        };
        mappings.len()
    ];
    for (i, f) in locs.iter().enumerate() {
        // The call instruction, not the return address (0 for the pseudo-location).
        let addr = (f.address as u64).saturating_sub(1);
        let m = mappings
            .iter()
            .position(|m| m.start <= addr && addr < m.limit);
        let named: Vec<_> = f.symbols.iter().filter(|s| s.function != "??").collect();
        let mut lines: Vec<(u64, i64)> = Vec::with_capacity(named.len());
        for s in &named {
            let key = (
                st.intern(&s.function),
                s.file.as_deref().map_or(0, |file| st.intern(file)),
            );
            let next = functions.len() as u64 + 1;
            let id = *fn_ids.entry(key).or_insert_with(|| {
                functions.push(key);
                next
            });
            lines.push((id, s.line.unwrap_or(0) as i64));
        }
        if let Some(m) = m {
            unnamed[m] |= named.is_empty();
            let r = &mut res[m];
            r.used = true;
            r.functions &= !named.is_empty();
            r.filenames &= !named.is_empty() && named.iter().all(|s| s.file.is_some());
            r.lines &= !named.is_empty() && named.iter().all(|s| s.line.is_some());
            r.inline |= named.len() > 1;
        }
        // Location { id = 1, mapping_id = 2, address = 3, line = 4 }; Line { function_id = 1,
        // line = 2 }.
        e.message(4, |e| {
            e.u64(1, i as u64 + 1);
            e.u64_opt(2, m.map_or(0, |m| m as u64 + 1));
            e.u64_opt(3, addr);
            for (fid, line) in &lines {
                e.message(4, |e| {
                    e.u64_opt(1, *fid);
                    e.i64_opt(2, *line);
                });
            }
        });
    }
    for (i, (system_name, file)) in functions.iter().enumerate() {
        let full = st.list[*system_name as usize].clone();
        let name = st.intern(&display_name(&full));
        // Function { id = 1, name = 2, system_name = 3, filename = 4, start_line = 5 }.
        e.message(5, |e| {
            e.u64(1, i as u64 + 1);
            e.i64_opt(2, name);
            e.i64_opt(3, *system_name);
            e.i64_opt(4, *file);
        });
    }

    // Profile.mapping = 3: Mapping { id = 1, memory_start = 2, memory_limit = 3, file_offset = 4,
    // filename = 5, build_id = 6, has_functions = 7, has_filenames = 8, has_line_numbers = 9,
    // has_inline_frames = 10 }.
    for (i, m) in mappings.iter().enumerate() {
        let (file, build_id) = (st.intern(&m.file), st.intern(&m.build_id));
        let r = res[i];
        let symbolized = p.symbolized && r.used && r.functions;
        e.message(3, |e| {
            e.u64(1, i as u64 + 1);
            e.u64_opt(2, m.start);
            e.u64_opt(3, m.limit);
            e.u64_opt(4, m.offset);
            e.i64_opt(5, file);
            e.i64_opt(6, build_id);
            e.bool_opt(7, symbolized);
            e.bool_opt(8, symbolized && r.filenames);
            e.bool_opt(9, symbolized && r.lines);
            e.bool_opt(10, symbolized && r.inline);
        });
    }

    let drop_frames = if p.symbolized {
        0
    } else {
        let mut re = drop_frames_regex();
        re.pop(); // `)`
        for alt in [SHORT_NAME_DROP].iter().chain(MACHINERY_DROP) {
            re.push('|');
            re.push_str(alt);
        }
        re.push(')');
        st.intern(&re)
    };
    let (space, bytes) = (st.intern("space"), st.intern("bytes"));
    let default_type = default_type.map_or(0, |t| st.intern(t.name()));
    // A note is about one file (`path: what is missing`): written when that file holds a
    // location of this profile that has no name, the case where it explains something.
    let comments: Vec<i64> = p
        .symbol_notes
        .iter()
        .filter(|n| {
            mappings.iter().zip(&unnamed).any(|(m, &u)| {
                u && n
                    .strip_prefix(m.file.as_str())
                    .is_some_and(|r| r.starts_with(": "))
            })
        })
        .chain(p.notes.iter())
        .map(|n| st.intern(n))
        .collect();

    // Profile.string_table = 6.
    for s in &st.list {
        e.string(6, s);
    }
    e.i64_opt(7, drop_frames); // drop_frames
    e.i64_opt(9, p.time_nanos); // time_nanos
    e.i64_opt(10, p.duration_nanos); // duration_nanos
    e.message(11, |e| {
        // period_type
        e.i64_opt(1, space);
        e.i64_opt(2, bytes);
    });
    e.i64_opt(12, p.rate as i64); // period
    for c in comments {
        e.i64_opt(13, c); // comment: what symbolization lacked, then the profile's notes
    }
    e.i64_opt(14, default_type); // default_sample_type
    e.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_lose_the_outer_impl_brackets() {
        for (name, want) in [
            (
                "<alloc::raw_vec::RawVec<u8>>::grow_one",
                "alloc::raw_vec::RawVec<u8>::grow_one",
            ),
            (
                "<u64 as core::fmt::Display>::fmt",
                "u64 as core::fmt::Display::fmt",
            ),
            ("app::build", "app::build"),
            (
                "std::panic::catch_unwind::<std::rt::lang_start_internal::{closure#0}, isize>",
                "std::panic::catch_unwind<std::rt::lang_start_internal::{closure#0}, isize>",
            ),
            (
                "<alloc::vec::Vec<u8>>::extend::<core::iter::Once<u8>>",
                "alloc::vec::Vec<u8>::extend<core::iter::Once<u8>>",
            ),
            ("<unbalanced", "<unbalanced"),
            ("<T as Tr<U>>", "<T as Tr<U>>"),
        ] {
            assert_eq!(display_name(name), want, "{name}");
        }
    }

    #[test]
    fn string_table_dedupes_like_a_linear_search() {
        let words = ["", "a", "bytes", "a", "", "space", "bytes", "ä", "a"];
        let mut st = Strings::new();
        // Oracle: first-occurrence position in a list that starts with "".
        let mut oracle: Vec<&str> = vec![""];
        for w in words {
            let want = match oracle.iter().position(|o| *o == w) {
                Some(i) => i,
                None => {
                    oracle.push(w);
                    oracle.len() - 1
                }
            };
            assert_eq!(st.intern(w), want as i64, "{w:?}");
        }
        assert_eq!(st.list, oracle);
        assert_eq!(st.list[0], "");
    }
}
