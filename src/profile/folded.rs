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
use std::fmt::Write as _;
use std::io::{self, Write};

use super::SampleType;
use crate::snapshot::HeapProfile;
use crate::symbols::Frame;

/// Name of the overflow pseudo-site (samples beyond the site cap), which has no frames.
pub(crate) const OVERFLOW_NAME: &str = "[heapsight: sites beyond the cap]";

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

/// The folded lines of `ty`, sorted.
pub(crate) fn lines(p: &HeapProfile, ty: SampleType) -> Vec<String> {
    let mut per_stack = vec![0f64; p.stacks.len()];
    for r in &p.records {
        per_stack[r.stack] += ty.of(&r.est);
    }
    let mut out: Vec<String> = Vec::new();
    for (stack, v) in per_stack.iter().enumerate() {
        let v = v.round() as u64;
        if v == 0 {
            continue;
        }
        let mut s = String::new();
        fold_stack(&p.stacks[stack], &mut s);
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
    let lines = lines(p, ty);
    let mut opts = Options::default();
    opts.title = format!("heapsight {}", ty.name());
    opts.count_name = ty.unit().to_string();
    opts.colors = Palette::Basic(BasicPalette::Mem);
    if lines.is_empty() {
        // inferno refuses empty input; an empty profile still gets a (blank) picture.
        opts.title.push_str(" (no samples)");
        return flamegraph::from_lines(&mut opts, std::iter::once("[no samples] 1"), out);
    }
    flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
}
