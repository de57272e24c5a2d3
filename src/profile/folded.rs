//! Collapsed ("folded") stacks, the input format of Brendan Gregg's `flamegraph.pl` and of
//! `inferno-flamegraph`: one line per stack, frames from the root to the leaf separated by `;`,
//! a space, then the value.
//!
//! Every function of a frame is its own entry, inlined ones included (outermost first), so the
//! graph shows `Vec::push` under the function that pushed even when it was inlined. A frame
//! without symbols shows as its address (`0x...`, the call instruction). `;` inside a name (an
//! array type such as `[u8; 4]`) would split the frame, so it is written as `,`. Values are the
//! unbiased estimates of one [`SampleType`], summed per stack and rounded; zero lines are left
//! out. Lines are sorted, so the output is deterministic.
//!
//! The SVG flamegraph is for people rather than tools: runtime frames below the program's entry
//! are trimmed, names are cleaned, program frames carry `file:line`, and a subtitle states the
//! total, its unit and the sample rate.
use std::fmt::Write as _;
use std::io::{self, Write};

use super::SampleType;
use crate::snapshot::HeapProfile;
use crate::symbols::{Frame, Symbol, Symbols};

/// Name of the overflow pseudo-site (samples beyond the site cap), which has no frames.
pub(crate) const OVERFLOW_NAME: &str = "[heapsight: sites beyond the cap]";

/// The frames a stack-based format (pprof, OTLP, folded, text) writes for a profile stack: its
/// program view (`program::view`: from the program's frame to the outermost frame of its own
/// crate). The overflow pseudo-site has no frames, and a sample without a location would be
/// shown nowhere, so it gets one pseudo-frame (address 0, no mapping) named [`OVERFLOW_NAME`].
/// Built inside the profiler guard.
pub(crate) struct SampleFrames {
    overflow: [Frame; 1],
    views: Vec<Option<Vec<Frame>>>,
}

impl SampleFrames {
    pub(crate) fn new(p: &HeapProfile) -> Self {
        SampleFrames {
            overflow: [Frame {
                address: 0,
                symbols: Symbols::new(vec![Symbol {
                    function: OVERFLOW_NAME.to_string(),
                    file: None,
                    line: None,
                }]),
            }],
            views: super::program::views(&p.stacks),
        }
    }

    /// The frames of stack `stack` of `p`, leaf first.
    pub(crate) fn of<'a>(&'a self, p: &'a HeapProfile, stack: usize) -> &'a [Frame] {
        if stack == 0 {
            &self.overflow
        } else {
            match self.views.get(stack) {
                Some(Some(v)) => v,
                _ => &p.stacks[stack],
            }
        }
    }
}

/// Appends the folded form of `frames` (leaf first) to `s`: root first, `;`-separated.
pub(crate) fn fold_stack(frames: &[Frame], s: &mut String) {
    if frames.is_empty() {
        s.push_str(OVERFLOW_NAME);
        return;
    }
    let mut first = true;
    for f in frames.iter().rev() {
        let mut sep = |s: &mut String| {
            if !first {
                s.push(';');
            }
            first = false;
        };
        if f.symbols.is_empty() {
            sep(s);
            let _ = write!(s, "{:#x}", f.address.wrapping_sub(1));
            continue;
        }
        for sym in f.symbols.iter().rev() {
            sep(s);
            s.extend(sym.function.chars().map(|c| if c == ';' { ',' } else { c }));
        }
    }
}

/// A function name for people: without turbofish arguments (`std::panic::catch_unwind::<F, R>`
/// is `std::panic::catch_unwind`; a type's own arguments, `<Vec<u8>>::push`, stay), and without
/// the artifacts other tools' shortening leaves, a dangling `::` or a trailing ` (inline)`.
pub(crate) fn clean_name(f: &str) -> std::borrow::Cow<'_, str> {
    let mut out = std::borrow::Cow::Borrowed(f);
    if f.contains("::<") {
        let mut s = String::with_capacity(f.len());
        let b = f.as_bytes();
        let mut i = 0;
        while i < f.len() {
            if b[i..].starts_with(b"::<") && i > 0 && b[i - 1] != b'<' && b[i - 1] != b' ' {
                // Skip `::<...>` with its nested brackets.
                let Some(j) = closing_bracket(f, i + 2) else {
                    // Unbalanced: keep the rest as it is.
                    s.push_str(&f[i..]);
                    break;
                };
                i = j + 1;
                continue;
            }
            let c = f[i..].chars().next().unwrap_or(' ');
            s.push(c);
            i += c.len_utf8();
        }
        out = std::borrow::Cow::Owned(s);
    }
    let mut t: &str = out.trim_end();
    loop {
        let before = t.len();
        t = t.strip_suffix("(inline)").unwrap_or(t).trim_end();
        t = t.strip_suffix("::").unwrap_or(t);
        if t.len() == before {
            break;
        }
    }
    if t.len() == out.len() {
        out
    } else {
        std::borrow::Cow::Owned(t.to_string())
    }
}

/// The index of the `>` that closes the `<` at byte `open` of `name` (brackets nest), or `None`
/// if it is never closed.
pub(crate) fn closing_bracket(name: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &c) in name.as_bytes().iter().enumerate().skip(open) {
        match c {
            b'<' => depth += 1,
            b'>' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether `function` is where the runtime hands over to the program's code: every Rust
/// thread, `main`'s included, starts its code through `__rust_begin_short_backtrace`.
#[cfg_attr(not(feature = "flamegraph"), allow(dead_code))]
fn is_entry(function: &str) -> bool {
    let f = clean_name(function);
    f.ends_with("::__rust_begin_short_backtrace") || f == "__rust_begin_short_backtrace"
}

/// Appends the flamegraph form of `frames` (leaf first) to `s`: like [`fold_stack`], but the
/// runtime frames rootward of the program's entry (`_start`, `lang_start`, the thread start-up,
/// the `FnOnce` shims) are left out, names are cleaned, and program frames carry `file:line`.
#[cfg_attr(not(feature = "flamegraph"), allow(dead_code))]
pub(crate) fn fold_stack_for_people(frames: &[Frame], s: &mut String) {
    if frames.is_empty() {
        s.push_str(OVERFLOW_NAME);
        return;
    }
    // Root first, one entry per function (inlined ones included).
    let mut entries: Vec<(usize, Option<&crate::symbols::Symbol>)> = Vec::new();
    for f in frames.iter().rev() {
        if f.symbols.is_empty() {
            entries.push((f.address, None));
        }
        for sym in f.symbols.iter().rev() {
            entries.push((f.address, Some(sym)));
        }
    }
    // Cut at the leafmost entry point, then skip the std/core shims right after it.
    let mut start = entries
        .iter()
        .rposition(|(_, s)| s.is_some_and(|s| is_entry(&s.function)))
        .map_or(0, |i| i + 1);
    while let Some((_, Some(sym))) = entries.get(start) {
        let f = clean_name(&sym.function);
        let shim = f.starts_with("core::ops::function::")
            || f.starts_with("<F as core::ops::function::")
            || f.starts_with("std::panic")
            || f.starts_with("std::panicking");
        if !shim || start + 1 == entries.len() {
            break;
        }
        start += 1;
    }
    for (i, (address, sym)) in entries[start..].iter().enumerate() {
        if i > 0 {
            s.push(';');
        }
        let Some(sym) = sym else {
            let _ = write!(s, "{:#x}", address.wrapping_sub(1));
            continue;
        };
        let name = clean_name(&sym.function);
        s.extend(name.chars().map(|c| if c == ';' { ',' } else { c }));
        if let (Some(file), false) = (&sym.file, super::program::is_library(&name)) {
            let base = file.rsplit('/').next().unwrap_or(file);
            let _ = write!(s, " ({base}:{})", sym.line.unwrap_or(0));
        }
    }
}

/// The folded lines of `ty`, sorted.
pub(crate) fn lines(p: &HeapProfile, ty: SampleType) -> Vec<String> {
    lines_with(p, ty, fold_stack)
}

#[cfg_attr(not(feature = "flamegraph"), allow(dead_code))]
fn lines_with(p: &HeapProfile, ty: SampleType, fold: fn(&[Frame], &mut String)) -> Vec<String> {
    let mut per_stack = vec![0f64; p.stacks.len()];
    for r in &p.buckets {
        per_stack[r.stack] += ty.of(&r.est);
    }
    let mut out: Vec<String> = Vec::new();
    let frames = SampleFrames::new(p);
    for (stack, v) in per_stack.iter().enumerate() {
        let v = v.round() as u64;
        if v == 0 {
            continue;
        }
        let mut s = String::new();
        fold(frames.of(p, stack), &mut s);
        let _ = write!(s, " {v}");
        out.push(s);
    }
    out.sort_unstable();
    out
}

pub(crate) fn write(p: &HeapProfile, ty: SampleType, out: &mut Vec<u8>) -> io::Result<()> {
    for l in lines(p, ty) {
        out.write_all(l.as_bytes())?;
        out.push(b'\n');
    }
    Ok(())
}

/// SVG through inferno, with its memory palette and the sample type's unit.
#[cfg(feature = "flamegraph")]
pub(crate) fn write_flamegraph(
    p: &HeapProfile,
    ty: SampleType,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    use inferno::flamegraph::{self, color::BasicPalette, Options, Palette};
    // Lines with the same stack after trimming merge (sorting puts them side by side, and
    // inferno adds equal stacks up).
    let lines = lines_with(p, ty, fold_stack_for_people);
    let total: f64 = p.buckets.iter().map(|r| ty.of(&r.est)).sum();
    let mut opts = Options::default();
    opts.title = format!("heapsight {}", ty.name());
    opts.subtitle = Some(format!(
        "total {} {}, estimated from samples at one per {} allocated",
        super::top::Amount(total, ty),
        ty.name(),
        super::top::Amount(p.rate as f64, SampleType::AllocSpace),
    ));
    opts.count_name = ty.unit().to_string();
    opts.colors = Palette::Basic(BasicPalette::Mem);
    if lines.is_empty() {
        // inferno refuses empty input; an empty profile still gets a (blank) picture.
        opts.title.push_str(" (no samples)");
        return flamegraph::from_lines(&mut opts, std::iter::once("[no samples] 1"), out);
    }
    flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::Symbol;

    fn frame(address: usize, names: &[(&str, Option<&str>, u32)]) -> Frame {
        Frame {
            address,
            // Innermost first, as `Frame::symbols` is.
            symbols: names
                .iter()
                .map(|&(f, file, line)| Symbol {
                    function: f.to_string(),
                    file: file.map(str::to_string),
                    line: Some(line),
                })
                .collect::<Vec<_>>()
                .into(),
        }
    }

    #[test]
    fn names_lose_dangling_separators() {
        for (name, want) in [
            (
                "std::panic::catch_unwind:: (inline)",
                "std::panic::catch_unwind",
            ),
            ("std::panic::catch_unwind::", "std::panic::catch_unwind"),
            ("app::main", "app::main"),
            ("<T as x::Y>::f", "<T as x::Y>::f"),
            (
                "std::panic::catch_unwind::<std::rt::f::{closure#0}, isize>",
                "std::panic::catch_unwind",
            ),
            (
                "std::panicking::catch_unwind::do_call::<&dyn Fn<(), Output = i32>, i32>",
                "std::panicking::catch_unwind::do_call",
            ),
            ("<alloc::vec::Vec<u8>>::push", "<alloc::vec::Vec<u8>>::push"),
            ("f::<unbalanced", "f::<unbalanced"),
        ] {
            assert_eq!(clean_name(name), want, "{name}");
        }
    }

    #[test]
    fn people_stacks_start_at_the_program() {
        // Leaf first, as captured: growth, program frames, then the runtime below main.
        let frames = [
            frame(
                0x10,
                &[(
                    "alloc::raw_vec::RawVecInner<A>::grow_one",
                    Some("/rustc/raw_vec.rs"),
                    5,
                )],
            ),
            frame(0x20, &[("app::build", Some("/src/app/src/main.rs"), 13)]),
            frame(0x30, &[("app::main", Some("/src/app/src/main.rs"), 30)]),
            frame(
                0x40,
                &[
                    ("core::ops::function::FnOnce::call_once", None, 0),
                    ("std::sys::backtrace::__rust_begin_short_backtrace", None, 0),
                ],
            ),
            frame(0x50, &[("std::rt::lang_start::{{closure}}", None, 0)]),
            frame(0x60, &[("std::panic::catch_unwind:: (inline)", None, 0)]),
            frame(0x70, &[("std::rt::lang_start_internal", None, 0)]),
            frame(0x80, &[("main", None, 0)]),
            frame(0x90, &[("__libc_start_main", None, 0)]),
            frame(0xa0, &[("_start", None, 0)]),
        ];
        let mut s = String::new();
        fold_stack_for_people(&frames, &mut s);
        assert_eq!(
            s,
            "app::main (main.rs:30);app::build (main.rs:13);alloc::raw_vec::RawVecInner<A>::grow_one"
        );
        // No entry point (a foreign thread): nothing is cut.
        let mut s = String::new();
        fold_stack_for_people(&frames[..3], &mut s);
        assert!(s.starts_with("app::main (main.rs:30);"), "{s}");
        // The tool format is unchanged.
        let mut s = String::new();
        fold_stack(&frames, &mut s);
        assert!(s.starts_with("_start;__libc_start_main;main;"), "{s}");
    }
}
