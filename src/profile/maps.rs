//! The process's executable mappings, for pprof's `Mapping` messages and offline symbolization.
//!
//! Like Go's `runtime/pprof` (`parseProcSelfMaps`, `elfBuildID`) we list the executable entries
//! of `/proc/self/maps` and give each file-backed one the GNU build ID of its ELF file, so that
//! `go tool pprof BINARY PROFILE` (or a symbol server) can match the binary to the profile and
//! turn addresses into functions after the fact. The build ID is read from the file's `PT_NOTE`
//! segments (program headers, which even stripped binaries keep) with a few positioned reads: no
//! ELF crate needed.
//!
//! # Where a mapping starts
//!
//! Each mapping is reported exactly as `/proc/self/maps` gives it (page-aligned start and file
//! offset), as Go's `runtime/pprof` does. `go tool pprof` finds the executable segment inside the
//! page itself (the code of a PIE Rust binary may start at file offset `0x2b900` of a mapping
//! that starts at offset `0x2b000`) and computes the load bias from it: checked against Go 1.26's
//! `go tool pprof` by `tests/profiles_go.rs`, which symbolizes an unsymbolized profile and a text
//! profile offline.
use std::fs::File;
use std::os::unix::fs::FileExt;

/// One executable mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub start: u64,
    pub limit: u64,
    pub offset: u64,
    pub file: String,
    /// Lower-case hex of the GNU build ID, or empty.
    pub build_id: String,
}

/// The executable mappings of this process, with build IDs.
/// Empty on systems without procfs.
pub(crate) fn read_self() -> Vec<Mapping> {
    // No /proc/self/maps elsewhere: profiles carry no mappings, and are symbolized in process.
    if cfg!(any(not(target_os = "linux"), heapsight_portable)) {
        return Vec::new();
    }
    let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut maps = parse(&text);
    for m in &mut maps {
        if !m.file.starts_with('/') {
            continue;
        }
        let Some(elf) = read_elf(&m.file) else {
            continue;
        };
        m.build_id = elf.build_id.unwrap_or_default();
    }
    maps
}

/// Writes mappings as `/proc/<pid>/maps` lines (the form pprof's legacy parser reads).
pub(crate) fn write_proc_maps(maps: &[Mapping], out: &mut String) {
    use std::fmt::Write as _;
    for m in maps {
        let _ = writeln!(
            out,
            "{:x}-{:x} r-xp {:08x} 00:00 0 {}",
            m.start, m.limit, m.offset, m.file
        );
    }
}

/// The executable mappings of a `/proc/<pid>/maps` text, in file order, without build IDs.
/// Follows Go's rules: only `x` mappings; an inode-0 mapping without a name (an unpopulated
/// huge-page text fragment) is skipped; ` (deleted)` is trimmed from file names.
pub(crate) fn parse(text: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(6, ' ');
        let (Some(range), Some(perm), Some(offset), Some(_dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let file = fields.next().unwrap_or("").trim_start();
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(limit), Ok(offset)) = (
            u64::from_str_radix(lo, 16),
            u64::from_str_radix(hi, 16),
            u64::from_str_radix(offset, 16),
        ) else {
            continue;
        };
        if perm.as_bytes().get(2) != Some(&b'x') {
            continue;
        }
        if inode == "0" && file.is_empty() {
            continue;
        }
        let file = file.strip_suffix(" (deleted)").unwrap_or(file);
        out.push(Mapping {
            start,
            limit,
            offset,
            file: file.to_string(),
            build_id: String::new(),
        });
    }
    out
}

const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

/// What we read from an ELF file's program headers.
pub(crate) struct ElfInfo {
    pub build_id: Option<String>,
}

/// The GNU build ID of an ELF file, from the `NT_GNU_BUILD_ID` note in a `PT_NOTE` segment.
#[cfg(test)]
pub(crate) fn elf_build_id(path: &str) -> Option<String> {
    read_elf(path)?.build_id
}

/// Reads the build ID of an ELF file.
pub(crate) fn read_elf(path: &str) -> Option<ElfInfo> {
    let f = File::open(path).ok()?;
    let mut h = [0u8; 64];
    f.read_exact_at(&mut h, 0).ok()?;
    if &h[..4] != b"\x7fELF" {
        return None;
    }
    let le = match h[5] {
        1 => true,
        2 => false,
        _ => return None,
    };
    let u16_at = |b: &[u8], o: usize| {
        let v = [b[o], b[o + 1]];
        if le {
            u16::from_le_bytes(v)
        } else {
            u16::from_be_bytes(v)
        }
    };
    let u32_at = |b: &[u8], o: usize| {
        let v = b[o..o + 4].try_into().unwrap_or([0; 4]);
        if le {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        }
    };
    let u64_at = |b: &[u8], o: usize| {
        let v = b[o..o + 8].try_into().unwrap_or([0; 8]);
        if le {
            u64::from_le_bytes(v)
        } else {
            u64::from_be_bytes(v)
        }
    };
    let wide = match h[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    // e_phoff, e_phentsize, e_phnum (ELF64 / ELF32 header layouts).
    let (phoff, phentsize, phnum) = if wide {
        (u64_at(&h, 32), u16_at(&h, 54) as u64, u16_at(&h, 56) as u64)
    } else {
        (
            u32_at(&h, 28) as u64,
            u16_at(&h, 42) as u64,
            u16_at(&h, 44) as u64,
        )
    };
    if phentsize < if wide { 56 } else { 32 } || phnum > 4096 {
        return None;
    }
    let mut ph = vec![0u8; phentsize as usize];
    let mut info = ElfInfo { build_id: None };
    for i in 0..phnum {
        f.read_exact_at(&mut ph, phoff + i * phentsize).ok()?;
        let kind = u32_at(&ph, 0);
        if kind != PT_NOTE || info.build_id.is_some() {
            continue;
        }
        // p_offset, p_filesz.
        let (off, size) = if wide {
            (u64_at(&ph, 8), u64_at(&ph, 32))
        } else {
            (u32_at(&ph, 4) as u64, u32_at(&ph, 16) as u64)
        };
        if size > 1 << 16 {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        if f.read_exact_at(&mut notes, off).is_ok() {
            info.build_id = find_build_id(&notes, u32_at);
        }
    }
    Some(info)
}

/// Walks the notes of one segment: `namesz, descsz, type`, then name and desc, each padded to 4.
fn find_build_id(notes: &[u8], u32_at: impl Fn(&[u8], usize) -> u32) -> Option<String> {
    let pad = |n: usize| n.div_ceil(4) * 4;
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = u32_at(notes, at) as usize;
        let descsz = u32_at(notes, at + 4) as usize;
        let kind = u32_at(notes, at + 8);
        let name_at = at + 12;
        let desc_at = name_at.checked_add(pad(namesz))?;
        let end = desc_at.checked_add(pad(descsz))?;
        if desc_at + descsz > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz) == Some(b"GNU\0") {
            return Some(
                notes[desc_at..desc_at + descsz]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            );
        }
        at = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_mappings_like_go() {
        let text = "\
00400000-0040b000 r-xp 00000000 fc:01 787766                             /bin/cat
0060a000-0060b000 r--p 0000a000 fc:01 787766                             /bin/cat
7f7d7797c000-7f7d77b36000 r-xp 00001000 fc:01 1180226                    /lib/x86_64-linux-gnu/libc-2.19.so (deleted)
7f7d77d3c000-7f7d77d41000 r-xp 00000000 00:00 0
7ffc34343000-7ffc34345000 r-xp 00000000 00:00 0                          [vdso]
";
        let m = parse(text);
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].start, m[0].limit, m[0].offset, m[0].file.as_str()),
            (0x400000, 0x40b000, 0, "/bin/cat")
        );
        assert_eq!(m[1].file, "/lib/x86_64-linux-gnu/libc-2.19.so");
        assert_eq!(m[1].offset, 0x1000);
        assert_eq!(m[2].file, "[vdso]");
    }

    #[test]
    fn build_id_of_this_test_binary_matches_the_linker_note() {
        let exe = std::env::current_exe().unwrap();
        let id = elf_build_id(exe.to_str().unwrap());
        // Cross-check with an independent reader when binutils is installed.
        let Ok(out) = std::process::Command::new("readelf")
            .arg("-n")
            .arg(&exe)
            .output()
        else {
            eprintln!("SKIPPED: readelf not installed");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let want = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: "))
            .map(str::to_string);
        assert_eq!(id, want);
        assert!(
            id.is_some(),
            "rustc's linker writes a GNU build ID by default on Linux"
        );
    }

    #[test]
    fn proc_maps_lines_round_trip() {
        let m = Mapping {
            start: 0x5000_0000,
            limit: 0x5010_0000,
            offset: 0x2b000,
            file: "/x".into(),
            build_id: String::new(),
        };
        let mut out = String::new();
        write_proc_maps(std::slice::from_ref(&m), &mut out);
        assert_eq!(out, "50000000-50100000 r-xp 0002b000 00:00 0 /x\n");
        assert_eq!(parse(&out), vec![m]);
    }

    #[test]
    fn non_elf_has_no_build_id() {
        assert_eq!(elf_build_id("/proc/self/maps"), None);
        assert_eq!(elf_build_id("/nonexistent"), None);
    }
}
