//! The layer order of `src/`, kept true: a module may name another heapsight module only when
//! that module's layer is its own or a lower one. [`LAYERS`] is the one table of ranks; the crate
//! docs draw the same picture. A new file under `src/` fails this test until it is given a row.
//!
//! The check reads the sources as tokens (comments, strings and character literals removed) and
//! collects every path that starts with `crate::`, `$crate::` or `super::`: in `use` trees (with
//! nested `{..}` groups) and in expressions and types alike. `self::` and `super::` paths that
//! land in the same file's module are not references to another module. A path to an item of the
//! crate root itself (`crate::Stats`, `crate::profile()`) counts as a reference to the root,
//! which is above every layer: lower modules name the module that defines an item, not the
//! root's re-export of it. Code under `#[cfg(test)]` counts like the rest of its module: a test
//! that needs a higher layer to build its fixtures belongs in that higher layer's file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Every module of `src/` with its layer, bottom first. The most specific row wins (so a single
/// file under a directory could be ranked apart from it); a directory's row covers its files.
const LAYERS: &[(&str, &str, u8)] = &[
    // base: locks and fork handlers, settings, sampling maths, the clock, the ELF reader.
    ("sync", "base", 0),
    ("config", "base", 0),
    ("sampler", "base", 0),
    ("clock", "base", 0),
    ("elf", "base", 0),
    // capture: the stack of a sampled allocation, and a thread's stack bounds (it needs no
    // thread state: bounds and buffers are handed to it, so it sits under the thread layer).
    ("stack", "capture", 1),
    ("unwind", "capture", 1),
    // thread: per-thread state and set-up, the reentrancy guard, the exact counters, the
    // sampled-block check, memory the profiler owns.
    ("guard", "thread", 2),
    ("thread", "thread", 2),
    ("counters", "thread", 2),
    ("filter", "thread", 2),
    ("owned", "thread", 2),
    // tables: sampled sites and live samples, interned tags.
    ("sites", "tables", 3),
    ("tags", "tables", 3),
    // snapshot: copies of the tables and counters, symbolized (the DWARF line reader is the
    // symbolizer's: it answers in `symbols::Symbol`s).
    ("snapshot", "snapshot", 4),
    ("stats", "snapshot", 4),
    ("symbols", "snapshot", 4),
    ("dwarf", "snapshot", 4),
    // memory: the exact counters beside the allocator's, the process's and the cgroup's figures.
    ("memory", "snapshot", 4),
    // encoders: pure functions from a snapshot to bytes.
    ("profile", "encoders", 5),
    // transports and scopes: where dumps leave the process, and the scopes users open.
    ("dump", "transports", 6),
    ("http", "transports", 6),
    ("otlp", "transports", 6),
    ("metrics", "transports", 6),
    ("series", "transports", 6),
    ("history", "transports", 6),
    ("tracing", "transports", 6),
    ("measure", "transports", 6),
    ("watch", "transports", 6),
    // hook: the GlobalAlloc impl and process set-up; it drives every layer below.
    ("alloc", "hook", 7),
    ("setup", "hook", 7),
];

/// The crate root (`src/lib.rs`): public re-exports and the functions of the public API.
const ROOT: (&str, u8) = ("root", 8);

#[test]
fn lower_layers_do_not_import_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules: Vec<Vec<String>> = files
        .iter()
        .map(|f| module_path(f.strip_prefix(&src).unwrap()))
        .collect();
    let reexports = reexports(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut problems = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let text = std::fs::read_to_string(f).unwrap();
        let shown = format!("src/{}", rel.display());
        problems.extend(check_file(
            &shown,
            &module_path(rel),
            &text,
            &modules,
            &reexports,
        ));
    }
    assert!(
        problems.is_empty(),
        "{} layer violation(s) (the order is the LAYERS table in tests/layers.rs and the crate \
         docs' picture):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The picture in the crate docs (`src/lib.rs`, "# Layers") lists each layer's modules on its
/// rank's line; it must say what [`LAYERS`] says.
#[test]
fn crate_docs_picture_matches_the_table() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let drawn = picture_rows(&lib);
    let mut want: Vec<(String, String, u8)> = LAYERS
        .iter()
        .map(|&(m, layer, rank)| (m.to_string(), layer.to_string(), rank))
        .collect();
    want.sort();
    assert_eq!(
        drawn, want,
        "the crate docs' layer picture and LAYERS disagree"
    );
}

/// (module, layer, rank) for every module named in the crate docs' layer picture: the lines of
/// the first `text` block after `# Layers` that start with a rank, and their continuation lines.
fn picture_rows(lib: &str) -> Vec<(String, String, u8)> {
    let docs: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    let start = docs
        .iter()
        .position(|l| *l == "# Layers")
        .expect("a # Layers section");
    let open = start + docs[start..].iter().position(|l| *l == "```text").unwrap();
    let close = open + 1 + docs[open + 1..].iter().position(|l| *l == "```").unwrap();
    let mut rows = Vec::new();
    let mut current: Option<(String, u8)> = None;
    for line in &docs[open + 1..close] {
        let cols: Vec<&str> = line
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let files = match cols.first().and_then(|c| c.parse::<u8>().ok()) {
            Some(rank) if cols.len() >= 3 => {
                current = Some((cols[1].to_string(), rank));
                cols[2]
            }
            // A continuation of the layer above: its first column lists more modules.
            None if current.is_some()
                && cols
                    .first()
                    .is_some_and(|c| c.ends_with(',') || c.contains(", ")) =>
            {
                cols[0]
            }
            _ => continue,
        };
        let (layer, rank) = current.clone().unwrap();
        for m in files.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            rows.push((m.trim_end_matches('/').to_string(), layer.clone(), rank));
        }
    }
    rows.sort();
    rows
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `profile/text.rs` -> ["profile", "text"]; `http/mod.rs` -> ["http"]; `lib.rs` -> [].
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.strip_suffix(".rs").unwrap();
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The layer of a module path: the longest row of [`LAYERS`] that is a prefix of it.
fn rank_of(path: &[String]) -> Option<(&'static str, u8)> {
    if path.is_empty() {
        return Some(ROOT);
    }
    (1..=path.len()).rev().find_map(|n| {
        let key = path[..n].join("::");
        LAYERS
            .iter()
            .find(|(m, _, _)| *m == key)
            .map(|&(_, layer, rank)| (layer, rank))
    })
}

/// The problems of one file: `src/x.rs:LINE imports M (LAYER, R) from LAYER (R)`, or its missing
/// rank. `module` is the file's module path; `modules` every module path of `src/`;
/// `reexports` the crate root's `pub use crate::..` paths by the name they are seen under.
fn check_file(
    shown: &str,
    module: &[String],
    text: &str,
    modules: &[Vec<String>],
    reexports: &[(String, Vec<String>)],
) -> Vec<String> {
    let Some((layer, rank)) = rank_of(module) else {
        return vec![format!(
            "{shown}: module {} has no layer: give it a row in LAYERS (tests/layers.rs) and a line \
             in the crate docs",
            module.join("::")
        )];
    };
    let mut out = Vec::new();
    for (line, mut target) in references(module, &tokens(text)) {
        if target.first().is_some_and(|t| t == MACRO_CRATE) {
            // An exported macro's `$crate::` path expands in the caller's crate, where only the
            // root's public paths exist: not an import of this module.
            continue;
        }
        // A root re-export (`crate::HeapProfile`, `crate::stats()`) names the module that
        // defines the item; `crate::stats::x` is the module `stats`, a call `crate::stats()` the
        // function the root re-exports under that name.
        let names_module = modules
            .iter()
            .any(|m| m.len() == 1 && target.first() == m.first());
        let called = target.len() == 2 && target[1] == CALL;
        if let Some((_, to)) = target
            .first()
            .filter(|_| !names_module || called)
            .and_then(|first| reexports.iter().find(|(name, _)| name == first))
        {
            target.splice(..1, to.iter().cloned());
        }
        // The module that defines what the path names: its longest prefix that is a module. A
        // called function's own name is never the module (`crate::profile()` is the root's).
        let segments = match target.last().map(String::as_str) {
            Some(CALL) => &target[..target.len().saturating_sub(2)],
            _ => &target[..],
        };
        let target_module = (0..=segments.len())
            .rev()
            .map(|n| &segments[..n])
            .find(|p| p.is_empty() || modules.iter().any(|m| m == p))
            .unwrap()
            .to_vec();
        if target_module == module {
            continue; // the file's own module, or one of its inline modules
        }
        let Some((to_layer, to_rank)) = rank_of(&target_module) else {
            continue; // reported once, as that file's missing rank
        };
        if to_rank > rank {
            let name = if target_module.is_empty() {
                format!(
                    "the crate root's {}",
                    target.first().map_or("", String::as_str)
                )
            } else {
                target_module.join("::")
            };
            out.push(format!(
                "{shown}:{line} imports {name} ({to_layer}, {to_rank}) from {layer} ({rank})"
            ));
        }
    }
    out.dedup();
    out
}

/// The first segment of a `$crate::` path.
const MACRO_CRATE: &str = "$crate";

/// The crate root's `pub use crate::..` items: (the name they are re-exported as, full path).
fn reexports(lib: &str) -> Vec<(String, Vec<String>)> {
    let toks = tokens(lib);
    let mut out = Vec::new();
    for i in 0..toks.len() {
        if toks[i].text == "use"
            && toks.get(i + 1).is_some_and(|t| t.text == "crate")
            && toks.get(i + 2).is_some_and(|t| t.text == "::")
        {
            let mut paths = Vec::new();
            use_tree(&toks, i + 3, Vec::new(), &mut paths);
            for p in paths {
                // `use_tree` keeps the original name; a rename is read from the tokens here.
                out.push((p.last().cloned().unwrap_or_default(), p));
            }
        }
    }
    // Renames: `x as y`.
    for w in toks.windows(3) {
        if w[1].text == "as" {
            if let Some(e) = out.iter_mut().find(|(n, _)| *n == w[0].text) {
                e.0 = w[2].text.clone();
            }
        }
    }
    out
}

/// The last segment of a path that is called (`f(..)`) or invoked (`m!`).
const CALL: &str = "()";

#[derive(Clone, Debug)]
struct Token {
    text: String,
    line: usize,
}

/// Rust tokens, coarsely: identifiers (with `$crate` as one), `::`, and single punctuation
/// characters; comments, string, byte-string, raw-string and character literals dropped.
fn tokens(src: &str) -> Vec<Token> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(b[i] == b'\n');
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(b, i) {
            line += b[i..end].iter().filter(|&&x| x == b'\n').count();
            i = end;
        } else if c == b'"' || (c == b'b' && b.get(i + 1) == Some(&b'"')) {
            i += if c == b'b' { 2 } else { 1 };
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                line += usize::from(b.get(i) == Some(&b'\n'));
                i += 1;
            }
            i += 1;
        } else if c == b'\'' || (c == b'b' && b.get(i + 1) == Some(&b'\'')) {
            // A character literal ('a', '\n', '\u{..}', b'x'), or a lifetime ('a, 'static).
            let start = if c == b'b' { i + 1 } else { i };
            let close = if b.get(start + 1) == Some(&b'\\') {
                b[start + 3..]
                    .iter()
                    .position(|&x| x == b'\'')
                    .map(|p| start + 3 + p)
            } else {
                // One UTF-8 character then a quote.
                let ch = src[start + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(start + 1 + ch) == Some(&b'\'')).then_some(start + 1 + ch)
            };
            match close {
                Some(end) => i = end + 1,
                None => i = start + 1, // a lifetime: its name follows as an identifier
            }
        } else if c == b'_' || c.is_ascii_alphanumeric() || c == b'$' {
            let s = i;
            i += 1;
            while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                i += 1;
            }
            out.push(Token {
                text: src[s..i].to_string(),
                line,
            });
        } else if b[i..].starts_with(b"::") {
            out.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            let ch = src[i..].chars().next().unwrap();
            out.push(Token {
                text: ch.to_string(),
                line,
            });
            i += ch.len_utf8();
        }
    }
    out
}

/// Where a raw string (`r"..."`, `r#"..."#`, `br#"..."#`) starting at `i` ends, if one does.
fn raw_string_end(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && (b[i - 1] == b'_' || b[i - 1].is_ascii_alphanumeric()) {
        return None;
    }
    let mut j = i;
    if b.get(j) == Some(&b'b') {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&x| x == b'#').count();
    j += hashes;
    if b.get(j) != Some(&b'"') {
        return None;
    }
    j += 1;
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let at = b[j..].windows(close.len()).position(|w| w == close)?;
    Some(j + at + close.len())
}

/// Every path into the crate from a file whose module is `module`: (line, absolute module path
/// of the target, first segments only as far as they go). Inline `mod x { .. }` blocks are
/// followed, so `super::` from a file's test module is the file's own module.
fn references(module: &[String], toks: &[Token]) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    // The inline-module stack: (name, brace depth at which it closes).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i].text;
        match t.as_str() {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if toks.get(i + 2).is_some_and(|t| t.text == "{") => {
                inline.push((toks[i + 1].text.clone(), depth));
            }
            _ => {}
        }
        let starts_path = matches!(t.as_str(), "crate" | "$crate" | "super" | "self")
            && toks.get(i + 1).is_some_and(|t| t.text == "::")
            && (i == 0 || toks[i - 1].text != "::");
        if !starts_path {
            i += 1;
            continue;
        }
        let mut here: Vec<String> = module.to_vec();
        here.extend(inline.iter().map(|(n, _)| n.clone()));
        let (base, mut j) = match t.as_str() {
            "crate" => (Vec::new(), i + 2),
            "$crate" => (vec![MACRO_CRATE.to_string()], i + 2),
            "self" => (here.clone(), i + 2),
            _ => {
                let mut base = here.clone();
                let mut j = i;
                while toks.get(j).is_some_and(|t| t.text == "super")
                    && toks.get(j + 1).is_some_and(|t| t.text == "::")
                {
                    base.pop();
                    j += 2;
                }
                (base, j)
            }
        };
        let line = toks[i].line;
        let mut paths = Vec::new();
        j = use_tree(toks, j, base, &mut paths);
        out.extend(paths.into_iter().map(|p| (line, p)));
        i = j.max(i + 1);
    }
    out
}

/// Reads the rest of a path or `use` tree from `toks[i]` (after a `::`), appending each full path
/// it names (segments only, no `*`, `self` or renames) to `out`; returns the index after it.
fn use_tree(
    toks: &[Token],
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let mut path = prefix;
    loop {
        match toks.get(i).map(|t| t.text.as_str()) {
            Some("{") => {
                i += 1;
                loop {
                    match toks.get(i).map(|t| t.text.as_str()) {
                        Some("}") => return i + 1,
                        Some(",") => i += 1,
                        None => return i,
                        _ => i = use_tree(toks, i, path.clone(), out),
                    }
                }
            }
            Some("*") | Some("self") => {
                out.push(path);
                return i + 1;
            }
            Some(s) if s.starts_with(|c: char| c == '_' || c.is_ascii_alphabetic()) => {
                path.push(s.to_string());
                i += 1;
                if toks.get(i).is_some_and(|t| t.text == "::") {
                    i += 1;
                    continue;
                }
                match toks.get(i).map(|t| t.text.as_str()) {
                    // `as name` renames only the last segment.
                    Some("as") => i += 2,
                    Some("(") | Some("!") => path.push(CALL.to_string()),
                    _ => {}
                }
                out.push(path);
                return i;
            }
            _ => {
                out.push(path);
                return i;
            }
        }
    }
}

// The checker on small inputs, so that its own blind spots fail here rather than let an upward
// import through.

fn check_synthetic(file: &str, text: &str) -> Vec<String> {
    let rel = Path::new(file.strip_prefix("src/").unwrap());
    let mut modules: Vec<Vec<String>> =
        LAYERS.iter().map(|(m, _, _)| vec![m.to_string()]).collect();
    modules.push(vec!["profile".into(), "maps".into()]);
    modules.push(vec!["profile".into(), "text".into()]);
    let reexports = [(
        "HeapProfile".to_string(),
        vec!["snapshot".into(), "HeapProfile".into()],
    )];
    check_file(file, &module_path(rel), text, &modules, &reexports)
}

#[test]
fn checker_catches_an_upward_use() {
    let got = check_synthetic(
        "src/sites.rs",
        "//! Doc: crate::alloc is only named here.\n\
         use crate::sync::Lock;\n\
         use crate::alloc::now_ns;\n",
    );
    assert_eq!(
        got,
        ["src/sites.rs:3 imports alloc (hook, 7) from tables (3)"]
    );
}

#[test]
fn checker_catches_nested_use_groups_and_expression_paths() {
    let got = check_synthetic(
        "src/sync.rs",
        "use crate::{config, guard::{self, InProfiler}, profile::maps::{read_self}};\n\
         fn f() {\n    let s = \"crate::history::x\"; // crate::dump::y\n    \
         crate::tags::lock_for_fork();\n    let c = '{';\n}\n",
    );
    assert_eq!(
        got,
        [
            "src/sync.rs:1 imports guard (thread, 2) from base (0)",
            "src/sync.rs:1 imports profile::maps (encoders, 5) from base (0)",
            "src/sync.rs:4 imports tags (tables, 3) from base (0)",
        ]
    );
}

#[test]
fn checker_ignores_paths_in_literals_and_comments() {
    let src = "/* crate::alloc /* nested */ crate::dump */\n\
               const A: &str = r#\"crate::alloc \" still\"#;\n\
               const B: u8 = b'\"'; const C: char = '\\''; const D: &str = \"\\\" crate::http\";\n\
               fn f<'a>(x: &'a str) -> &'a str { x }\n\
               use crate::alloc;\n";
    assert_eq!(
        check_synthetic("src/stack.rs", src),
        ["src/stack.rs:5 imports alloc (hook, 7) from capture (1)"]
    );
}

#[test]
fn checker_follows_super_and_test_modules() {
    // `super::` from a file's test module is the file itself; from a directory's file it is
    // the directory's module; a test module's `crate::` path counts like the module's own.
    let got = check_synthetic(
        "src/stack.rs",
        "#[cfg(test)]\nmod tests {\n    use super::*;\n    fn t() {\n        \
         crate::profile::maps::read_self();\n    }\n}\n",
    );
    assert_eq!(
        got,
        ["src/stack.rs:5 imports profile::maps (encoders, 5) from capture (1)"]
    );
    assert!(check_synthetic("src/profile/text.rs", "use super::{pprof, Site};\n").is_empty());
    assert_eq!(
        check_synthetic("src/profile/text.rs", "use super::super::dump;\n"),
        ["src/profile/text.rs:1 imports dump (transports, 6) from encoders (5)"]
    );
}

#[test]
fn checker_counts_root_items_as_the_root() {
    assert_eq!(
        check_synthetic("src/dump.rs", "fn f() { let p = crate::profile(); }\n"),
        ["src/dump.rs:1 imports the crate root's profile (root, 8) from transports (6)"]
    );
    assert!(check_synthetic("src/dump.rs", "use crate::profile::pprof;\n").is_empty());
    // A re-export counts as its defining module; an exported macro's `$crate` path as nothing.
    assert_eq!(
        check_synthetic("src/sites.rs", "use crate::HeapProfile;\n"),
        ["src/sites.rs:1 imports snapshot (snapshot, 4) from tables (3)"]
    );
    assert!(check_synthetic("src/sites.rs", "m!{ $crate::profile() }\n").is_empty());
    assert_eq!(
        check_synthetic("src/sites.rs", "fn f() { crate::HeapProfile::new(); }\n"),
        ["src/sites.rs:1 imports snapshot (snapshot, 4) from tables (3)"]
    );
}

#[test]
fn checker_rejects_an_unranked_file() {
    let got = check_synthetic("src/newthing.rs", "");
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("src/newthing.rs: module newthing has no layer"));
}

#[test]
fn checker_output_lists_each_line_once() {
    let mut s = String::new();
    for _ in 0..2 {
        let _ = writeln!(s, "use crate::alloc::{{a, b}};");
    }
    assert_eq!(
        check_synthetic("src/stack.rs", &s),
        [
            "src/stack.rs:1 imports alloc (hook, 7) from capture (1)",
            "src/stack.rs:2 imports alloc (hook, 7) from capture (1)",
        ]
    );
}
