//! The measuring half of the dump-cost benchmarks (`examples/dump_cost.rs`,
//! `dev/examples/dump_cost_axum.rs`): resident memory, its peak and `profiler_bytes` around ten dumps
//! of a program that has reached its steady state, and each dump's latency.
//!
//! Peak resident memory is the kernel's high-water mark (`VmHWM`), reset before each dump by
//! writing 5 to `/proc/self/clear_refs`, so "peak" is the highest the dump took the process.
//! Symbolizers other than heapsight's (for the comparison in docs/symbols.md) are run the same way
//! on the addresses of an unsymbolized profile.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use heapsight::bench_elf;

/// `VmRSS` and `VmHWM` in KiB.
pub fn rss_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn trim() {
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One GET over a fresh connection; the body's length.
pub fn get(addr: SocketAddr, path: &str) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = Vec::new();
    s.read_to_end(&mut body).unwrap();
    assert!(
        body.starts_with(b"HTTP/1.1 200"),
        "{path}: {}",
        String::from_utf8_lossy(&body[..body.len().min(200)])
    );
    body.len()
}

/// How a dump is symbolized.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Symbolizer {
    /// `GET /debug/pprof/heap` from heapsight's server: heapsight's own symbolizer.
    Http,
    /// `backtrace::resolve` per address, results cached forever (the plain in-process way).
    Backtrace,
    /// Function names from the ELF symbol table, file:line from lazily parsed line programs
    /// (`addr2line::Context::find_location`), all dropped after the dump.
    SymtabLines,
    /// A child process (`/proc/self/exe --helper`) symbolizes file offsets read from its stdin.
    Helper,
    /// `addr2line::Context` (lazy per unit) in process, dropped after each dump.
    Addr2line,
}

impl Symbolizer {
    pub fn from_args() -> Symbolizer {
        match std::env::args()
            .skip_while(|a| a != "--symbolizer")
            .nth(1)
            .as_deref()
        {
            None | Some("http") => Symbolizer::Http,
            Some("backtrace") => Symbolizer::Backtrace,
            Some("symtab-lines") => Symbolizer::SymtabLines,
            Some("helper") => Symbolizer::Helper,
            Some("addr2line") => Symbolizer::Addr2line,
            Some(o) => panic!("unknown symbolizer {o}"),
        }
    }
}

/// One frame as `backtrace::resolve` gives it: name, file, line.
type BtFrame = (String, Option<String>, Option<u32>);

/// Runs ten dumps and prints one line each; returns nothing, the lines are the result.
pub fn measure(label: &str, addr: SocketAddr, how: Symbolizer) {
    let mut bt_cache: HashMap<usize, Vec<BtFrame>> = HashMap::new();
    // The program's own freed memory goes back first, so that "after" shows only what the dumps
    // keep (heapsight's symbolizer trims glibc's arenas after parsing, which would otherwise
    // count the program's free memory as the dump's saving).
    trim();
    let (rss0, _) = rss_kib();
    let pb0 = heapsight::stats().profiler_bytes;
    println!(
        "{label} symbolizer={how:?}: before: rss {:.1} MiB, profiler_bytes {:.2} MiB",
        rss0 as f64 / 1024.0,
        pb0 as f64 / 1048576.0
    );
    for i in 1..=10 {
        reset_peak();
        let t = Instant::now();
        let out = match how {
            Symbolizer::Http => get(addr, "/debug/pprof/heap"),
            Symbolizer::Backtrace => {
                let addrs = profile_addresses();
                for a in addrs {
                    bt_cache.entry(a).or_insert_with(|| {
                        let mut v = Vec::new();
                        backtrace::resolve(a as *mut core::ffi::c_void, |s| {
                            v.push((
                                s.name().map(|n| format!("{n:#}")).unwrap_or_default(),
                                s.filename().map(|p| p.display().to_string()),
                                s.lineno(),
                            ))
                        });
                        v
                    });
                }
                bt_cache.len()
            }
            Symbolizer::SymtabLines => symtab_lines(&profile_addresses()),
            Symbolizer::Helper => helper(&profile_addresses()),
            Symbolizer::Addr2line => addr2line_in_process(&profile_addresses()),
        };
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let (rss, hwm) = rss_kib();
        let pb = heapsight::stats().profiler_bytes;
        println!(
            "{label} dump {i:2}: {ms:7.1} ms, peak +{:6.1} MiB, after +{:6.1} MiB, profiler_bytes +{:6.2} MiB ({out} out)",
            (hwm as f64 - rss0 as f64) / 1024.0,
            (rss as f64 - rss0 as f64) / 1024.0,
            (pb as f64 - pb0 as f64) / 1048576.0,
        );
    }
}

/// The distinct return addresses of an unsymbolized profile.
fn profile_addresses() -> Vec<usize> {
    let p = heapsight::profile_unsymbolized();
    let mut a: Vec<usize> = p
        .sites()
        .iter()
        .flat_map(|s| s.frames().iter().map(|f| f.address))
        .collect();
    a.sort_unstable();
    a.dedup();
    a
}

/// File offsets (of `addr - 1`) of the addresses in this binary, and the binary's path.
fn file_offsets(addrs: &[usize]) -> (String, Vec<u64>) {
    let maps = bench_elf::self_mappings();
    let mapping_of = |a: usize| {
        maps.iter()
            .find(|m| (m.start..m.limit).contains(&(a as u64)))
    };
    let Some(exe) = mapping_of(file_offsets as *const () as usize) else {
        return (String::new(), Vec::new());
    };
    let mut offs = Vec::new();
    for &a in addrs {
        if let Some(m) = mapping_of(a).filter(|m| m.file == exe.file) {
            offs.push(a as u64 - 1 - m.start + m.offset);
        }
    }
    (exe.file.clone(), offs)
}

/// addr2line's `Context` on the whole file (what the helper process runs), in process and
/// dropped after the dump.
fn addr2line_in_process(addrs: &[usize]) -> usize {
    let (path, offs) = file_offsets(addrs);
    let data = bench_elf::MappedFile::open(&path).expect("map the executable");
    symbolize_offsets(data.bytes(), &offs, true).len()
}

/// Symbol-table names plus lazily parsed line tables, everything dropped at the end.
fn symtab_lines(addrs: &[usize]) -> usize {
    let (path, offs) = file_offsets(addrs);
    let data = bench_elf::MappedFile::open(&path).expect("map the executable");
    symbolize_offsets(data.bytes(), &offs, false).len()
}

/// One line per offset: `name file:line`, with inlined frames (`frames`) or the symbol table's
/// name plus the line program's location.
pub fn symbolize_offsets(data: &[u8], offs: &[u64], frames: bool) -> Vec<String> {
    use addr2line::gimli;
    use object::{Object, ObjectSection};
    let file = object::File::parse(data).unwrap();
    let endian = if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let dwarf = gimli::Dwarf::load(|id| -> Result<_, ()> {
        let d = file
            .section_by_name(id.name())
            .and_then(|s| s.data().ok())
            .unwrap_or(&[]);
        Ok(gimli::EndianSlice::new(d, endian))
    })
    .unwrap();
    let t = Instant::now();
    let ctx = addr2line::Context::from_dwarf(dwarf).unwrap();
    if std::env::var_os("DUMP_COST_STATUS").is_some() {
        let st = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        eprintln!("after from_dwarf {:?}", t.elapsed());
        for l in st
            .lines()
            .filter(|l| l.starts_with("Rss") || l.starts_with("VmHWM"))
        {
            eprintln!("ctx {l}");
        }
    }
    let symtab = (!frames).then(|| file.symbol_map());
    let mut out = Vec::new();
    for &off in offs {
        let Some(v) = bench_elf::file_offset_to_vaddr(&file, off) else {
            continue;
        };
        let mut line = String::new();
        if frames {
            let mut it = ctx.find_frames(v).skip_all_loads().unwrap();
            while let Ok(Some(f)) = it.next() {
                let n = f
                    .function
                    .as_ref()
                    .and_then(|n| n.demangle().ok())
                    .unwrap_or_default();
                let l = f
                    .location
                    .map(|l| format!("{}:{}", l.file.unwrap_or(""), l.line.unwrap_or(0)));
                line.push_str(&format!("{n} {} ", l.unwrap_or_default()));
            }
        } else {
            let name = symtab
                .as_ref()
                .unwrap()
                .containing(v)
                .map(|s| s.name())
                .unwrap_or("??");
            let l = ctx.find_location(v).ok().flatten();
            line = format!(
                "{} {}:{}",
                rustc_demangle::demangle(name),
                l.as_ref().and_then(|l| l.file).unwrap_or(""),
                l.and_then(|l| l.line).unwrap_or(0)
            );
        }
        out.push(line);
    }
    if std::env::var_os("DUMP_COST_STATUS").is_some() {
        let st = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        for l in st
            .lines()
            .filter(|l| l.starts_with("Rss") || l.starts_with("VmHWM"))
        {
            eprintln!("helper {l}");
        }
    }
    out
}

/// Symbolization in a child process: this binary re-run with `--helper`, offsets on stdin.
fn helper(addrs: &[usize]) -> usize {
    use std::process::{Command, Stdio};
    let (path, offs) = file_offsets(addrs);
    let mut child = Command::new("/proc/self/exe")
        .arg("--helper")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = offs.iter().map(|o| format!("{o:x}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    child.wait().unwrap();
    text.lines().count()
}

/// The `--helper` side: reads hex offsets from stdin, prints one symbolized line each, and
/// reports its own peak resident memory on stderr. Returns true if this run was a helper.
pub fn helper_main() -> bool {
    let mut args = std::env::args().skip_while(|a| a != "--helper");
    if args.next().is_none() {
        return false;
    }
    let path = args.next().unwrap();
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let offs: Vec<u64> = input
        .lines()
        .filter_map(|l| u64::from_str_radix(l, 16).ok())
        .collect();
    let data = bench_elf::MappedFile::open(&path).expect("map the executable");
    let out = symbolize_offsets(data.bytes(), &offs, true);
    let mut o = std::io::stdout().lock();
    for l in out {
        let _ = writeln!(o, "{l}");
    }
    eprintln!("helper: peak rss {:.1} MiB", rss_kib().1 as f64 / 1024.0);
    true
}

/// With `--offsets FILE`: writes this binary's path and the profile's file offsets there (for
/// measuring an out-of-tree symbolizer such as blazesym on the same addresses).
pub fn write_offsets_if_asked() {
    let Some(file) = std::env::args().skip_while(|a| a != "--offsets").nth(1) else {
        return;
    };
    let (path, offs) = file_offsets(&profile_addresses());
    let mut text = format!("{path}\n");
    for o in offs {
        text.push_str(&format!("{o:x}\n"));
    }
    std::fs::write(file, text).unwrap();
}
