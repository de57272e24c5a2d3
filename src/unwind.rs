//! The DWARF unwinder of sampled stacks: `framehop` over the loaded objects' `.eh_frame`, with
//! every stack word read through the caller's checked reader.
//!
//! libgcc's `_Unwind_Backtrace` (what `backtrace::trace` calls) trusts the CFI and the registers
//! it computes: under a frame whose `rbp` disagrees with its CFI (hand-written assembly, JIT code,
//! a context-switch trampoline) it dereferences a garbage address and the process faults. framehop
//! reads the stack only through a callback, so the capture decides what may be read (see
//! `stack::Reader`), and an unreadable word ends the trace instead of the process. It needs no lock
//! of the loader's or of `backtrace`'s, and does not allocate while unwinding
//! ([`MustNotAllocateDuringUnwind`]).
//!
//! State: the module table (one entry per loaded object with a `PT_GNU_EH_FRAME`: its address
//! range and its `.eh_frame_hdr` / `.eh_frame`, read in place from the loaded image) and a pool of
//! unwind caches. Both are built outside the hook ([`refresh`]: at activation and at dumps, when
//! the loader's count of loaded objects changed); the hook only reads them.
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, Module, MustNotAllocateDuringUnwind, Unwinder};

type Table = UnwinderX86_64<&'static [u8], MustNotAllocateDuringUnwind>;
type Cache = CacheX86_64<MustNotAllocateDuringUnwind>;

/// The current module table (null before the first [`refresh`]).
static TABLE: AtomicPtr<Table> = AtomicPtr::new(core::ptr::null_mut());
/// Traces reading [`TABLE`]: a refresh frees the table it replaced once this is back to 0.
static READERS: AtomicUsize = AtomicUsize::new(0);
/// One refresh at a time.
static REFRESHING: AtomicBool = AtomicBool::new(false);
/// The loader's count of objects ever loaded and unloaded (`dlpi_adds + dlpi_subs`) when the
/// table was built: a refresh with the same count has nothing to do.
static BUILT_AT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Unwind caches (~40 KiB each: the rule cache and gimli's fixed-size evaluation storage), one per
/// concurrent trace; a trace takes a free one and waits (yielding) while all are taken. A trace
/// holds one for a few microseconds, never across a lock or an allocation.
const POOL: usize = 4;
static CACHES: [AtomicPtr<Cache>; POOL] = [const { AtomicPtr::new(core::ptr::null_mut()) }; POOL];
static TAKEN: [AtomicBool; POOL] = [const { AtomicBool::new(false) }; POOL];

/// Builds the module table if the loaded objects changed since the last build, and the caches
/// the first time. Outside the hook, inside the profiler guard (it allocates the table, which
/// is the profiler's memory), outside every heapsight lock (it takes the loader's lock).
pub(crate) fn refresh() {
    if REFRESHING.swap(true, Acquire) {
        return;
    }
    for c in &CACHES {
        if c.load(Acquire).is_null() {
            c.store(Box::into_raw(Box::new(Cache::new_in())), Release);
        }
    }
    let count = crate::elf::loader_count();
    if count.is_none() || count != Some(BUILT_AT.load(Relaxed)) || TABLE.load(Acquire).is_null() {
        let new = Box::into_raw(Box::new(build()));
        let old = TABLE.swap(new, AcqRel);
        BUILT_AT.store(count.unwrap_or(u64::MAX), Relaxed);
        if !old.is_null() {
            // A trace that loaded `old` incremented READERS before loading it; wait until the
            // traces in progress are done (microseconds each).
            while READERS.load(SeqCst) != 0 {
                std::thread::yield_now();
            }
            // SAFETY: `old` came from `Box::into_raw` above (an earlier refresh) and is no
            // longer reachable: TABLE points to `new`, and every trace that could have loaded
            // `old` has finished (READERS went back to 0 after the swap).
            drop(unsafe { Box::from_raw(old) });
        }
    }
    REFRESHING.store(false, Release);
}

/// One module per loaded object that has a `PT_GNU_EH_FRAME` segment.
fn build() -> Table {
    let mut table = Table::new();
    crate::elf::for_each_loaded(|bias, phdrs| {
        if let Some(m) = module(bias, phdrs) {
            table.add_module(m);
        }
        false
    });
    table
}

/// The module of one loaded object: its `PT_LOAD` range, and `.eh_frame_hdr` (the
/// `PT_GNU_EH_FRAME` segment) with `.eh_frame` (found through the header's `eh_frame_ptr`),
/// both as slices of the loaded image. Link-time addresses (SVMA) are image-relative for ELF
/// (`base_svma` 0); `bias` turns them into run-time ones.
fn module(bias: u64, phdrs: &[crate::elf::Phdr]) -> Option<Module<&'static [u8]>> {
    let loads = || phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD);
    let lo = loads().map(|p| p.p_vaddr).min()?;
    let hi = loads().map(|p| p.p_vaddr.saturating_add(p.p_memsz)).max()?;
    let hdr = phdrs.iter().find(|p| p.p_type == libc::PT_GNU_EH_FRAME)?;
    // The readable `PT_LOAD` segment around `[vaddr, vaddr + len)`: where a slice may reach.
    let segment_end = |vaddr: u64, len: u64| {
        loads()
            .filter(|p| p.p_flags & libc::PF_R != 0)
            .find(|p| {
                p.p_vaddr <= vaddr
                    && vaddr
                        .checked_add(len)
                        .is_some_and(|e| e <= p.p_vaddr + p.p_filesz)
            })
            .map(|p| p.p_vaddr + p.p_filesz)
    };
    let hdr_vaddr = hdr.p_vaddr;
    segment_end(hdr_vaddr, hdr.p_memsz)?;
    let hdr_data = image(bias, hdr_vaddr, hdr.p_memsz)?;
    let eh_frame_vaddr = eh_frame_address(hdr_data, hdr_vaddr)?;
    let eh_frame_end = segment_end(eh_frame_vaddr, 4)?;
    let eh_frame = image(bias, eh_frame_vaddr, eh_frame_end - eh_frame_vaddr)?;
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        eh_frame_hdr_svma: Some(hdr_vaddr..hdr_vaddr + hdr.p_memsz),
        eh_frame_hdr: Some(hdr_data),
        eh_frame_svma: Some(eh_frame_vaddr..eh_frame_end),
        eh_frame: Some(eh_frame),
        ..Default::default()
    };
    Some(Module::new(
        String::new(),
        bias.wrapping_add(lo)..bias.wrapping_add(hi),
        bias,
        info,
    ))
}

/// `len` bytes of the loaded image at link-time address `vaddr`, which the caller found inside
/// a readable `PT_LOAD` segment.
fn image(bias: u64, vaddr: u64, len: u64) -> Option<&'static [u8]> {
    let start = usize::try_from(bias.wrapping_add(vaddr)).ok()?;
    let len = usize::try_from(len).ok()?;
    // SAFETY: `[start, start + len)` lies inside a readable `PT_LOAD` segment of an object the
    // loader has mapped (checked by the caller against its program headers), and nothing writes
    // to these read-only sections. The slice is `'static` for as long as the object stays
    // loaded: objects are unloaded only by `dlclose`, and a table that still names an unloaded
    // object is replaced at the next refresh (docs/reliability.md, limits of guarantee 9).
    Some(unsafe { core::slice::from_raw_parts(start as *const u8, len) })
}

/// The link-time address of `.eh_frame` from an `.eh_frame_hdr` (version 1) at `hdr_vaddr`:
/// `eh_frame_ptr` in the two encodings linkers write (`DW_EH_PE_pcrel | sdata4`, `datarel |
/// sdata4`) or as a 4- or 8-byte absolute address.
fn eh_frame_address(hdr: &[u8], hdr_vaddr: u64) -> Option<u64> {
    let (&version, &enc) = (hdr.first()?, hdr.get(1)?);
    if version != 1 {
        return None;
    }
    let field = hdr.get(4..)?;
    let s4 = || Some(i32::from_le_bytes(field.get(..4)?.try_into().ok()?) as i64);
    match enc {
        0x1b => Some(hdr_vaddr.wrapping_add(4).wrapping_add_signed(s4()?)),
        0x3b => Some(hdr_vaddr.wrapping_add_signed(s4()?)),
        0x03 => Some(u32::from_le_bytes(field.get(..4)?.try_into().ok()?) as u64),
        0x00 | 0x04 => Some(u64::from_le_bytes(field.get(..8)?.try_into().ok()?)),
        _ => None,
    }
}

/// Unwinds from the registers `(ip, sp, bp)` into `buf` (the first entry is `ip`, then return
/// addresses); returns how many, 0 before the first [`refresh`]. Every stack word is read
/// through `read`, which says `Err` for a word it cannot prove readable; the trace ends there.
/// Allocates nothing and takes no lock (a trace waits only for a free cache).
pub(crate) fn trace(
    regs: (u64, u64, u64),
    buf: &mut [usize],
    read: &mut dyn FnMut(u64) -> Result<u64, ()>,
) -> usize {
    READERS.fetch_add(1, SeqCst);
    let table = TABLE.load(SeqCst);
    let n = if table.is_null() {
        0
    } else {
        let slot = take_cache();
        let cache = CACHES[slot].load(Acquire);
        // SAFETY: `table` is the current table or one a refresh is waiting to free: it is freed
        // only after READERS, incremented above before the load, comes back to 0. `cache` was
        // made by `refresh` before `table` existed (never freed), and TAKEN[slot] gives this
        // trace exclusive use of it until it is released below.
        let n = unsafe { unwind(&*table, &mut *cache, regs, buf, read) };
        TAKEN[slot].store(false, Release);
        n
    };
    READERS.fetch_sub(1, SeqCst);
    n
}

/// A cache slot this trace now owns.
fn take_cache() -> usize {
    loop {
        for (i, t) in TAKEN.iter().enumerate() {
            if !t.load(Relaxed) && !t.swap(true, Acquire) {
                return i;
            }
        }
        std::thread::yield_now();
    }
}

fn unwind(
    table: &Table,
    cache: &mut Cache,
    (ip, sp, bp): (u64, u64, u64),
    buf: &mut [usize],
    read: &mut dyn FnMut(u64) -> Result<u64, ()>,
) -> usize {
    let mut read = read;
    let mut frames = table.iter_frames(ip, UnwindRegsX86_64::new(ip, sp, bp), cache, &mut read);
    let mut n = 0;
    while n < buf.len() {
        match frames.next() {
            Ok(Some(f)) => {
                buf[n] = f.address() as usize;
                n += 1;
            }
            // The root (`Ok(None)`), or a word the reader refused, or no unwind rule: the
            // frames so far are what is known.
            _ => break,
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eh_frame_pointer_encodings() {
        let mut hdr = vec![1u8, 0x1b, 0x03, 0x3b];
        hdr.extend_from_slice(&(-0x100i32).to_le_bytes());
        assert_eq!(eh_frame_address(&hdr, 0x2000), Some(0x2000 + 4 - 0x100));
        hdr[1] = 0x3b;
        assert_eq!(eh_frame_address(&hdr, 0x2000), Some(0x2000 - 0x100));
        hdr[1] = 0x03;
        assert_eq!(eh_frame_address(&hdr, 0), Some(0xffff_ff00));
        hdr[1] = 0x42;
        assert_eq!(eh_frame_address(&hdr, 0), None);
        hdr[0] = 2;
        assert_eq!(eh_frame_address(&hdr, 0), None);
        assert_eq!(eh_frame_address(&[1, 0x1b, 3], 0), None);
    }
}
