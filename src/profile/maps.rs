//! The process's executable mappings, for pprof's `Mapping` messages and offline symbolization.
//!
//! Like Go's `runtime/pprof` (`parseProcSelfMaps`, `elfBuildID`) we list the executable entries
//! of `/proc/self/maps` and give each file-backed one the GNU build ID of its ELF file, so that
//! `go tool pprof BINARY PROFILE` (or a symbol server) can match the binary to the profile and
//! turn addresses into functions after the fact. The build ID is the one of what is mapped, not of
//! whatever file is at the path now (a deploy may have replaced it): `elf::open_mapped` reads it
//! from the loaded image's notes in memory, else from the file proven to be the mapped one; even
//! stripped binaries keep it. A mapping whose file cannot be had gets what memory tells, and the
//! profile's comments say so (`symbols::notes`).
//!
//! # Where a mapping starts
//!
//! Each mapping is reported exactly as `/proc/self/maps` gives it (page-aligned start and file
//! offset), as Go's `runtime/pprof` does. `go tool pprof` finds the executable segment inside the
//! page itself (the code of a PIE Rust binary may start at file offset `0x2b900` of a mapping
//! that starts at offset `0x2b000`) and computes the load bias from it: checked against Go 1.26's
//! `go tool pprof` by `tests/profiles_go.rs`, which symbolizes an unsymbolized profile and a text
//! profile offline.
pub(crate) use crate::elf::Mapping;

/// The executable mappings of this process, with build IDs.
/// Empty on systems without procfs.
pub(crate) fn read_self() -> Vec<Mapping> {
    // No /proc/self/maps elsewhere: profiles carry no mappings, and are symbolized in process.
    if cfg!(any(not(target_os = "linux"), heapsight_portable)) {
        return Vec::new();
    }
    let mut maps = crate::elf::self_mappings();
    for m in &mut maps {
        if !m.file.starts_with('/') {
            continue;
        }
        let opened = crate::elf::open_mapped(m);
        if let Err(why) = opened.file {
            crate::symbols::note(why);
        }
        m.build_id = opened.build_id.unwrap_or_default();
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

/// The GNU build ID of an ELF file.
#[cfg(test)]
pub(crate) fn elf_build_id(path: &str) -> Option<String> {
    crate::elf::read_elf_info(path)?.build_id
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
    fn proc_maps_lines_round_trip() {
        let m = Mapping {
            start: 0x5000_0000,
            limit: 0x5010_0000,
            offset: 0x2b000,
            file: "/x".into(),
            build_id: String::new(),
            dev: (0, 0),
            inode: 0,
        };
        let mut out = String::new();
        write_proc_maps(std::slice::from_ref(&m), &mut out);
        assert_eq!(out, "50000000-50100000 r-xp 0002b000 00:00 0 /x\n");
        assert_eq!(crate::elf::parse_maps(&out), vec![m]);
    }

    #[test]
    fn non_elf_has_no_build_id() {
        assert_eq!(elf_build_id("/proc/self/maps"), None);
        assert_eq!(elf_build_id("/nonexistent"), None);
    }

    /// The portable paths in force (`--cfg heapsight_portable`, or a target other than Linux):
    /// profiles carry no mappings.
    #[test]
    #[cfg(any(heapsight_portable, not(target_os = "linux")))]
    fn portable_paths_read_no_mappings() {
        assert!(read_self().is_empty());
    }
}
