//! The human table: the heaviest sites, each named by the first frame of the program and the
//! growth frame under it (which container grew: `RawVec` grow, hashbrown `reserve_rehash`,
//! `format_inner`, ...).
//!
//! Rows are unique: stacks that get the same name (they differ only above the program frame,
//! in callers the table does not show, or in library frames between) are one row, which says
//! how many stacks it merges. Two rows with one name and different numbers would hide which is
//! which; the flamegraph and pprof keep the stacks apart for whoever needs the callers.
use core::fmt;

use super::dist;
use super::program::{is_program, last_segment};
use super::SampleType;
use crate::owned::Owned;
use crate::snapshot::HeapProfile;
use crate::symbols::Symbol;

/// Library functions that make a container grow or build a fresh allocation: the "why" of a
/// site. Compared with the last path segment of a demangled name; earlier entries win when a
/// stack has several (`grow_one` over the `finish_grow` it calls, `reserve_rehash` over the
/// `reserve` that calls it).
const GROWTH: &[&str] = &[
    "grow_one",
    "grow_amortized",
    "grow_exact",
    "reserve_rehash",
    "format_inner",
    "reserve_for_push",
    "do_reserve_and_handle",
    "try_reserve",
    "reserve",
    "with_capacity",
    "to_vec",
    "to_owned",
    "clone",
    "from_iter",
    "collect",
    "extend",
    "extend_from_slice",
    "finish_grow",
];

/// Rank of a growth function in [`GROWTH`] (lower is preferred).
fn growth_rank(function: &str) -> Option<usize> {
    let name = last_segment(function);
    GROWTH.iter().position(|g| *g == name)
}

/// One row: the sites sharing one name, and that name.
struct Row {
    value: f64,
    /// Standard error of `value` (see `SampleType::variance_of`).
    sigma: f64,
    samples: u64,
    /// Distinct stacks merged into this row.
    stacks: usize,
    user: Option<Symbol>,
    growth: Option<Symbol>,
    /// What the program called that allocated, as it wrote it (`program::operation`).
    op: Option<String>,
    leaf_address: usize,
    overflow: bool,
    /// p50 and p99 of allocation sizes and lifetimes (the histograms are dropped once read).
    size: [Option<u64>; 2],
    life: [Option<std::time::Duration>; 2],
}

/// The heaviest sites of a profile by one [`SampleType`], from [`HeapProfile::top`]: one row per
/// site name (program frame and growth frame), merging the stacks that share it. Print it with
/// `{}`.
pub struct Top {
    ty: SampleType,
    total: f64,
    total_sigma: f64,
    total_samples: u64,
    sites: usize,
    /// Built inside the profiler guard.
    rows: Owned<Vec<Row>>,
}

impl Top {
    /// The sample type the table ranks by.
    pub fn sample_type(&self) -> SampleType {
        self.ty
    }

    /// Rows shown.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the profile had no site with a nonzero value.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The `i`-th row's first program frame (function name), if it has one.
    pub fn user_function(&self, i: usize) -> Option<&str> {
        self.rows.get(i)?.user.as_ref().map(|s| s.function.as_str())
    }

    /// The `i`-th row's growth frame (function name), if it has one.
    pub fn growth_function(&self, i: usize) -> Option<&str> {
        self.rows
            .get(i)?
            .growth
            .as_ref()
            .map(|s| s.function.as_str())
    }

    /// How many distinct stacks the `i`-th row merges (they share its name).
    pub fn stacks(&self, i: usize) -> Option<usize> {
        self.rows.get(i).map(|r| r.stacks)
    }

    /// The `i`-th row's value (unbiased estimate of the sample type).
    pub fn value(&self, i: usize) -> Option<f64> {
        self.rows.get(i).map(|r| r.value)
    }

    /// The standard error of the `i`-th row's value, from its samples: about `value / √samples`
    /// for blocks much smaller than the sampling rate, 0 for blocks sampled every time.
    pub fn std_error(&self, i: usize) -> Option<f64> {
        self.rows.get(i).map(|r| r.sigma)
    }

    /// The samples behind the `i`-th row's value (the live ones for `inuse_*`).
    pub fn samples(&self, i: usize) -> Option<u64> {
        self.rows.get(i).map(|r| r.samples)
    }

    /// What the `i`-th row's program frame called that allocated, as the program wrote it
    /// (`Vec::push`, `HashMap::entry`, `format!`), if a library call is under it.
    pub fn operation(&self, i: usize) -> Option<&str> {
        self.rows.get(i)?.op.as_deref()
    }
}

/// Picks the first program symbol (leaf side first) and the growth symbol under it: the library
/// symbol nearest the program frame that matches [`GROWTH`], else the library symbol right under
/// the program frame.
pub(crate) fn name_site(frames: &[crate::symbols::Frame]) -> (Option<Symbol>, Option<Symbol>) {
    // Leaf first, inlined callees before their callers (the order of `Frame::symbols`).
    let syms: Vec<&Symbol> = frames.iter().flat_map(|f| f.symbols.iter()).collect();
    let Some(u) = syms.iter().position(|s| is_program(&s.function)) else {
        let growth = syms
            .iter()
            .filter_map(|s| growth_rank(&s.function).map(|r| (r, *s)))
            .min_by_key(|x| x.0);
        return (None, growth.map(|(_, s)| s.clone()));
    };
    let under = &syms[..u];
    // The preferred growth function; among equals, the one nearest the program frame.
    let growth = under
        .iter()
        .enumerate()
        .filter_map(|(i, s)| growth_rank(&s.function).map(|r| (r, usize::MAX - i, *s)))
        .min_by_key(|&(r, near, _)| (r, near))
        .map(|(_, _, s)| s)
        .or(under.last().copied())
        .cloned();
    (Some(syms[u].clone()), growth)
}

pub(crate) fn build(p: &HeapProfile, n: usize, ty: SampleType) -> Top {
    // Value, samples and variance per stack.
    let mut per_stack = vec![(0f64, 0u64, 0f64); p.stacks.len()];
    for r in &p.buckets {
        per_stack[r.stack].0 += ty.of(&r.est);
        per_stack[r.stack].1 += ty.samples_of(r);
        per_stack[r.stack].2 += ty.variance_of(r);
    }
    let total: f64 = per_stack.iter().map(|v| v.0).sum();
    // Samples are independent, so variances add.
    let total_sigma = per_stack.iter().map(|v| v.2).sum::<f64>().sqrt();
    let nonzero: Vec<usize> = (0..per_stack.len())
        .filter(|&i| per_stack[i].0.round() > 0.0)
        .collect();
    let sites = nonzero.len();
    // Group the stacks by the name their row would show.
    struct Group {
        value: f64,
        variance: f64,
        samples: u64,
        stacks: Vec<usize>,
        user: Option<Symbol>,
        growth: Option<Symbol>,
        op: Option<String>,
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut by_name: std::collections::HashMap<String, usize> = Default::default();
    for stack in nonzero {
        let frames = &p.stacks[stack];
        let (user, growth) = name_site(frames);
        let op = super::program::operation(frames);
        let name = if stack == 0 {
            String::from("\0overflow")
        } else {
            let g = op.as_deref().unwrap_or("");
            match &user {
                Some(u) => format!("{}\0{g}", Where(u)),
                None => format!("{:#x}\0{g}", frames.first().map_or(0, |f| f.address)),
            }
        };
        let i = *by_name.entry(name).or_insert_with(|| {
            groups.push(Group {
                value: 0.0,
                variance: 0.0,
                samples: 0,
                stacks: Vec::new(),
                user,
                growth,
                op,
            });
            groups.len() - 1
        });
        groups[i].value += per_stack[stack].0;
        groups[i].samples += per_stack[stack].1;
        groups[i].variance += per_stack[stack].2;
        groups[i].stacks.push(stack);
    }
    groups.sort_by(|a, b| {
        b.value
            .total_cmp(&a.value)
            .then(a.stacks[0].cmp(&b.stacks[0]))
    });
    let rows: Vec<Row> = groups
        .into_iter()
        .take(n)
        .map(|g| {
            let first = g.stacks[0];
            let d = dist::of_stacks(p, &g.stacks);
            Row {
                value: g.value,
                sigma: g.variance.sqrt(),
                samples: g.samples,
                stacks: g.stacks.len(),
                user: g.user,
                growth: g.growth,
                op: g.op,
                leaf_address: p.stacks[first].first().map_or(0, |f| f.address),
                overflow: first == 0,
                size: [d.size_quantile(0.5), d.size_quantile(0.99)],
                life: [d.lifetime_quantile(0.5), d.lifetime_quantile(0.99)],
            }
        })
        .collect();
    Top {
        ty,
        total,
        total_sigma,
        total_samples: per_stack.iter().map(|v| v.1).sum(),
        sites,
        rows: rows.into(),
    }
}

/// `1234567` bytes as `1.18 MiB`; counts as plain integers.
pub(crate) struct Amount(pub f64, pub SampleType);

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0.round();
        if self.1.unit() == "count" {
            return write!(f, "{v:.0}");
        }
        Bytes(v, 2).fmt(f)
    }
}

/// A byte count in the largest binary unit that keeps it at least 1, with this many decimals
/// (`1234567` with 2 is `1.18 MiB`); below 1 KiB whole bytes (`512 B`).
pub(crate) struct Bytes(pub f64, pub usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut x = self.0;
        let mut u = 0;
        while x >= 1024.0 && u + 1 < UNITS.len() {
            x /= 1024.0;
            u += 1;
        }
        if u == 0 {
            write!(f, "{x:.0} B")
        } else {
            write!(f, "{x:.*} {}", self.1, UNITS[u])
        }
    }
}

/// A relative standard error: `±15%` (whole percents from 10%), `±2.5%`, `±0%` for an exact
/// value (every block sampled), `-` for a zero value.
pub(crate) struct Plus(pub f64, pub f64);

impl fmt::Display for Plus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (v, sigma) = (self.0.abs(), self.1);
        if v.round() == 0.0 {
            return f.pad("-");
        }
        let pct = 100.0 * sigma / v;
        let s = if pct >= 9.95 {
            format!("±{pct:.0}%")
        } else {
            format!("±{pct:.1}%")
        };
        f.pad(&s)
    }
}

/// `name (file:line)` with the file's last component only.
struct Where<'a>(&'a Symbol);

impl fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::folded::clean_name(&self.0.function))?;
        if let Some(file) = &self.0.file {
            let base = file.rsplit('/').next().unwrap_or(file);
            write!(f, " ({base}:{})", self.0.line.unwrap_or(0))?;
        }
        Ok(())
    }
}

impl fmt::Display for Top {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An empty table in a process whose allocator is another: say so, not "0 sites".
        if self.sites == 0 && !crate::thread::is_active() {
            return writeln!(f, "{}: nothing was profiled", crate::stats::NOT_ACTIVE);
        }
        writeln!(
            f,
            "top {} of {} sites by {} (total {} {}, {} samples; ± one standard error)",
            self.rows.len(),
            self.sites,
            self.ty,
            Amount(self.total, self.ty),
            Plus(self.total, self.total_sigma),
            self.total_samples,
        )?;
        writeln!(
            f,
            "{:>12} {:>5} {:>6} {:>7} {:>17} {:>17}  site",
            self.ty.name(),
            "±",
            "%",
            "samples",
            "size p50/p99",
            "lifetime p50/p99"
        )?;
        for r in &self.rows {
            let share = if self.total > 0.0 {
                100.0 * r.value / self.total
            } else {
                0.0
            };
            let size = format!("{}/{}", dist::opt(r.size[0]), dist::opt(r.size[1]));
            let life = format!(
                "{}/{}",
                dist::opt_duration(r.life[0]),
                dist::opt_duration(r.life[1])
            );
            write!(
                f,
                "{:>12} {:>5} {:>5.1}% {:>7} {:>17} {:>17}  ",
                Amount(r.value, self.ty).to_string(),
                Plus(r.value, r.sigma).to_string(),
                share,
                r.samples,
                size,
                life
            )?;
            match (&r.user, r.overflow) {
                (_, true) => write!(f, "{}", super::folded::OVERFLOW_NAME)?,
                (Some(u), _) => write!(f, "{}", Where(u))?,
                (None, _) => write!(f, "{:#x} (no program frame)", r.leaf_address)?,
            }
            if r.stacks > 1 {
                write!(f, " [{} stacks]", r.stacks)?;
            }
            if let Some(op) = &r.op {
                write!(f, "\n{:>70}  <- {op}", "")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_sharing_a_name_are_one_row() {
        use crate::symbols::Frame;
        let (p, before) = crate::guard::profiler_scope(|| {
            let mut p = crate::profile::golden_tests::synthetic();
            let before = p.top(10, SampleType::InuseSpace).value(0).unwrap();
            // A copy of stack 1 reached from another caller: the same row name.
            let mut frames: Vec<Frame> = p.stacks[1].to_vec();
            let last = frames.len() - 1;
            frames[last].address += 0x100;
            p.stacks.push(frames.into());
            let mut r = *p.buckets.iter().find(|r| r.stack == 1).unwrap();
            r.stack = p.stacks.len() - 1;
            p.buckets.push(r);
            (p, before)
        });
        let t = p.top(10, SampleType::InuseSpace);
        let names: Vec<String> = (0..t.len())
            .map(|i| format!("{:?} {:?}", t.user_function(i), t.growth_function(i)))
            .collect();
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "{names:?}");
        assert_eq!(t.stacks(0), Some(2));
        assert!(t.value(0).unwrap() > before);
        assert!(
            t.to_string().contains("app::build (main.rs:12) [2 stacks]"),
            "{t}"
        );
    }
}
