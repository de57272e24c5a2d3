//! DWARF look-ups for a batch of addresses, streaming: only the compilation units that hold one
//! of the addresses are read, each in one pass over its entries and one over its line program,
//! and nothing is kept but the answers.
//!
//! `.debug_aranges` (about 1% of the debug info) says which unit holds an address. Each such unit
//! is walked once: every `DW_TAG_subprogram` / `DW_TAG_inlined_subroutine` whose ranges contain a
//! wanted address extends that address's chain of nested functions, and the line program's rows
//! give the innermost `file:line`. Memory is a few words per address; the debug sections are read
//! in place from the file mapping. `addr2line::Context` instead reads the ranges of every unit
//! up front (60 ms and 10 MB of heap plus most of the debug sections' pages for a 15 MB binary,
//! measured in docs/symbols.md); it serves as the oracle of this module's test. Addresses that
//! `.debug_aranges` does not cover are looked for in each unit's root DIE ranges (one entry per
//! unit).
use gimli::AttributeValue;

use crate::symbols::Symbol;

pub(crate) type Reader<'a> = gimli::EndianSlice<'a, gimli::RunTimeEndian>;

/// One function DIE around an address: its depth, its entry, and for an inlined call, the call
/// site (file index, line).
#[derive(Clone, Copy)]
struct Hit {
    depth: isize,
    entry: gimli::UnitOffset,
    call: Option<(u64, u32)>,
}

/// Frames (innermost first) for each of `addrs` (link-time addresses); `None` for those in no
/// unit. An address inside a unit but no function gets what the line table knows, under the
/// name `??`.
pub(crate) fn resolve(dwarf: &gimli::Dwarf<Reader<'_>>, addrs: &[u64]) -> Vec<Option<Vec<Symbol>>> {
    let mut out: Vec<Option<Vec<Symbol>>> = vec![None; addrs.len()];
    // Sorted (address, index) pairs, so a range finds its addresses by binary search.
    let mut sorted: Vec<(u64, usize)> = addrs.iter().copied().zip(0..).collect();
    sorted.sort_unstable();
    let mut unit_of: Vec<Option<gimli::DebugInfoOffset>> = vec![None; addrs.len()];
    // Units with aranges, sorted: `.debug_aranges` describes them fully.
    let mut described: Vec<usize> = Vec::new();
    let mut headers = dwarf.debug_aranges.headers();
    while let Ok(Some(h)) = headers.next() {
        described.push(h.debug_info_offset().0);
        let mut entries = h.entries();
        while let Ok(Some(e)) = entries.next() {
            let r = e.range();
            for &(_, i) in in_range(&sorted, r.begin, r.end) {
                unit_of[i] = Some(h.debug_info_offset());
            }
        }
    }
    if unit_of.iter().any(Option::is_none) {
        described.sort_unstable();
        by_root_ranges(dwarf, &described, &sorted, &mut unit_of);
    }
    let mut units: Vec<gimli::DebugInfoOffset> = unit_of.iter().flatten().copied().collect();
    units.sort_unstable_by_key(|u| u.0);
    units.dedup();
    for u in units {
        let mine: Vec<(u64, usize)> = sorted
            .iter()
            .copied()
            .filter(|&(_, i)| unit_of[i] == Some(u))
            .collect();
        let Ok(header) = dwarf.debug_info.header_from_offset(u) else {
            continue;
        };
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let found = resolve_in_unit(dwarf, &unit, &mine);
        for ((_, i), frames) in mine.iter().zip(found) {
            out[*i] = Some(frames);
        }
    }
    out
}

/// For the addresses `.debug_aranges` does not cover (code in units without an entry there, or
/// without DWARF such as the C `main` shim): the unit whose root DIE's ranges hold them, among
/// the units not in `described` (sorted `.debug_info` offsets of the units aranges cover).
/// Reads those units' headers and first entries only.
fn by_root_ranges(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    described: &[usize],
    sorted: &[(u64, usize)],
    unit_of: &mut [Option<gimli::DebugInfoOffset>],
) {
    let mut headers = dwarf.units();
    while let Ok(Some(h)) = headers.next() {
        // `units()` walks `.debug_info`, so the section offset is a `.debug_info` offset.
        let off = gimli::DebugInfoOffset(h.offset().0);
        if described.binary_search(&off.0).is_ok() {
            continue;
        }
        // Most such units hold no code (types, or generic code inlined elsewhere): their root
        // has neither `DW_AT_high_pc` nor `DW_AT_ranges`, and is skipped before the full unit (line program header,
        // strings) is read.
        let has_code = h.abbreviations(&dwarf.debug_abbrev).is_ok_and(|abbrevs| {
            let mut entries = h.entries(&abbrevs);
            matches!(entries.next_dfs(), Ok(Some(root))
                if root.attr_value(gimli::DW_AT_high_pc).is_some()
                    || root.attr_value(gimli::DW_AT_ranges).is_some())
        });
        if !has_code {
            continue;
        }
        let Ok(unit) = dwarf.unit(h) else {
            continue;
        };
        let mut cursor = unit.entries();
        let Ok(Some(root)) = cursor.next_dfs() else {
            continue;
        };
        let Ok(mut ranges) = dwarf.die_ranges(&unit, root) else {
            continue;
        };
        while let Ok(Some(r)) = ranges.next() {
            for &(_, i) in in_range(sorted, r.begin, r.end) {
                unit_of[i].get_or_insert(off);
            }
        }
    }
}

/// The entries of `sorted` with an address in `begin..end`.
fn in_range(sorted: &[(u64, usize)], begin: u64, end: u64) -> &[(u64, usize)] {
    let lo = sorted.partition_point(|&(a, _)| a < begin);
    let hi = sorted.partition_point(|&(a, _)| a < end);
    &sorted[lo..hi.max(lo)]
}

fn resolve_in_unit(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    mine: &[(u64, usize)],
) -> Vec<Vec<Symbol>> {
    let n = mine.len();
    // Chains of nested function DIEs per address, outermost first.
    let mut chains: Vec<Vec<Hit>> = vec![Vec::new(); n];
    let mut cursor = unit.entries();
    while let Ok(Some(entry)) = cursor.next_dfs() {
        let tag = entry.tag();
        if tag != gimli::DW_TAG_subprogram && tag != gimli::DW_TAG_inlined_subroutine {
            continue;
        }
        let Ok(mut ranges) = dwarf.die_ranges(unit, entry) else {
            continue;
        };
        let call = (tag == gimli::DW_TAG_inlined_subroutine).then(|| {
            let file = match entry.attr_value(gimli::DW_AT_call_file) {
                Some(AttributeValue::FileIndex(f)) => f,
                Some(v) => v.udata_value().unwrap_or(0),
                None => 0,
            };
            let line = entry
                .attr_value(gimli::DW_AT_call_line)
                .and_then(|v| v.udata_value())
                .unwrap_or(0);
            (file, line as u32)
        });
        let depth = entry.depth();
        while let Ok(Some(r)) = ranges.next() {
            let lo = mine.partition_point(|&(a, _)| a < r.begin);
            let hi = mine.partition_point(|&(a, _)| a < r.end);
            for chain in &mut chains[lo..hi.max(lo)] {
                while chain.last().is_some_and(|h| h.depth >= depth) {
                    chain.pop();
                }
                chain.push(Hit {
                    depth,
                    entry: entry.offset(),
                    call,
                });
            }
        }
    }
    let lines = line_rows(dwarf, unit, mine);
    let mut out = Vec::with_capacity(n);
    for (chain, loc) in chains.into_iter().zip(lines) {
        if chain.is_empty() {
            // No function DIE: keep what the line table says; the caller fills in a name.
            out.push(vec![Symbol {
                function: "??".into(),
                file: loc.0,
                line: loc.1,
            }]);
            continue;
        }
        let mut frames = Vec::with_capacity(chain.len());
        // Innermost first: its location is the line table's; each caller's is the call site
        // of the inlined function just inside it.
        let mut location = loc;
        for h in chain.iter().rev() {
            frames.push(Symbol {
                function: name_of(dwarf, unit, h.entry, 0).unwrap_or_else(|| "??".into()),
                file: location.0.take(),
                line: location.1,
            });
            location = match h.call {
                Some((file, line)) => (file_name(dwarf, unit, file), (line != 0).then_some(line)),
                None => (None, None),
            };
        }
        out.push(frames);
    }
    out
}

/// The innermost `file:line` of each of `mine`, from one pass over the unit's line program: an
/// address belongs to the last row at or below it in its sequence.
fn line_rows(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    mine: &[(u64, usize)],
) -> Vec<(Option<String>, Option<u32>)> {
    let mut out: Vec<(Option<String>, Option<u32>)> = vec![(None, None); mine.len()];
    let mut found: Vec<Option<(u64, u32)>> = vec![None; mine.len()];
    let Some(program) = unit.line_program.clone() else {
        return out;
    };
    let mut rows = program.rows();
    // The previous row of the current sequence: address, file index, line.
    let mut prev: Option<(u64, u64, u32)> = None;
    while let Ok(Some((_, row))) = rows.next_row() {
        if let Some((start, file, line)) = prev {
            if row.address() > start {
                let lo = mine.partition_point(|&(a, _)| a < start);
                let hi = mine.partition_point(|&(a, _)| a < row.address());
                for f in &mut found[lo..hi.max(lo)] {
                    *f = Some((file, line));
                }
            }
        }
        prev = if row.end_sequence() {
            None
        } else {
            Some((
                row.address(),
                row.file_index(),
                row.line().map_or(0, |l| l.get() as u32),
            ))
        };
    }
    for (o, f) in out.iter_mut().zip(found) {
        if let Some((file, line)) = f {
            *o = (file_name(dwarf, unit, file), (line != 0).then_some(line));
        }
    }
    out
}

/// A file of the unit's line program, as a path (the compilation directory, the file's
/// directory and its name, each replacing the path so far when absolute), as `addr2line` does.
fn file_name(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    index: u64,
) -> Option<String> {
    let header = unit.line_program.as_ref()?.header();
    let file = header.file(index)?;
    let mut path = unit
        .comp_dir
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    let push = |path: &mut String, p: &str| {
        if p.starts_with('/') {
            *path = p.to_string();
        } else {
            if !path.is_empty() && !path.ends_with('/') {
                path.push('/');
            }
            path.push_str(p);
        }
    };
    // Directory 0 is the compilation directory.
    if file.directory_index() != 0 {
        if let Some(dir) = file.directory(header) {
            let d = dwarf.attr_string(unit, dir).ok()?;
            push(&mut path, &d.to_string_lossy());
        }
    }
    let name = dwarf.attr_string(unit, file.path_name()).ok()?;
    push(&mut path, &name.to_string_lossy());
    Some(path)
}

/// The demangled name of a function DIE: its linkage name, else its name, else those of the
/// DIE it was inlined from or declared as (`DW_AT_abstract_origin`, `DW_AT_specification`),
/// following at most a few references, in this unit or another.
fn name_of(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    offset: gimli::UnitOffset,
    hops: u32,
) -> Option<String> {
    let entry = unit.entry(offset).ok()?;
    for at in [gimli::DW_AT_linkage_name, gimli::DW_AT_MIPS_linkage_name] {
        if let Some(v) = entry.attr_value(at) {
            let s = dwarf.attr_string(unit, v).ok()?;
            return Some(crate::symbols::demangle(&s.to_string_lossy()));
        }
    }
    if let Some(v) = entry.attr_value(gimli::DW_AT_name) {
        let s = dwarf.attr_string(unit, v).ok()?;
        return Some(crate::symbols::demangle(&s.to_string_lossy()));
    }
    if hops >= 4 {
        return None;
    }
    for at in [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification] {
        match entry.attr_value(at) {
            Some(AttributeValue::UnitRef(o)) => return name_of(dwarf, unit, o, hops + 1),
            Some(AttributeValue::DebugInfoRef(o)) => {
                // In another unit: find the unit whose range holds the offset.
                let mut headers = dwarf.units();
                while let Ok(Some(h)) = headers.next() {
                    if let Some(inner) = o.to_unit_offset(&h) {
                        let other = dwarf.unit(h).ok()?;
                        return name_of(dwarf, &other, inner, hops + 1);
                    }
                }
                return None;
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::MappedFile;
    use object::{Object, ObjectSection, ObjectSegment};

    /// Every frame the streaming look-up gives, for addresses spread over this test binary's
    /// code, is what `addr2line::Context` (the naive oracle: it parses everything) gives.
    /// The frames `addr2line` gives, named as heapsight names them.
    fn addr2line_frames(ctx: &addr2line::Context<Reader<'_>>, vaddr: u64, out: &mut Vec<Symbol>) {
        let Ok(mut frames) = ctx.find_frames(vaddr).skip_all_loads() else {
            return;
        };
        while let Ok(Some(f)) = frames.next() {
            let function = f
                .function
                .as_ref()
                .and_then(|n| n.raw_name().ok())
                .map_or_else(|| String::from("??"), |n| crate::symbols::demangle(&n));
            let (file, line) = f
                .location
                .map_or((None, None), |l| (l.file.map(str::to_string), l.line));
            out.push(Symbol {
                function,
                file,
                line,
            });
        }
    }

    #[test]
    fn agrees_with_addr2line_across_the_binary() {
        let exe = std::env::current_exe().unwrap();
        let map = MappedFile::open(exe.to_str().unwrap()).unwrap();
        let file = object::File::parse(map.bytes()).unwrap();
        let endian = if file.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let load = || {
            gimli::Dwarf::load(|id| -> Result<Reader<'_>, ()> {
                let data = file
                    .section_by_name(id.name())
                    .and_then(|s| s.data().ok())
                    .unwrap_or(&[]);
                Ok(gimli::EndianSlice::new(data, endian))
            })
            .unwrap()
        };
        let text = file
            .segments()
            .find(|s| file.entry() >= s.address() && file.entry() < s.address() + s.size())
            .unwrap();
        let addrs: Vec<u64> = (text.address()..text.address() + text.size())
            .step_by(211)
            .collect();
        let ours = resolve(&load(), &addrs);
        let ctx = addr2line::Context::from_dwarf(load()).unwrap();
        let mut compared = 0;
        for (a, got) in addrs.iter().zip(ours) {
            let Some(got) = got else { continue };
            let mut want = Vec::new();
            addr2line_frames(&ctx, *a, &mut want);
            if want.is_empty() {
                continue;
            }
            assert_eq!(got, want, "at {a:#x}");
            compared += 1;
        }
        assert!(compared > 1000, "only {compared} addresses compared");
    }
}
