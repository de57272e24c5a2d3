//! Stack capture for a sampled allocation: return addresses only, into a caller-provided buffer.
//!
//! Two unwinders, both reading every stack word through a [`Reader`], which never reads a word it
//! has not proven mapped: directly between our own frame and the top of the thread's stack, else
//! only from a 4 KiB block the kernel has just said is readable (`rt_sigprocmask` with an invalid
//! `how`, see [`block_readable`] for why that call).
//!
//! * **Frame pointers** (default when the program is built with `-C force-frame-pointers=yes`,
//!   which the standard library already is): follow the `rbp`/`x29` chain. Each frame holds the
//!   caller's frame pointer at `[fp]` and the return address at `[fp + 8]`. ~0.1 µs for 30 frames
//!   on the thread's stack; off it (a coroutine or green-thread stack, a `sigaltstack`, a garbage
//!   frame pointer), one probe per 4 KiB block the walk touches.
//! * **DWARF**: `framehop` on x86_64 Linux ([`crate::unwind`]), reading the stack through the same
//!   reader, so a frame whose registers disagree with its CFI ends the trace rather than the
//!   process; `backtrace::trace` (libgcc) elsewhere. Used when frame pointers are not compiled in,
//!   when asked for (`HEAPSIGHT_UNWINDER=dwarf`), and when a frame-pointer chain does not end
//!   where the stack ends: a chain is complete only when its last return address is a learned
//!   thread entry. One that breaks (misaligned, unreadable, going backwards) or meets a 0 frame
//!   pointer elsewhere (a function without frame pointers may hold 0 in rbp) would lose the
//!   program's frames above. Entries are learned: the first time a walk that ended on return
//!   address `r` is redone with DWARF and DWARF finds at most [`ENTRY_TAIL`] frames above `r`
//!   (the C start-up code, `clone3`), `r` is recorded as a thread entry, and later walks ending
//!   there are complete. The DWARF unwinder is prepared when heapsight activates, outside every
//!   heapsight lock (see `setup::init_global`), and never runs under one.
//!
//! The captured stack starts inside heapsight; the allocator frames are trimmed by name at dump
//! time (see `symbols`), where symbols are known.
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};

use crate::config::{Unwinder, DEFAULT_MAX_DEPTH, MAX_DEPTH_LIMIT};
use crate::sync;

/// Frames a sample keeps (after the allocator's own frames are trimmed): `HEAPSIGHT_MAX_DEPTH`
/// or `heapsight::set_max_depth`, read by each capture and by the snapshot.
pub(crate) static MAX_DEPTH: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_DEPTH);
/// Frames of heapsight, `__rust_alloc` and `alloc::alloc` above the user's frames: captured in
/// addition to the depth so that trimming them leaves `max_depth` user frames.
pub(crate) const ENTRY_FRAMES: usize = 24;
pub(crate) const BUF_LEN: usize = MAX_DEPTH_LIMIT + ENTRY_FRAMES;
/// At most this many DWARF frames above a frame-pointer walk's last return address make that
/// address a thread entry (`_start` and `__libc_start_main` above `__libc_start_call_main`;
/// `clone3` above `start_thread`).
const ENTRY_TAIL: usize = 2;
/// Learned thread-entry return addresses (0 = free slot). Programs have a handful of ways to
/// start a thread; when the table is full, walks ending elsewhere keep going to DWARF.
static ENTRIES: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];

static UNWINDER: AtomicU8 = AtomicU8::new(0);

pub(crate) fn set_unwinder(u: Unwinder) {
    UNWINDER.store(u as u8, Relaxed);
}

pub(crate) fn unwinder() -> Unwinder {
    match UNWINDER.load(Relaxed) {
        1 => Unwinder::FramePointers,
        2 => Unwinder::Dwarf,
        _ => Unwinder::Auto,
    }
}

/// Whether this build has frame pointers to walk (set by build.rs from the rustflags).
pub(crate) const COMPILED_WITH_FP: bool = cfg!(all(
    heapsight_frame_pointers,
    any(target_arch = "x86_64", target_arch = "aarch64")
));

/// How a frame-pointer walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// On the chain's terminator (a 0 frame pointer or return address): every frame was seen.
    Terminated,
    /// The buffer is full.
    Full,
    /// On a frame pointer that is not a frame: misaligned, unreadable, or looping.
    Broken,
}

/// Captures return addresses, leaf first, into `buf`; returns how many. `bounds` is this thread's
/// stack `[lo, hi)` or `(0, 0)` if unknown.
#[inline(never)]
pub(crate) fn capture(buf: &mut [usize], bounds: (usize, usize)) -> usize {
    let use_fp = match unwinder() {
        Unwinder::Auto => COMPILED_WITH_FP,
        Unwinder::FramePointers => true,
        Unwinder::Dwarf => false,
    };
    if !use_fp {
        let n = capture_dwarf(buf, bounds);
        if n == 0 {
            // A fork is in progress (see `sync::DWARF_UNWIND_GATE`): a frame-pointer stack,
            // however short, rather than none.
            return walk_frame_pointers(buf, bounds).0;
        }
        return n;
    }
    let (n, end) = walk_frame_pointers(buf, bounds);
    if end == End::Full {
        return n;
    }
    // A chain is complete only where the stack ends: at a learned thread entry. A 0 frame pointer
    // is no proof of that (a function built without frame pointers may hold 0 in rbp as a plain
    // register, and every program frame above it would be lost), so a chain that ends on 0
    // anywhere else is redone with DWARF like a broken one, and teaches the entry if it was one.
    let last = if n > 0 { buf[n - 1] } else { 0 };
    if n > 0 && is_entry(last) {
        return n;
    }
    let m = capture_dwarf(buf, bounds);
    if m < n {
        // A fork is in progress (0 frames), or DWARF gave up earlier than the walk (code without
        // unwind tables): the walk's frames, however short, are the better stack.
        return walk_frame_pointers(buf, bounds).0;
    }
    // Did DWARF find the program's frames above the break, or only the C start-up code?
    // (libgcc ends its trace with a 0 address, not a frame.)
    if let Some(k) = buf[..m].iter().rposition(|&ip| ip == last && n > 0) {
        if buf[k + 1..m].iter().filter(|&&ip| ip != 0).count() <= ENTRY_TAIL {
            learn_entry(last);
        }
    }
    m
}

fn is_entry(ret: usize) -> bool {
    ENTRIES.iter().any(|e| e.load(Relaxed) == ret)
}

fn learn_entry(ret: usize) {
    for e in &ENTRIES {
        match e.compare_exchange(0, ret, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(v) if v == ret => return,
            Err(_) => {}
        }
    }
}

/// Counts the DWARF captures, for tests and `Stats`.
pub(crate) static DWARF_CAPTURES: core::sync::atomic::AtomicU64 =
    core::sync::atomic::AtomicU64::new(0);

/// Whether DWARF captures go through `framehop` with checked reads ([`crate::unwind`]); elsewhere
/// (aarch64, other targets, `--cfg heapsight_portable`) through `backtrace::trace`.
const CHECKED_DWARF: bool = cfg!(all(
    target_os = "linux",
    not(heapsight_portable),
    target_arch = "x86_64"
));

/// Captures with the DWARF unwinder; returns 0 frames while a fork is in progress (see
/// [`sync::DWARF_UNWIND_GATE`]). On x86_64 Linux every stack word it reads is checked like the
/// frame-pointer walk's ([`Reader`]), so a frame whose registers disagree with its CFI ends the
/// trace rather than the process.
#[inline(never)]
pub(crate) fn capture_dwarf(buf: &mut [usize], bounds: (usize, usize)) -> usize {
    if !sync::DWARF_UNWIND_GATE.enter() {
        return 0;
    }
    DWARF_CAPTURES.fetch_add(1, Relaxed);
    let n = if CHECKED_DWARF {
        checked_dwarf(buf, bounds)
    } else {
        let mut n = 0;
        backtrace::trace(|frame| {
            if n >= buf.len() {
                return false;
            }
            buf[n] = frame.ip() as usize;
            n += 1;
            true
        });
        n
    };
    sync::DWARF_UNWIND_GATE.leave();
    n
}

/// `framehop` from this function's own registers, every stack word read through a [`Reader`].
#[inline(always)]
fn checked_dwarf(buf: &mut [usize], bounds: (usize, usize)) -> usize {
    #[cfg(all(target_os = "linux", not(heapsight_portable), target_arch = "x86_64"))]
    {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads the instruction pointer, stack pointer and frame pointer registers into
        // locals; no memory access, no side effects.
        unsafe {
            core::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
                options(nomem, nostack, preserves_flags)
            );
        }
        let mut reader = Reader::new(bounds);
        let mut read = |addr: u64| -> Result<u64, ()> {
            usize::try_from(addr)
                .ok()
                .and_then(|a| reader.word(a))
                .map(|w| w as u64)
                .ok_or(())
        };
        crate::unwind::trace((ip, sp, bp), buf, &mut read)
    }
    #[cfg(not(all(target_os = "linux", not(heapsight_portable), target_arch = "x86_64")))]
    {
        let _ = (buf, bounds);
        0
    }
}

/// Builds the DWARF unwinder's module table ([`crate::unwind::refresh`]) where it is used, else
/// runs libgcc's unwinder once so that its first-call set-up (which walks the loaded objects
/// under the loader lock and may allocate) happens here and not in a sampled allocation. Call
/// outside every heapsight lock, inside the profiler guard; does not count as a capture. Called
/// again at dumps, to pick up objects loaded since (`dlopen`).
pub(crate) fn warm_up_dwarf() {
    if CHECKED_DWARF {
        crate::unwind::refresh();
        return;
    }
    let mut buf = [0usize; 8];
    if capture_dwarf(&mut buf, (0, 0)) != 0 {
        DWARF_CAPTURES.fetch_sub(1, Relaxed);
    }
}

/// Reads stack words without faulting, for one capture: a word between the caller's frame and
/// the top of the thread's stack directly; any other (a coroutine's or green thread's stack, a
/// `sigaltstack`, a garbage frame pointer) only from a 4 KiB block [`Pages`] has proven readable.
/// The block holding the capture's own stack pointer needs no proof (it is the stack in use), so
/// a coroutine's frames near the allocation cost nothing; each further block costs one probe.
pub(crate) struct Reader {
    lo: usize,
    hi: usize,
    pages: Pages,
}

impl Reader {
    /// `thread`: this thread's stack `[lo, hi)`, `(0, 0)` if unknown. Inline, so that the stack
    /// pointer taken here is the capturing function's.
    #[inline(always)]
    pub(crate) fn new(thread: (usize, usize)) -> Reader {
        let marker = 0u8;
        let sp = core::hint::black_box(&marker) as *const u8 as usize;
        let mut pages = Pages::new();
        if thread.0 <= sp && sp < thread.1 {
            return Reader {
                lo: sp,
                hi: thread.1,
                pages,
            };
        }
        pages.known(sp);
        Reader {
            lo: 0,
            hi: 0,
            pages,
        }
    }

    /// The word at `addr` (any alignment), or `None` if it cannot be proven readable.
    pub(crate) fn word(&mut self, addr: usize) -> Option<usize> {
        let end = addr.checked_add(core::mem::size_of::<usize>())?;
        let known = self.lo <= addr && end <= self.hi;
        if !(known || self.pages.readable(addr) && self.pages.readable(end - 1)) {
            return None;
        }
        // SAFETY: `[addr, end)` is readable: either it lies between the capturing function's
        // frame and the top of the stack this thread is running on (`sp <= lo <= addr`,
        // `end <= hi`), which is mapped while we run on it, or both 4 KiB blocks it touches were
        // just proven readable by `Pages::readable` (see there for what that proof covers).
        // An unaligned read is allowed for.
        Some(unsafe { (addr as *const usize).read_unaligned() })
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn frame_pointer() -> usize {
    let fp: usize;
    // SAFETY: reads a register; no memory access, no side effects.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags));
        #[cfg(target_arch = "aarch64")]
        core::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    fp
}

/// Stack switches a walk follows (a signal handler's alternate stack back to the interrupted
/// one, a coroutine back to its resumer) before it calls the chain broken.
const MAX_SWITCHES: usize = 4;

/// The frame-pointer walk. `thread` is this thread's stack `[lo, hi)` (`(0, 0)` if unknown).
///
/// Every word is read through a [`Reader`]: directly between our own frame and the top of the
/// thread's stack (mapped while we run on it); elsewhere (a coroutine stack, a `sigaltstack`, a
/// switch to another stack, a garbage frame pointer) only from a 4 KiB block proven readable, one
/// system call per block and walk, not per frame (none for the block of our own stack pointer).
#[inline(never)]
pub(crate) fn walk_frame_pointers(buf: &mut [usize], thread: (usize, usize)) -> (usize, End) {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let mut reader = Reader::new(thread);
        let mut switches = 0;
        let mut fp = frame_pointer();
        let mut n = 0;
        while n < buf.len() {
            if fp % core::mem::align_of::<usize>() != 0 {
                return (n, End::Broken);
            }
            let (Some(next), Some(ret)) = (
                reader.word(fp),
                fp.checked_add(8).and_then(|a| reader.word(a)),
            ) else {
                return (n, End::Broken);
            };
            if ret == 0 {
                return (n, End::Terminated);
            }
            buf[n] = ret;
            n += 1;
            if next == 0 {
                return (n, End::Terminated);
            }
            // Callers' frames are above their callees' on one stack; going down is a switch to
            // another stack, which a looping chain would also look like: bounded.
            if next <= fp {
                switches += 1;
                if switches > MAX_SWITCHES {
                    return (n, End::Broken);
                }
            }
            fp = next;
        }
        (n, End::Full)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (buf, thread);
        (0, End::Broken)
    }
}

/// Readability is decided per 4 KiB block: a page is at least that large and aligned to it, so
/// one readable byte proves the whole block readable.
const BLOCK: usize = 4096;

/// The blocks proven readable during one walk (or one DWARF unwind), so that a stack that is not
/// a known one costs one check per block it spans rather than one per frame: a coroutine's 15
/// frames lie on one or two blocks. Not kept across walks: memory can be unmapped in between.
pub(crate) struct Pages {
    blocks: [usize; 8],
    n: usize,
}

impl Pages {
    pub(crate) const fn new() -> Pages {
        Pages {
            blocks: [0; 8],
            n: 0,
        }
    }

    /// Records the block of `addr` as readable without asking: for the block of the running
    /// stack pointer, which is mapped while this thread runs on it.
    pub(crate) fn known(&mut self, addr: usize) {
        self.blocks[0] = addr & !(BLOCK - 1);
        self.n = 1;
    }

    /// Whether the byte at `addr` (hence its whole 4 KiB block) can be read without faulting.
    ///
    /// What the proof covers: the block was mapped readable when the kernel checked it, a moment
    /// before the read. A block of the stack the walk runs on, or of a stack suspended below it,
    /// stays mapped while we run; the one case left is a garbage frame pointer into memory that
    /// *another* thread unmaps in the few hundred nanoseconds between the check and the read.
    pub(crate) fn readable(&mut self, addr: usize) -> bool {
        let block = addr & !(BLOCK - 1);
        if self.blocks[..self.n].contains(&block) {
            return true;
        }
        if block == 0 || !block_readable(block) {
            return false;
        }
        // The most recent blocks are the likely ones: a full cache forgets the oldest.
        if self.n == self.blocks.len() {
            self.blocks.copy_within(1.., 0);
            self.n -= 1;
        }
        self.blocks[self.n] = block;
        self.n += 1;
        true
    }
}

/// Asks the kernel whether the 8 bytes at `addr` are readable, without reading them from user
/// space: `rt_sigprocmask(how = -1, set = addr, NULL, 8)` copies the new signal set from `addr`
/// with the kernel's checked copy (`EFAULT` if unmapped, `PROT_NONE`, or past the end of a
/// truncated file) *before* it looks at `how`, and then refuses the invalid `how` with `EINVAL`
/// without changing the signal mask. So `EINVAL` means readable (Abseil's `AddressIsReadable`
/// uses the same call).
///
/// Why this call: every seccomp profile lets it through, because libc itself needs it
/// (`pthread_create`, `posix_spawn`, `raise` and `abort` block signals with it): it is in
/// systemd's `@signal` set (part of `@system-service`), in Docker's default profile and in
/// Chromium's and Android's baseline policies. `process_vm_readv`, used before, is in none of
/// them (systemd puts it in `@debug`), so a kill-mode filter killed the process with `SIGSYS` at
/// the first sample on a coroutine stack. A filter that denies `rt_sigprocmask` with an error
/// makes every block unreadable: walks off the known stacks end there, nothing faults. The
/// caller's `errno` is preserved.
fn block_readable(addr: usize) -> bool {
    #[cfg(all(target_os = "linux", not(heapsight_portable)))]
    {
        // SAFETY: `__errno_location` returns this thread's errno, valid for the thread's life.
        // The system call reads at most 8 bytes at `addr` through the kernel's checked copy (no
        // access from user space), writes nothing (null old set) and, with an invalid `how`,
        // changes nothing; it does not allocate and is async-signal-safe.
        unsafe {
            let errno = libc::__errno_location();
            let saved = *errno;
            let r = libc::syscall(
                libc::SYS_rt_sigprocmask,
                -1 as libc::c_int,
                addr as *const libc::c_void,
                core::ptr::null_mut::<libc::c_void>(),
                8usize,
            );
            let readable = r == -1 && *errno == libc::EINVAL;
            *errno = saved;
            readable
        }
    }
    #[cfg(not(all(target_os = "linux", not(heapsight_portable))))]
    {
        let _ = addr;
        false
    }
}

/// This thread's stack `[lo, hi)` from `pthread_getattr_np`, or `(0, 0)`.
///
/// Called once per thread from the slow path. For the main thread glibc reads /proc/self/maps
/// with its own `malloc`, which does not come back into a Rust global allocator.
pub(crate) fn thread_stack_bounds() -> (usize, usize) {
    #[cfg(all(target_os = "linux", not(heapsight_portable)))]
    {
        // SAFETY: `attr` is initialised by pthread_getattr_np before use and destroyed after;
        // pthread_attr_getstack writes the two out-pointers, which point to live locals.
        unsafe {
            let mut attr: libc::pthread_attr_t = core::mem::zeroed();
            if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
                return (0, 0);
            }
            let mut addr: *mut libc::c_void = core::ptr::null_mut();
            let mut size: libc::size_t = 0;
            let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
            libc::pthread_attr_destroy(&mut attr);
            if rc != 0 || addr.is_null() {
                return (0, 0);
            }
            (addr as usize, addr as usize + size)
        }
    }
    // Elsewhere the bounds are unknown, so the frame-pointer walk stops at once and every
    // sampled stack comes from the DWARF unwinder.
    #[cfg(not(all(target_os = "linux", not(heapsight_portable))))]
    {
        (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn nested(depth: usize, buf: &mut [usize]) -> usize {
        if depth == 0 {
            walk_frame_pointers(buf, thread_stack_bounds()).0
        } else {
            let n = nested(depth - 1, buf);
            core::hint::black_box(n)
        }
    }

    /// The naive oracle: `/proc/self/maps` says which ranges are mapped readable.
    fn readable_in_maps(addr: usize) -> bool {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .any(|l| {
                let mut f = l.split(' ');
                let (range, perm) = (f.next().unwrap(), f.next().unwrap());
                let (lo, hi) = range.split_once('-').unwrap();
                let lo = usize::from_str_radix(lo, 16).unwrap();
                let hi = usize::from_str_radix(hi, 16).unwrap();
                lo <= addr && addr < hi && perm.starts_with('r')
            })
    }

    #[test]
    #[cfg_attr(heapsight_portable, ignore = "rt_sigprocmask probe is Linux only")]
    fn readable_blocks_agree_with_the_maps_and_keep_errno() {
        let words = [0x1234usize, 0x5678];
        // SAFETY: a fresh anonymous mapping of 3 pages: readable, PROT_NONE, then unmapped.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                3 * 4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base as usize;
        // SAFETY: the second and third page of the mapping made above.
        unsafe {
            assert_eq!(
                libc::mprotect((base + 4096) as *mut _, 4096, libc::PROT_NONE),
                0
            );
            assert_eq!(libc::munmap((base + 8192) as *mut _, 4096), 0);
        }
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = libc::EDOM };
        let probes = [
            words.as_ptr() as usize,
            base,
            base + 4095,
            base + 4096,
            base + 8192 + 8,
            8,
            0,
            usize::MAX - 7,
            readable_blocks_agree_with_the_maps_and_keep_errno as *const () as usize,
        ];
        for a in probes {
            let mut pages = Pages::new();
            assert_eq!(pages.readable(a), readable_in_maps(a), "{a:#x}");
            // Cached: the same answer without asking again.
            assert_eq!(pages.readable(a), readable_in_maps(a), "{a:#x}");
        }
        // SAFETY: as above.
        assert_eq!(
            unsafe { *libc::__errno_location() },
            libc::EDOM,
            "errno kept"
        );
        // SAFETY: the first two pages of the mapping made above.
        unsafe { libc::munmap(base as *mut _, 8192) };
    }

    #[test]
    #[cfg_attr(heapsight_portable, ignore = "Linux stack bounds only")]
    fn stack_bounds_contain_a_local() {
        let x = 0u8;
        let (lo, hi) = thread_stack_bounds();
        let a = &x as *const u8 as usize;
        assert!(lo < a && a < hi, "{lo:#x} {a:#x} {hi:#x}");
    }

    /// Whether this build has frame pointers to walk; says loudly that the test is SKIPPED when
    /// it has not.
    fn frame_pointers_or_skip() -> bool {
        if !COMPILED_WITH_FP {
            eprintln!("SKIPPED: built without frame pointers");
        }
        COMPILED_WITH_FP
    }

    #[test]
    #[cfg_attr(heapsight_portable, ignore = "Linux stack bounds only")]
    fn frame_pointer_walk_sees_every_nested_frame() {
        if !frame_pointers_or_skip() {
            return;
        }
        let mut buf = [0usize; 64];
        let shallow = nested(2, &mut buf);
        let deep = nested(12, &mut buf);
        assert_eq!(deep, shallow + 10, "each extra nested call adds one frame");
        // The walk is bounded by the buffer, never by a fault.
        let mut small = [0usize; 5];
        assert_eq!(nested(20, &mut small), 5);
    }

    #[test]
    #[cfg_attr(heapsight_portable, ignore = "Linux stack bounds only")]
    fn dwarf_and_frame_pointers_agree_on_return_addresses() {
        if !frame_pointers_or_skip() {
            return;
        }
        warm_up_dwarf();
        let mut fp = [0usize; 64];
        let mut dw = [0usize; 64];
        let b = thread_stack_bounds();
        let (n_fp, end) = walk_frame_pointers(&mut fp, b);
        assert_eq!(
            end,
            End::Terminated,
            "a libtest thread's chain ends on its 0 terminator"
        );
        let n_dw = capture_dwarf(&mut dw, b);
        // Every frame-pointer return address (past the walker's own frame) appears in the
        // DWARF trace, in the same order.
        let dw = &dw[..n_dw];
        let mut pos = 0;
        for ra in &fp[1..n_fp] {
            let found = dw[pos..].iter().position(|x| x == ra);
            assert!(found.is_some(), "{ra:#x} missing from DWARF trace");
            pos += found.unwrap() + 1;
        }
    }

    /// The portable paths in force (`--cfg heapsight_portable`, or a target other than Linux):
    /// no stack bounds, so every capture is the DWARF unwinder's, and it still finds this frame.
    /// (That profiles then carry no mappings is `profile::maps`'s test.)
    #[test]
    #[cfg(any(heapsight_portable, not(target_os = "linux")))]
    fn portable_paths_capture_with_dwarf() {
        assert_eq!(thread_stack_bounds(), (0, 0));
        let before = DWARF_CAPTURES.load(core::sync::atomic::Ordering::SeqCst);
        let mut buf = [0usize; 64];
        let n = capture(&mut buf, thread_stack_bounds());
        assert!(n > 3, "{n} frames");
        assert!(DWARF_CAPTURES.load(core::sync::atomic::Ordering::SeqCst) > before);
    }
}
