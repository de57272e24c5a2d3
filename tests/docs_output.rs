//! Output pasted into the docs is the program's. `examples/quickstart.rs` is compiled into this
//! test as a module and run in a child process (a quiet process of its own, sampling seeded so
//! that which sites are sampled does not vary); the block after `$ cargo run --release --example
//! quickstart` in `src/lib.rs` and in `README.md` must show the same exact counters, the same
//! sites with the same file:line and growth frames, in the same order. The estimates themselves
//! (and lifetimes, which are timings) are not compared.
use std::process::Command;

#[path = "../examples/quickstart.rs"]
mod quickstart;

mod support;

const CHILD: &str = "HEAPSIGHT_DOCS_OUTPUT_CHILD";
const COMMAND: &str = "$ cargo run --release --example quickstart";
const TOP_COMMAND: &str = "$ go tool pprof -top heap.pb.gz";

/// What the docs must agree on: the counters line, the table's title up to its total, and each
/// row's site and growth frame.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    counters: String,
    title: String,
    rows: Vec<(String, String)>,
}

fn shape(lines: &[String]) -> Shape {
    let mut rows: Vec<(String, String)> = Vec::new();
    for l in lines.iter().skip(3) {
        let t = l.trim();
        if let Some(g) = t.strip_prefix("<- ") {
            if let Some(last) = rows.last_mut() {
                last.1 = g.to_string();
            }
        } else if !t.is_empty() && !t.starts_with("wrote ") {
            // The site is the last column, after two spaces; the test binary's module path is
            // the example's crate name.
            let site = t.rsplit("  ").next().unwrap_or("");
            rows.push((
                site.replace("docs_output::quickstart::", "quickstart::"),
                String::new(),
            ));
        }
    }
    Shape {
        counters: lines.first().cloned().unwrap_or_default(),
        title: lines
            .get(1)
            .and_then(|l| l.split(" (total").next())
            .unwrap_or("")
            .to_string(),
        rows,
    }
}

/// The first row of `go tool pprof -top` output: (function, flat%), the test binary's module
/// path read as the example's crate name.
fn first_top_row(lines: &[String]) -> Option<(String, String)> {
    let row = lines
        .iter()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)?;
    let cols: Vec<&str> = row.split_whitespace().collect();
    Some((
        cols.get(5..)?
            .join(" ")
            .replace("docs_output::quickstart::", "quickstart::"),
        cols.get(1)?.to_string(),
    ))
}

/// The lines after [`COMMAND`] in the first fenced block of `text` that has it, with `prefix`
/// (`//! ` in Rust docs) removed.
fn doc_block(text: &str, prefix: &str) -> Vec<String> {
    doc_block_after(text, prefix, COMMAND)
}

fn doc_block_after(text: &str, prefix: &str, command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in text.lines() {
        let Some(l) = l.strip_prefix(prefix.trim_end()) else {
            inside = false;
            continue;
        };
        let l = l.strip_prefix(' ').unwrap_or(l);
        if inside {
            if l.starts_with("```") {
                break;
            }
            out.push(l.to_string());
        } else if l == command {
            inside = true;
        }
    }
    out
}

fn quickstart_output_in_the_docs_is_true() {
    let dir = support::TempDir::new("docs-output");
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .current_dir(dir.path())
        .output()
        .expect("run the quickstart");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    println!("{stdout}");
    let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    let actual = shape(&lines);
    assert!(actual.rows.len() >= 2, "{actual:?}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, prefix) in [("src/lib.rs", "//! "), ("README.md", "")] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let block = doc_block(&text, prefix);
        assert!(!block.is_empty(), "{file} has no block after {COMMAND:?}");
        assert_eq!(
            shape(&block),
            actual,
            "{file}: the quickstart output pasted there is not what the program prints"
        );
    }
    // The README's `go tool pprof -top` of the profile the quickstart wrote: the same first row
    // (the program's function and its flat share).
    if !support::have_tool("go") {
        return;
    }
    let top = Command::new("go")
        .args(["tool", "pprof", "-top", "heap.pb.gz"])
        .current_dir(dir.path())
        .output()
        .expect("go tool pprof");
    assert!(top.status.success(), "{top:?}");
    let top = String::from_utf8(top.stdout).unwrap();
    println!("{top}");
    let top: Vec<String> = top.lines().map(str::to_string).collect();
    let actual = first_top_row(&top).expect("a row in go tool pprof -top");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = doc_block_after(&readme, "", TOP_COMMAND);
    assert_eq!(
        first_top_row(&block),
        Some(actual),
        "README.md: the go tool pprof -top output pasted after {TOP_COMMAND:?} is not what pprof prints"
    );
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        heapsight::set_sampling_seed(1);
        quickstart::main();
        return;
    }
    support::run(&[(
        "quickstart_output_in_the_docs_is_true",
        quickstart_output_in_the_docs_is_true,
    )]);
}
