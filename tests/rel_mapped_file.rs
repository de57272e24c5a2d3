//! A binary replaced on disk while it runs (a deploy renames a new file over it) still reports its
//! own build ID and symbols: both come from the file that is mapped, not from the one now at its
//! path.
//!
//! The test copies this test binary to a temporary directory and runs the copy, which samples an
//! allocation in `site_in_replaced_binary`. Once the child is running, another ELF binary is
//! renamed over the copy's path (the child's `/proc/self/maps` line now ends in ` (deleted)` and
//! the path names the other file). The child then writes a symbolized pprof profile; the parent
//! reads it: the mapping of the copy's path must carry the copy's build ID (read from the file
//! before it was replaced), and the function names must include `site_in_replaced_binary`.
use std::hint::black_box;
use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};

use heapsight::HeapSight;

#[path = "support/otlp.rs"]
mod otlp_support;
#[path = "support/strict.rs"]
mod strict;
mod support;

use strict::Strict;

#[global_allocator]
static GLOBAL: HeapSight<Strict> = HeapSight::new(Strict::system());

#[inline(never)]
fn site_in_replaced_binary() -> Vec<u8> {
    black_box(vec![7u8; 4000])
}

/// The child: samples, says "ready", waits for a line on stdin, writes the profile to `out`.
fn child(out: &str) {
    heapsight::set_sample_rate(1);
    let keep = site_in_replaced_binary();
    heapsight::set_sample_rate(0);
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    let mut f = std::fs::File::create(out).unwrap();
    heapsight::profile().write_pprof(&mut f).unwrap();
    drop(keep);
    strict::assert_clean();
}

fn build_id_of(path: &std::path::Path) -> String {
    use object::Object;
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let id = file.build_id().unwrap().expect("a GNU build ID");
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn replaced_binary_keeps_its_build_id_and_symbols() {
    let dir = support::TempDir::new("mapped-file");
    let helper = dir.join("helper");
    std::fs::copy(std::env::current_exe().unwrap(), &helper).unwrap();
    let own_id = build_id_of(&helper);
    let other = ["/bin/true", "/usr/bin/true", "/bin/sh"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.exists())
        .expect("another ELF binary");
    let other_id = build_id_of(other);
    assert_ne!(own_id, other_id);
    let out = dir.join("heap.pb.gz");
    let mut c = Command::new(&helper)
        .arg("child")
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // The deploy: a new file renamed over the running one.
    let new = dir.join("helper.new");
    std::fs::copy(other, &new).unwrap();
    std::fs::rename(&new, &helper).unwrap();
    c.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(c.wait().unwrap().success(), "child failed");

    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&out).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    let p = otlp_support::Msg::decode(&raw);
    let strings = p.strs(6);
    let helper_name = helper.to_str().unwrap();
    let ids: Vec<String> = p
        .msgs(3)
        .iter()
        .filter(|m| strings[m.u(5) as usize] == helper_name)
        .map(|m| strings[m.u(6) as usize].clone())
        .collect();
    assert!(!ids.is_empty(), "no mapping of {helper_name}: {strings:?}");
    for id in &ids {
        assert_eq!(
            id, &own_id,
            "the mapped binary's build ID (the file now there: {other_id})"
        );
    }
    let names: Vec<&String> = p
        .msgs(5)
        .iter()
        .map(|f| &strings[f.u(2) as usize])
        .collect();
    assert!(
        names.iter().any(|n| n.contains("site_in_replaced_binary")),
        "the mapped binary's symbols: {names:?}"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(&args[2]);
    }
    support::watchdog(120, "rel_mapped_file");
    support::run(&[(
        "replaced_binary_keeps_its_build_id_and_symbols",
        replaced_binary_keeps_its_build_id_and_symbols,
    )]);
}
