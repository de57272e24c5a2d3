//! Rate 1 on a real program: `syn` parsing the six largest hand-written Rust sources under
//! `~/.cargo/registry/src`, every AST kept live. At rate 1 every allocation is a sample of weight
//! 1, so the profile must equal the exact counters and nothing may land in the overflow site.
//! Prints the distinct stacks, the overflow and frame-less shares, and the profiler's own memory at
//! rate 1 next to the program's.
//!
//! `cargo bench -p heapsight-dev --bench rate1_syn` (`-- --files N` for another count;
//! `HEAPSIGHT_MAX_SITES` as usual).
use std::path::PathBuf;

use heapsight::HeapSight;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

fn rust_sources(dir: &std::path::Path, out: &mut Vec<(u64, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        let p = e.path();
        if t.is_dir() {
            rust_sources(&p, out);
        } else if t.is_file() && p.extension().is_some_and(|x| x == "rs") && !generated(&p) {
            if let Ok(m) = e.metadata() {
                out.push((m.len(), p));
            }
        }
    }
}

/// Generated sources (platform bindings, test expectations): long but repetitive, so they
/// exercise few distinct stacks. Hand-written code nests expressions and items in many ways,
/// which is what gives a recursive-descent parser its many distinct stacks.
fn generated(p: &std::path::Path) -> bool {
    let s = p.to_string_lossy();
    [
        "windows",
        "wasip",
        "linux-raw-sys",
        "/tests/",
        "expected",
        "unicode",
        "tables",
    ]
    .iter()
    .any(|g| s.contains(g))
}

fn main() {
    let files: usize = std::env::args()
        .skip_while(|a| a != "--files")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(6);
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let mut all = Vec::new();
    rust_sources(&home.join("registry/src"), &mut all);
    // Largest first; ties by path, so the choice is the same on every run over one registry.
    all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut sources = Vec::new();
    for (len, path) in all {
        if sources.len() == files {
            break;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        // Only sources syn parses (some registry files are test inputs with errors on purpose).
        if syn::parse_file(&text).is_ok() {
            sources.push((len, path, text));
        }
    }
    for (len, path, _) in &sources {
        println!("{len:>9} bytes  {}", path.display());
    }

    heapsight::set_sample_rate(1);
    let s0 = heapsight::stats();
    let p0 = heapsight::profile_unsymbolized();
    let t = std::time::Instant::now();
    let asts: Vec<syn::File> = sources
        .iter()
        .map(|(_, _, text)| syn::parse_file(text).unwrap())
        .collect();
    let parse = t.elapsed();
    let s1 = heapsight::stats();
    heapsight::set_sample_rate(0);
    let p1 = heapsight::profile_unsymbolized();
    let d = p1.delta(&p0);
    let (stacks, reclaimed, live, live_high) = heapsight::site_table_counts();

    let sum = |f: fn(&heapsight::Site) -> u64| d.sites().iter().map(f).sum::<u64>();
    let frameless = d.sites().iter().find(|s| s.overflow);
    println!("parse at rate 1: {:.2?}", parse);
    println!(
        "sites {} (table: {stacks} stacks, {reclaimed} reclaimed, {live} samples live, most {live_high})",
        d.sites().len()
    );
    println!(
        "profiler_bytes after the parse, before any profile of it: {} (site table)",
        s1.profiler_bytes
    );
    println!(
        "exact: {} allocations, {} bytes; in use {} bytes",
        s1.alloc_objects - s0.alloc_objects,
        s1.alloc_bytes - s0.alloc_bytes,
        s1.inuse_bytes
    );
    println!(
        "profile: {} allocations, {} bytes; in use {} bytes",
        sum(|s| s.alloc_objects),
        sum(|s| s.alloc_bytes),
        p1.sites().iter().map(|s| s.inuse_bytes).sum::<u64>()
    );
    println!(
        "overflow: {} samples; frame-less site {} bytes allocated, {} bytes in use",
        d.overflow_samples(),
        frameless.map_or(0, |s| s.alloc_bytes),
        frameless.map_or(0, |s| s.inuse_bytes)
    );
    drop((p0, p1, d));
    let s2 = heapsight::stats();
    println!(
        "profiler_bytes {} with the stack cache of two profiles (program in use {} bytes, {} live objects)",
        s2.profiler_bytes, s2.inuse_bytes, s2.inuse_objects
    );
    drop(asts);
}
