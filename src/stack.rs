//! Stack capture for a sampled allocation: return addresses only, into a caller-provided buffer.
//!
//! Two unwinders:
//!
//! * **Frame pointers** (default when the program is built with `-C force-frame-pointers=yes`,
//!   which the standard library already is): follow the `rbp`/`x29` chain. Each frame holds the
//!   caller's frame pointer at `[fp]` and the return address at `[fp + 8]`. Every `fp` is checked
//!   to lie inside this thread's stack, above the current stack pointer, 8-byte aligned and
//!   strictly increasing before it is read, so a register that is not a frame pointer (code built
//!   without them, glibc's thread entry) ends the walk instead of faulting. ~0.1 µs for 30 frames.
//! * **DWARF** through `backtrace::trace` (libgcc's unwinder): correct without frame pointers,
//!   ~3 µs. Used when frame pointers are not compiled in, when asked for (`HEAPSIGHT_UNWINDER=dwarf`),
//!   or when the frame-pointer walk comes back shorter than [`MIN_FP_FRAMES`], the sign that some
//!   frame on the way did not keep a frame pointer. `backtrace::trace` takes backtrace's global
//!   lock; we call it before taking the site lock and never under it (dhat-rs#38). Its first call
//!   is made at start-up, outside the hook (see `alloc::init_global`), so that libgcc's one-time
//!   set-up does not first run inside an allocation.
//!
//! The captured stack starts inside heapsight; the allocator frames are trimmed by name at dump
//! time (see `symbols`), where symbols are known.
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

/// The most frames kept (leaf-most), Go's `maxProfStackDepth` since Go 1.23 is 128.
pub const DEFAULT_MAX_DEPTH: usize = 128;
/// Upper bound for `set_max_depth`: the capture buffer lives on the hook's stack.
pub const MAX_DEPTH_LIMIT: usize = 256;
/// Frames of heapsight, `__rust_alloc` and `alloc::alloc` above the user's frames: captured in
/// addition to the depth so that trimming them leaves `max_depth` user frames.
pub(crate) const ENTRY_FRAMES: usize = 24;
pub(crate) const BUF_LEN: usize = MAX_DEPTH_LIMIT + ENTRY_FRAMES;
/// A frame-pointer walk shorter than this is treated as broken and redone with DWARF.
pub const MIN_FP_FRAMES: usize = 4;

/// Which unwinder samples use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unwinder {
    /// Frame pointers if heapsight was compiled with them, falling back to DWARF per stack.
    Auto,
    /// Always the frame-pointer walk (still falling back to DWARF when it is too short).
    FramePointers,
    /// Always `backtrace::trace`.
    Dwarf,
}

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

/// Captures return addresses, leaf first, into `buf`; returns how many. `bounds` is this thread's
/// stack `[lo, hi)` or `(0, 0)` if unknown (then only DWARF is used).
#[inline(never)]
pub(crate) fn capture(buf: &mut [usize], bounds: (usize, usize)) -> usize {
    let use_fp = match unwinder() {
        Unwinder::Auto => COMPILED_WITH_FP,
        Unwinder::FramePointers => true,
        Unwinder::Dwarf => false,
    };
    if use_fp && bounds.1 != 0 {
        let n = walk_frame_pointers(buf, bounds.1);
        if n >= MIN_FP_FRAMES {
            return n;
        }
    }
    let n = capture_dwarf(buf);
    if n == 0 && bounds.1 != 0 {
        // A fork is in progress (see `fork_gate_close`): a frame-pointer stack, however short,
        // rather than none.
        return walk_frame_pointers(buf, bounds.1);
    }
    n
}

/// The fork gate of the DWARF unwinder. `backtrace::trace` holds backtrace's global lock while it
/// unwinds; a child forked at that moment inherits the lock held by a thread it does not have,
/// and its first DWARF capture or symbolization waits forever. So `fork()` (the `pthread_atfork`
/// prepare handler) closes the gate and waits until no capture is in progress; captures that
/// find the gate closed do not wait (the thread may hold a lock the forking thread needs, e.g.
/// backtrace's own, in a program that calls `backtrace` itself) but return no frames.
static UNWINDING: AtomicUsize = AtomicUsize::new(0);
static FORKING: AtomicBool = AtomicBool::new(false);

/// `pthread_atfork` prepare: closes the gate and waits for captures in progress to finish.
pub(crate) fn fork_gate_close() {
    FORKING.store(true, SeqCst);
    while UNWINDING.load(SeqCst) != 0 {
        // SAFETY: no preconditions; neither allocates nor locks.
        unsafe { libc::sched_yield() };
    }
}

/// `pthread_atfork` parent and child: opens the gate. In the child, a thread that does not exist
/// there may have been between its increment and decrement of the counter: reset it.
pub(crate) fn fork_gate_open(child: bool) {
    if child {
        UNWINDING.store(0, SeqCst);
    }
    FORKING.store(false, SeqCst);
}

/// Counts the DWARF captures, for tests and `Stats`.
pub(crate) static DWARF_CAPTURES: core::sync::atomic::AtomicU64 =
    core::sync::atomic::AtomicU64::new(0);

/// Captures with `backtrace::trace`; returns 0 frames while a fork is in progress (see
/// [`fork_gate_close`]).
pub(crate) fn capture_dwarf(buf: &mut [usize]) -> usize {
    UNWINDING.fetch_add(1, SeqCst);
    if FORKING.load(SeqCst) {
        UNWINDING.fetch_sub(1, SeqCst);
        return 0;
    }
    DWARF_CAPTURES.fetch_add(1, Relaxed);
    let mut n = 0;
    backtrace::trace(|frame| {
        if n >= buf.len() {
            return false;
        }
        buf[n] = frame.ip() as usize;
        n += 1;
        true
    });
    UNWINDING.fetch_sub(1, SeqCst);
    n
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

/// The frame-pointer walk. `hi` is the (exclusive) top of this thread's stack.
#[inline(never)]
pub(crate) fn walk_frame_pointers(buf: &mut [usize], hi: usize) -> usize {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let marker = 0u8;
        // Everything between our own stack frame and the top of the stack is mapped.
        let lo = &marker as *const u8 as usize;
        let mut fp = frame_pointer();
        let mut n = 0;
        while n < buf.len() {
            if fp < lo || fp % core::mem::align_of::<usize>() != 0 || fp.saturating_add(16) > hi {
                break;
            }
            // SAFETY: `lo <= fp` and `fp + 16 <= hi`, so both words lie in this thread's stack
            // between our own frame and its top, which is mapped and readable; `fp` is aligned.
            let (next, ret) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
            if ret == 0 {
                break;
            }
            buf[n] = ret;
            n += 1;
            if next <= fp {
                break;
            }
            fp = next;
        }
        n
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (buf, hi);
        0
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
            let b = thread_stack_bounds();
            walk_frame_pointers(buf, b.1)
        } else {
            let n = nested(depth - 1, buf);
            core::hint::black_box(n)
        }
    }

    #[test]
    #[cfg_attr(heapsight_portable, ignore = "Linux stack bounds only")]
    fn stack_bounds_contain_a_local() {
        let x = 0u8;
        let (lo, hi) = thread_stack_bounds();
        let a = &x as *const u8 as usize;
        assert!(lo < a && a < hi, "{lo:#x} {a:#x} {hi:#x}");
    }

    #[test]
    #[cfg_attr(heapsight_portable, ignore = "Linux stack bounds only")]
    fn frame_pointer_walk_sees_every_nested_frame() {
        if !COMPILED_WITH_FP {
            eprintln!("SKIPPED: built without frame pointers");
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
        if !COMPILED_WITH_FP {
            eprintln!("SKIPPED: built without frame pointers");
            return;
        }
        let mut fp = [0usize; 64];
        let mut dw = [0usize; 64];
        let b = thread_stack_bounds();
        let n_fp = walk_frame_pointers(&mut fp, b.1);
        let n_dw = capture_dwarf(&mut dw);
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
    #[test]
    #[cfg(any(heapsight_portable, not(target_os = "linux")))]
    fn portable_paths_capture_with_dwarf() {
        assert_eq!(thread_stack_bounds(), (0, 0));
        let before = DWARF_CAPTURES.load(SeqCst);
        let mut buf = [0usize; 64];
        let n = capture(&mut buf, thread_stack_bounds());
        assert!(n > 3, "{n} frames");
        assert!(DWARF_CAPTURES.load(SeqCst) > before);
        assert!(crate::profile::maps::read_self().is_empty());
    }
}
