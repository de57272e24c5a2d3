//! The process's executable mappings and the ELF files behind them, read at dump time only.
//!
//! `/proc/self/maps` lists what is mapped where; each file is then mapped read-only for as long as
//! one dump needs it and parsed with the `object` crate (headers, notes, symbol tables, DWARF
//! sections are all borrowed from the mapping, nothing is copied). The pages touched are clean
//! file pages: they count in resident memory only while mapped, and go when [`MappedFile`] drops.
use std::fs::File;
use std::os::unix::io::AsRawFd;

use object::{Object, ObjectSegment};

/// One executable mapping of this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub limit: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The mapped file's path.
    pub file: String,
    /// Lower-case hex of the GNU build ID, or empty.
    pub build_id: String,
}

/// The executable mappings of this process, without build IDs; empty without procfs.
pub fn self_mappings() -> Vec<Mapping> {
    parse_maps(&std::fs::read_to_string("/proc/self/maps").unwrap_or_default())
}

/// The executable mappings of a `/proc/<pid>/maps` text, in file order, without build IDs.
/// Follows Go's rules: only `x` mappings; an inode-0 mapping without a name (an unpopulated
/// huge-page text fragment) is skipped; ` (deleted)` is trimmed from file names.
pub(crate) fn parse_maps(text: &str) -> Vec<Mapping> {
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

/// A file mapped read-only and private, unmapped on drop.
pub struct MappedFile {
    ptr: *mut libc::c_void,
    len: usize,
}

impl MappedFile {
    /// Maps the whole of `path`, or `None` if it cannot be opened or mapped (or is empty).
    pub fn open(path: &str) -> Option<MappedFile> {
        let f = File::open(path).ok()?;
        let len = usize::try_from(f.metadata().ok()?.len()).ok()?;
        if len == 0 || len > isize::MAX as usize {
            return None;
        }
        // SAFETY: a fresh read-only private mapping chosen by the kernel (null hint), of a file
        // descriptor that is open for the duration of the call; it aliases no Rust object. The
        // mapping outlives the descriptor (closed when `f` drops), as mmap(2) specifies.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        Some(MappedFile { ptr, len })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is a live read-only mapping owned by `self` until drop, so the
        // slice cannot outlive it, and nothing writes through a PROT_READ private mapping. The one
        // case this does not cover is another process truncating the file while it is mapped:
        // a read past the new end faults (SIGBUS). The files read here are the executable and
        // libraries this process runs from, mapped executable by the loader; the kernel refuses
        // writes to a running executable (ETXTBSY) and a truncated library would fault the
        // program's own code first.
        unsafe { core::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `open` created; `bytes()` borrows `self`, so no slice
        // into it is alive.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// What the pprof mappings need from an ELF file: its build ID.
pub(crate) struct ElfInfo {
    pub build_id: Option<String>,
}

/// Reads the build ID of an ELF file (from its notes, which stripped binaries keep).
pub(crate) fn read_elf_info(path: &str) -> Option<ElfInfo> {
    let map = MappedFile::open(path)?;
    let file = object::File::parse(map.bytes()).ok()?;
    if file.format() != object::BinaryFormat::Elf {
        return None;
    }
    let build_id = file
        .build_id()
        .ok()
        .flatten()
        .map(|id| id.iter().map(|b| format!("{b:02x}")).collect());
    Some(ElfInfo { build_id })
}

/// The link-time virtual address of the byte at `file_offset`, through the `PT_LOAD` segment
/// that holds it.
pub fn file_offset_to_vaddr(file: &object::File<'_>, file_offset: u64) -> Option<u64> {
    file.segments().find_map(|s| {
        let (off, size) = s.file_range();
        (file_offset >= off && file_offset - off < size).then(|| file_offset - off + s.address())
    })
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
        let m = parse_maps(text);
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
    fn a_code_address_maps_back_to_its_link_time_address() {
        // This function's run-time address, through /proc/self/maps and the ELF segments, must
        // land on the symbol table's address for it (an independent route to the same number).
        let here = a_code_address_maps_back_to_its_link_time_address as *const () as usize as u64;
        let m = self_mappings()
            .into_iter()
            .find(|m| (m.start..m.limit).contains(&here))
            .expect("this code is mapped");
        let map = MappedFile::open(&m.file).expect("mappable");
        let file = object::File::parse(map.bytes()).expect("ELF");
        let vaddr = file_offset_to_vaddr(&file, here - m.start + m.offset).expect("in a segment");
        let sym = file
            .symbol_map()
            .containing(vaddr)
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        assert!(
            sym.contains("a_code_address_maps_back_to_its_link_time_address"),
            "{sym}"
        );
    }
}
