//! The process's executable mappings, for pprof's `Mapping` messages and offline symbolization.
//!
//! Like Go's `runtime/pprof` (`parseProcSelfMaps`, `elfBuildID`) we list the executable entries
//! of `/proc/self/maps` and give each file-backed one the GNU build ID of its ELF file, so that
//! `go tool pprof BINARY PROFILE` (or a symbol server) can match the binary to the profile and
//! turn addresses into functions after the fact. The build ID and the segments come from
//! `elf::read_elf_info` (the `object` crate over a read-only mapping of the file); even stripped
//! binaries keep them.
//!
//! # Where a mapping starts
//!
//! `/proc/self/maps` gives page-aligned ranges: the executable mapping of a PIE Rust binary may
//! start at file offset `0x2b000` while the code segment itself starts at file offset `0x2b900`,
//! loaded at virtual address `0x2c900`. Symbolizers must find the segment to get the load bias
//! right. Upstream pprof does (`elfexec.GetBase` with the segment's `Off`/`Vaddr`), but the
//! `go tool pprof` shipped with Go uses the Go toolchain's object reader, which assumes the
//! mapping starts where the first executable segment does (`bias = start - p_vaddr`) and so
//! resolves every Rust address about a page off (wrong functions, measured with Go 1.19). We
//! therefore report each executable mapping from the first byte of its segment: `memory_start`
//! moved up by `p_offset - offset` and `file_offset = p_offset`. Both computations then give
//! the same, correct bias; the bytes skipped are the page's head before the segment, which hold
//! no code.
use crate::elf::read_elf_info as read_elf;
pub(crate) use crate::elf::Mapping;

/// The executable mappings of this process, with build IDs, each starting at its code segment.
/// Empty on systems without procfs.
pub(crate) fn read_self() -> Vec<Mapping> {
    let mut maps = crate::elf::self_mappings();
    for m in &mut maps {
        if !m.file.starts_with('/') {
            continue;
        }
        let Some(elf) = read_elf(&m.file) else {
            continue;
        };
        m.build_id = elf.build_id.unwrap_or_default();
        align_to_segment(m, &elf.exec_segments);
    }
    maps
}

/// Moves the start of `m` to the first byte of the executable segment it maps, if that segment
/// starts inside the mapping's first page (see the module docs).
pub(crate) fn align_to_segment(m: &mut Mapping, exec_segments: &[(u64, u64)]) {
    let len = m.limit - m.start;
    for &(p_offset, _p_vaddr) in exec_segments {
        if p_offset > m.offset && p_offset < m.offset + len && p_offset - m.offset < 4096 {
            m.start += p_offset - m.offset;
            m.offset = p_offset;
            return;
        }
    }
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

/// The GNU build ID of an ELF file.
#[cfg(test)]
pub(crate) fn elf_build_id(path: &str) -> Option<String> {
    read_elf(path)?.build_id
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn mappings_start_at_their_code_segment() {
        // A PIE's text: mapped from the page at 0x2b000, segment at file offset 0x2b900.
        let mut m = Mapping {
            start: 0x5000_0000,
            limit: 0x5010_0000,
            offset: 0x2b000,
            file: "/x".into(),
            build_id: String::new(),
        };
        align_to_segment(&mut m, &[(0x2b900, 0x2c900)]);
        assert_eq!((m.start, m.offset), (0x5000_0900, 0x2b900));
        // The bias both pprof flavours compute is the loader's: start - offset + p_offset - p_vaddr.
        let loader_bias = 0x5000_0000u64 - 0x2b000 + 0x2b900 - 0x2c900;
        assert_eq!(
            m.start - 0x2c900,
            loader_bias,
            "Go toolchain reader: start - p_vaddr"
        );
        assert_eq!(
            m.start - m.offset + 0x2b900 - 0x2c900,
            loader_bias,
            "upstream pprof GetBase"
        );
        // Already aligned, or a segment elsewhere: unchanged.
        let mut n = Mapping {
            offset: 0x1000,
            ..m.clone()
        };
        let before = n.clone();
        align_to_segment(&mut n, &[(0x1000, 0x1000), (0x90000, 0x91000)]);
        assert_eq!(n, before);
        let mut out = String::new();
        write_proc_maps(&[m], &mut out);
        assert_eq!(out, "50000900-50100000 r-xp 0002b900 00:00 0 /x\n");
    }

    #[test]
    fn non_elf_has_no_build_id() {
        assert_eq!(elf_build_id("/proc/self/maps"), None);
        assert_eq!(elf_build_id("/nonexistent"), None);
    }
}
