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
    /// Device (major, minor) and inode of the mapped file, from the maps line: what identifies
    /// it when it has no build ID (a file at the same path may be another one, see
    /// [`open_mapped`]).
    pub(crate) dev: (u32, u32),
    pub(crate) inode: u64,
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
        let (Some(range), Some(perm), Some(offset), Some(dev), Some(inode)) = (
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
        // The name pprof shows; that the file at this path is no longer the mapped one (or is
        // gone) is found out when it is opened (see `open_mapped`), not from this suffix, which
        // a file's own name may also end with.
        let file = file.strip_suffix(" (deleted)").unwrap_or(file);
        let dev = dev
            .split_once(':')
            .and_then(|(a, b)| {
                Some((
                    u32::from_str_radix(a, 16).ok()?,
                    u32::from_str_radix(b, 16).ok()?,
                ))
            })
            .unwrap_or((0, 0));
        out.push(Mapping {
            start,
            limit,
            offset,
            file: file.to_string(),
            build_id: String::new(),
            dev,
            inode: inode.parse().unwrap_or(0),
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
        MappedFile::of(&File::open(path).ok()?)
    }

    /// Maps the whole of an open file, or `None` if it cannot be mapped (or is empty).
    fn of(f: &File) -> Option<MappedFile> {
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
#[cfg(test)]
pub(crate) fn read_elf_info(path: &str) -> Option<ElfInfo> {
    elf_info(&MappedFile::open(path)?)
}

fn elf_info(map: &MappedFile) -> Option<ElfInfo> {
    let file = object::File::parse(map.bytes()).ok()?;
    if file.format() != object::BinaryFormat::Elf {
        return None;
    }
    let build_id = file.build_id().ok().flatten().map(hex);
    Some(ElfInfo { build_id })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The build ID of the object loaded at `m`, and the mapped file itself, opened.
pub(crate) struct Opened {
    /// The build ID of what is mapped: from the loaded image's own notes (in memory, so true
    /// whatever happened to the file since), else from the file found to be the mapped one.
    pub build_id: Option<String>,
    /// The mapped file, or why it cannot be had.
    pub file: Result<MappedFile, String>,
}

/// Opens the file that is mapped at `m`, which need not be the file now at `m.file`: a deploy
/// that renames a new binary over the old one leaves the process running the old (now deleted)
/// file while the path names the new one, whose build ID and symbols would be wrong for every
/// address. Candidates, in order: the path; `/proc/self/exe` (the running executable, even
/// deleted; any process may open its own); `/proc/self/map_files/<start>-<limit>` (the mapped
/// file itself; opening needs `CAP_SYS_ADMIN` or `CAP_CHECKPOINT_RESTORE`). A candidate is taken
/// only if it is the mapped file: same GNU build ID as the loaded image's notes in memory, or,
/// for an object without one, same device and inode as the maps line. When none is, `file`
/// says why and the caller reports the mapping without symbols (the build ID from memory still
/// lets a symbol server or `go tool pprof` with the right binary symbolize it).
pub(crate) fn open_mapped(m: &Mapping) -> Opened {
    let loaded = loaded_build_id(m.start);
    let candidates = [
        m.file.clone(),
        "/proc/self/exe".to_string(),
        format!("/proc/self/map_files/{:x}-{:x}", m.start, m.limit),
    ];
    for path in candidates.iter().filter(|p| p.starts_with('/')) {
        let Ok(f) = File::open(path) else { continue };
        let Some(map) = MappedFile::of(&f) else {
            continue;
        };
        let id = elf_info(&map).and_then(|e| e.build_id);
        if is_mapped_file(loaded.as_deref(), id.as_deref(), &f, m) {
            return Opened {
                build_id: loaded.or(id),
                file: Ok(map),
            };
        }
    }
    let why = if loaded.is_some() {
        "the file at this path is not the one mapped (replaced or deleted on disk) and the \
         mapped one cannot be opened: build ID from memory, no symbols"
    } else {
        "the file cannot be opened, or the file at this path is not the one mapped (replaced \
         or deleted on disk): no build ID, no symbols"
    };
    Opened {
        build_id: loaded,
        file: Err(format!("{}: {why}", m.file)),
    }
}

/// Whether an opened candidate is the file mapped at `m`: its build ID is the loaded image's
/// (`loaded`), or, for an object that has none in memory, its device and inode are the maps
/// line's.
fn is_mapped_file(loaded: Option<&str>, id: Option<&str>, f: &File, m: &Mapping) -> bool {
    if let Some(want) = loaded {
        return id == Some(want);
    }
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = f.metadata() else {
        return false;
    };
    let dev = (libc::major(meta.dev()), libc::minor(meta.dev()));
    m.inode != 0 && meta.ino() == m.inode && dev == m.dev
}

/// The GNU build ID in the notes of the object loaded at `addr`, read from memory: the loader
/// maps the `PT_NOTE` segment (inside a readable `PT_LOAD` one), so this is the build ID of
/// what runs, whatever the file on disk has become. `None` without one, or without
/// `dl_iterate_phdr`.
pub(crate) fn loaded_build_id(addr: u64) -> Option<String> {
    let mut out = None;
    for_each_loaded(|bias, phdrs| {
        let load = |p: &&Phdr| p.p_type == libc::PT_LOAD;
        let holds = |p: &Phdr, a: u64, len: u64| {
            let lo = bias.wrapping_add(p.p_vaddr);
            lo <= a
                && a.checked_add(len)
                    .is_some_and(|e| e <= lo.wrapping_add(p.p_memsz))
        };
        // The kernel maps whole pages: a mapping's start (what `/proc/self/maps` gives) may lie
        // before its segment's first byte, in the same page.
        let in_pages = |p: &Phdr| {
            let lo = bias.wrapping_add(p.p_vaddr) & !4095;
            let hi = bias.wrapping_add(p.p_vaddr).saturating_add(p.p_memsz);
            lo <= addr && addr < hi
        };
        if !phdrs.iter().filter(load).any(in_pages) {
            return false;
        }
        for note in phdrs.iter().filter(|p| p.p_type == libc::PT_NOTE) {
            let start = bias.wrapping_add(note.p_vaddr);
            let readable = phdrs
                .iter()
                .filter(load)
                .any(|p| p.p_flags & libc::PF_R != 0 && holds(p, start, note.p_memsz));
            let Ok(len) = usize::try_from(note.p_memsz) else {
                continue;
            };
            if !readable || len == 0 {
                continue;
            }
            // SAFETY: `[start, start + len)` lies inside a `PT_LOAD` segment of this object
            // with `PF_R`, which the loader has mapped readable for as long as the object stays
            // loaded; `dl_iterate_phdr` holds the loader's lock during this callback, so it
            // cannot be unloaded meanwhile.
            let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, len) };
            if let Some(id) = gnu_build_id(bytes, note.p_align) {
                out = Some(hex(id));
                break;
            }
        }
        true
    });
    out
}

/// A program header of a loaded object.
#[cfg(target_pointer_width = "64")]
pub(crate) type Phdr = libc::Elf64_Phdr;
#[cfg(target_pointer_width = "32")]
pub(crate) type Phdr = libc::Elf32_Phdr;

/// Calls `f(load bias, program headers)` for each loaded object (the executable first) until it
/// returns `true`. Runs under the dynamic loader's lock: `f` must not load or unload objects.
pub(crate) fn for_each_loaded(mut f: impl FnMut(u64, &[Phdr]) -> bool) {
    iterate_loaded(&mut |info, _| {
        let phdrs = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: the loader's description of one object, valid during the callback:
            // `dlpi_phdr` points to its `dlpi_phnum` program headers, in the loaded image.
            unsafe { core::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        #[allow(clippy::unnecessary_cast)] // u32 on 32-bit targets
        f(info.dlpi_addr as u64, phdrs)
    });
}

/// The loader's count of objects loaded and unloaded so far (`dlpi_adds + dlpi_subs`): it
/// changes whenever the set of loaded objects does. `None` where the loader does not report it.
pub(crate) fn loader_count() -> Option<u64> {
    let mut count = None;
    #[cfg(all(target_os = "linux", not(target_env = "uclibc")))]
    iterate_loaded(&mut |info, size| {
        let end = core::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8;
        if size >= end {
            #[allow(clippy::useless_conversion)] // c_ulonglong is u64 on Linux targets
            let (adds, subs) = (u64::from(info.dlpi_adds), u64::from(info.dlpi_subs));
            count = Some(adds.wrapping_add(subs));
        }
        true
    });
    count
}

/// `dl_iterate_phdr` with a closure (`info`, the size of `info` the loader filled).
fn iterate_loaded(f: &mut dyn FnMut(&libc::dl_phdr_info, usize) -> bool) {
    #[cfg(all(target_os = "linux", not(heapsight_portable)))]
    {
        unsafe extern "C" fn cb(
            info: *mut libc::dl_phdr_info,
            size: libc::size_t,
            data: *mut libc::c_void,
        ) -> libc::c_int {
            // SAFETY: `data` is the `&mut &mut dyn FnMut` passed below, alive for the call;
            // `info` is the loader's description of one object, valid during the callback.
            unsafe {
                let f = &mut *(data as *mut &mut dyn FnMut(&libc::dl_phdr_info, usize) -> bool);
                libc::c_int::from(f(&*info, size))
            }
        }
        let mut f = f;
        // SAFETY: `cb` matches the callback type and only uses `data` as the `&mut &mut dyn
        // FnMut` it is; dl_iterate_phdr calls it synchronously, before `f` goes out of scope.
        unsafe {
            libc::dl_iterate_phdr(Some(cb), &mut f as *mut _ as *mut libc::c_void);
        }
    }
    #[cfg(not(all(target_os = "linux", not(heapsight_portable))))]
    {
        let _ = f;
    }
}

/// The descriptor of the `NT_GNU_BUILD_ID` note in a `PT_NOTE` segment's bytes (`align`: the
/// segment's alignment, 4 or 8, which pads each name and descriptor).
fn gnu_build_id(mut notes: &[u8], align: u64) -> Option<&[u8]> {
    let align = if align == 8 { 8 } else { 4 };
    let up = |n: usize| n.checked_add(align - 1).map(|n| n & !(align - 1));
    let word = |b: &[u8], i: usize| -> Option<usize> {
        let w = b.get(i..i + 4)?;
        Some(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as usize)
    };
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (word(notes, 0)?, word(notes, 4)?, word(notes, 8)?);
        let desc_at = 12usize.checked_add(up(namesz)?)?;
        let end = desc_at.checked_add(up(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
        if kind == 3 && name == b"GNU\0" {
            return Some(desc);
        }
        notes = notes.get(end..)?;
    }
    None
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

    /// The mapping of this test binary's code.
    fn own_code_mapping() -> Mapping {
        let here = own_code_mapping as *const () as usize as u64;
        self_mappings()
            .into_iter()
            .find(|m| (m.start..m.limit).contains(&here))
            .expect("this code is mapped")
    }

    #[test]
    #[cfg_attr(heapsight_portable, ignore = "dl_iterate_phdr, /proc/self/maps")]
    fn build_id_in_memory_is_the_files() {
        let m = own_code_mapping();
        let file = read_elf_info(&m.file).and_then(|e| e.build_id);
        assert!(file.is_some(), "rustc's linker writes a GNU build ID");
        assert_eq!(loaded_build_id(m.start), file);
        // An address in no loaded object (a fresh anonymous page) has none.
        let anon = vec![0u8; 1 << 20];
        assert_eq!(loaded_build_id(anon.as_ptr() as u64 + 4096), None);
    }

    #[test]
    fn gnu_build_id_note_parsing() {
        let mut notes = Vec::new();
        // An `NT_GNU_PROPERTY_TYPE_0`-like note first (type 5, name "GNU\0", 3-byte desc padded).
        for w in [4u32, 3, 5] {
            notes.extend_from_slice(&w.to_ne_bytes());
        }
        notes.extend_from_slice(b"GNU\0\x01\x02\x03\0");
        for w in [4u32, 4, 3] {
            notes.extend_from_slice(&w.to_ne_bytes());
        }
        notes.extend_from_slice(b"GNU\0\xde\xad\xbe\xef");
        assert_eq!(gnu_build_id(&notes, 4), Some(&[0xde, 0xad, 0xbe, 0xef][..]));
        // Truncated: no panic, no build ID.
        for cut in 0..notes.len() {
            assert_eq!(gnu_build_id(&notes[..cut], 4), None, "cut at {cut}");
        }
        // Another owner's type-3 note is not a build ID.
        let mut other = notes.clone();
        other[notes.len() - 8..notes.len() - 4].copy_from_slice(b"XYZ\0");
        assert_eq!(gnu_build_id(&other, 4), None);
    }

    #[test]
    #[cfg_attr(heapsight_portable, ignore = "dl_iterate_phdr, /proc/self/maps")]
    fn the_mapped_file_not_the_one_at_its_path() {
        let own = own_code_mapping();
        let want = loaded_build_id(own.start);
        // The path names another ELF file (as after a deploy renamed a new binary over it):
        // its build ID is not the mapped one's, so it is not taken; /proc/self/exe is.
        let mut moved = own.clone();
        let other = ["/bin/true", "/usr/bin/true", "/bin/sh"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("some other ELF binary");
        moved.file = other.into();
        let opened = open_mapped(&moved);
        assert_eq!(opened.build_id, want);
        let map = opened
            .file
            .expect("the running executable, through /proc/self/exe");
        assert_eq!(elf_info(&map).and_then(|e| e.build_id), want);
        // No build ID in memory (an anonymous page) and a path whose device and inode are not
        // the maps line's: nothing is taken, and the reason names the path.
        let anon = vec![0u8; 1 << 20];
        let start = (anon.as_ptr() as u64 + 4095) & !4095;
        let fake = Mapping {
            start,
            limit: start + 4096,
            offset: 0,
            file: other.into(),
            build_id: String::new(),
            dev: (0, 0),
            inode: 1,
        };
        let opened = open_mapped(&fake);
        assert_eq!(opened.build_id, None);
        let why = opened.file.err().expect("not the mapped file");
        assert!(
            why.starts_with(other) && why.contains("no symbols"),
            "{why}"
        );
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
