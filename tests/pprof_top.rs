//! What a Go user reads first: `go tool pprof -top` and `-top -cum` on the seed workload (a
//! `HashMap<String, Vec<String>>` index, as the Go reference builds a `map[string][]string`), from
//! the real tool, in the three ways a profile reaches it:
//!
//! * symbolized in process (`write_pprof`): the program view (docs/profiles.md) charges `flat` to
//!   `build_index`, and `-top -cum` has it in its first rows (no start-up frames above it);
//! * unsymbolized (`profile_unsymbolized`), symbolized by `go tool pprof` from the binary: the
//!   `drop_frames` expression removes the hook and the growth machinery by name;
//! * `?symbolize=0` over HTTP with `-symbolize=remote`: names from `/debug/pprof/symbol`, whole
//!   (never pprof's `::finish_grow` shortening), the same frames dropped.
//!
//! One global-allocator scenario, `harness = false`. `go` missing: `SKIPPED` (a failure under CI).
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

mod support;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

/// The seed workload: 500,000 values over 10,000 keys (about 19 MB live, ~37 samples at the
/// default 512 KiB rate).
#[inline(never)]
fn build_index(n: usize) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..n {
        m.entry(format!("k{}", i % 10_000))
            .or_default()
            .push(format!("value-{i}"));
    }
    m
}

/// One row of `go tool pprof -top`: flat%, cum% and the function.
#[derive(Debug)]
struct Row {
    flat_pct: f64,
    cum_pct: f64,
    name: String,
}

fn pprof(args: &[&str]) -> Result<(String, Vec<Row>), String> {
    let out = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .output()
        .map_err(|e| format!("go tool pprof: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "go tool pprof {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let rows = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() < 6 {
                return None;
            }
            let pct = |s: &str| s.trim_end_matches('%').parse::<f64>().ok();
            Some(Row {
                flat_pct: pct(cols[1])?,
                cum_pct: pct(cols[4])?,
                name: cols[5..].join(" "),
            })
        })
        .collect();
    Ok((text, rows))
}

/// The first row of `-top` is `build_index` with at least 80% flat.
fn first_is_build_index(what: &str, rows: &[Row], text: &str) -> Result<(), String> {
    let first = rows.first().ok_or(format!("{what}: no rows\n{text}"))?;
    if !first.name.ends_with("build_index") || first.flat_pct < 80.0 {
        return Err(format!(
            "{what}: first row of -top is {first:?}, not build_index with >= 80% flat\n{text}"
        ));
    }
    Ok(())
}

/// `-top`'s first row is `build_index` with at least 80% flat (Go's reference: 89% on
/// `main.build`), and `-top -cum` has it among its first five rows.
fn check_top(what: &str, source: &[&str]) -> Result<(), String> {
    let (text, rows) = pprof(&[&["-top"], source].concat())?;
    println!("{what}: go tool pprof -top\n{text}");
    first_is_build_index(what, &rows, &text)?;
    if let Some(r) = rows
        .iter()
        .find(|r| r.name.starts_with("::") || r.name.contains("finish_grow"))
    {
        return Err(format!(
            "{what}: machinery or a shortened name in -top: {r:?}\n{text}"
        ));
    }
    let (text, rows) = pprof(&[&["-top", "-cum"], source].concat())?;
    println!("{what}: go tool pprof -top -cum\n{text}");
    let pos = rows.iter().position(|r| r.name.ends_with("build_index"));
    match pos {
        Some(i) if i < 5 && rows[i].cum_pct >= 80.0 => Ok(()),
        _ => Err(format!(
            "{what}: build_index is not among the first 5 rows of -top -cum (at {pos:?})\n{text}"
        )),
    }
}

fn symbolized_in_process(dir: &Path) -> Result<(), String> {
    let file = dir.join("heap.pb.gz");
    let f = std::fs::File::create(&file).map_err(|e| e.to_string())?;
    heapsight::profile()
        .write_pprof(f)
        .map_err(|e| e.to_string())?;
    check_top("symbolized", &[file.to_str().unwrap()])?;
    // The container operation is one flag away: the `op` label.
    let (text, _) = pprof(&["-tags", file.to_str().unwrap()])?;
    for op in ["op:", "Vec::push", "format!"] {
        if !text.contains(op) {
            return Err(format!("-tags has no {op:?}\n{text}"));
        }
    }
    Ok(())
}

fn unsymbolized_offline(dir: &Path) -> Result<(), String> {
    let file = dir.join("heap-unsym.pb.gz");
    let f = std::fs::File::create(&file).map_err(|e| e.to_string())?;
    heapsight::profile_unsymbolized()
        .write_pprof(f)
        .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().unwrap();
    let (text, rows) = pprof(&["-top", exe.to_str().unwrap(), file.to_str().unwrap()])?;
    println!("unsymbolized, offline: go tool pprof -top BINARY PROFILE\n{text}");
    first_is_build_index("offline", &rows, &text)?;
    Ok(())
}

fn remote_symbolization() -> Result<(), String> {
    let server = heapsight::http::serve("127.0.0.1:0").map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}/debug/pprof/heap?symbolize=0",
        server.local_addr()
    );
    let (text, rows) = pprof(&["-symbolize=remote", "-top", &url])?;
    println!("?symbolize=0, -symbolize=remote: go tool pprof -top\n{text}");
    server.shutdown();
    first_is_build_index("remote", &rows, &text)?;
    if let Some(r) = rows
        .iter()
        .find(|r| r.name.starts_with("::") || r.name.contains("heapsight::"))
    {
        return Err(format!("remote: a shortened or hook name: {r:?}\n{text}"));
    }
    Ok(())
}

fn main() {
    let mut r = support::Runner::new();
    if !support::have_tool("go") {
        r.finish();
        return;
    }
    heapsight::set_sampling_seed(1);
    let index = build_index(500_000);
    let dir = support::TempDir::new("pprof-top");
    r.check_ok("go_tool_pprof_top_names_the_program_in_flat", || {
        symbolized_in_process(dir.path())
    });
    r.check_ok("an_unsymbolized_profile_reads_the_same_offline", || {
        unsymbolized_offline(dir.path())
    });
    r.check_ok("remote_symbolization_reads_the_same", remote_symbolization);
    drop(index);
    r.finish();
}
