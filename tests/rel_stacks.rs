//! A sampled stack capture never reads memory it has not proven mapped, and a frame-pointer chain
//! broken by a frame without a frame pointer is redone with DWARF. Every allocation is sampled
//! (rate 1) with the frame-pointer unwinder forced, on stacks the walk cannot trust:
//!
//! * the thread's stack, through a frame whose saved frame pointer is garbage (a `PROT_NONE` page:
//!   reading it faults);
//! * a signal handler on a `sigaltstack`, with and without such a frame (the garbage page lies
//!   between the alternate stack and the thread's stack, inside the range the walk used to trust);
//! * a stackful coroutine's stack (corosensei), with and without such a frame.
//!
//! The process must survive and the samples must carry the frames that are reachable.
use std::ffi::c_void;
use std::hint::black_box;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::SeqCst};

use heapsight::{HeapSight, Unwinder};

mod support;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

// `call_with_fp(f, data, fp)`: calls `f(data)` with the frame pointer register set to `fp`, so
// `f`'s prologue saves `fp` as its caller's frame pointer, as a frame of code built without frame
// pointers leaves a garbage one. The CFI says where the real return address and caller's frame
// pointer are, so the DWARF unwinder still gets through.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".globl rel_stacks_call_with_fp",
    ".type rel_stacks_call_with_fp,@function",
    "rel_stacks_call_with_fp:",
    ".cfi_startproc",
    "push rbp",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset rbp, -16",
    "mov rax, rdi",
    "mov rdi, rsi",
    "mov rbp, rdx",
    "call rax",
    "pop rbp",
    ".cfi_def_cfa_offset 8",
    "ret",
    ".cfi_endproc",
    ".size rel_stacks_call_with_fp, .-rel_stacks_call_with_fp",
);

#[cfg(target_arch = "x86_64")]
extern "C" {
    fn rel_stacks_call_with_fp(f: extern "C" fn(*mut c_void), data: *mut c_void, fp: usize);
}

/// Runs `f` under a frame whose saved frame pointer is `fp`.
#[cfg(target_arch = "x86_64")]
fn with_frame_pointer(fp: usize, f: &mut dyn FnMut()) {
    extern "C" fn trampoline(data: *mut c_void) {
        // SAFETY: `data` is the `&mut &mut dyn FnMut()` passed below, alive for the call.
        let f = unsafe { &mut *(data as *mut &mut dyn FnMut()) };
        f();
    }
    let mut f = f;
    // SAFETY: the assembly calls `trampoline(data)` and returns normally; `data` points to `f`.
    unsafe { rel_stacks_call_with_fp(trampoline, &mut f as *mut _ as *mut c_void, fp) }
}

#[cfg(not(target_arch = "x86_64"))]
fn with_frame_pointer(_fp: usize, f: &mut dyn FnMut()) {
    f()
}

/// A page that faults when read: what a garbage frame pointer points at.
fn unreadable_page() -> usize {
    // SAFETY: a fresh private anonymous mapping; never unmapped (the test process is short).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as usize
}

/// Blocks allocated by the scenarios, freed at the end of each (so the sites stay live until the
/// profile is taken).
static KEEP: AtomicPtr<Vec<u8>> = AtomicPtr::new(std::ptr::null_mut());

#[inline(never)]
fn keep_block(marker: u8) {
    let b = Box::into_raw(Box::new(vec![marker; 100 + marker as usize]));
    let old = KEEP.swap(b, SeqCst);
    if !old.is_null() {
        // SAFETY: made by `Box::into_raw` above and taken out of `KEEP` exactly once.
        drop(unsafe { Box::from_raw(old) });
    }
}

fn drop_kept() {
    let old = KEEP.swap(std::ptr::null_mut(), SeqCst);
    if !old.is_null() {
        // SAFETY: as in `keep_block`.
        drop(unsafe { Box::from_raw(old) });
    }
}

/// Asserts that some sampled site has a frame named like every needle.
fn assert_site_with(needles: &[&str]) {
    let p = heapsight::profile();
    let found = p
        .sites()
        .iter()
        .any(|s| needles.iter().all(|n| support::site_has(s, n)));
    if !found {
        let stacks: Vec<String> = p
            .sites()
            .iter()
            .filter(|s| support::site_has(s, "keep_block"))
            .map(|s| {
                s.frames()
                    .iter()
                    .flat_map(|f| f.symbols.iter().map(|s| s.function.clone()))
                    .collect::<Vec<_>>()
                    .join(" <- ")
            })
            .collect();
        panic!("no sampled site with frames {needles:?}; sites with keep_block: {stacks:#?}");
    }
}

fn sample_everything() {
    heapsight::set_unwinder(Unwinder::FramePointers);
    heapsight::set_sample_rate(1);
}

#[inline(never)]
fn alloc_above_broken_frame() {
    keep_block(1);
    black_box(());
}

#[inline(never)]
fn outer_of_broken_frame() {
    let bad = unreadable_page();
    with_frame_pointer(bad, &mut alloc_above_broken_frame);
    black_box(());
}

/// The chain breaks right above the allocating function: the walk gives a few frames, all of them
/// heapsight's and the allocating one; DWARF finds the caller above the break.
fn broken_chain_is_redone_with_dwarf() {
    if !cfg!(target_arch = "x86_64") {
        eprintln!("SKIPPED: the garbage-frame trampoline is x86_64 assembly");
        return;
    }
    sample_everything();
    let before = heapsight::stats().dwarf_captures;
    outer_of_broken_frame();
    let after = heapsight::stats().dwarf_captures;
    heapsight::set_sample_rate(0);
    assert!(after > before, "the broken walk was not redone with DWARF");
    assert_site_with(&["alloc_above_broken_frame", "outer_of_broken_frame"]);
    drop_kept();
}

#[inline(never)]
fn alloc_on_main_stack(i: usize) {
    black_box(vec![i as u8; 64]);
}

/// A chain that ends on the C start-up code's frame (the main thread's) is complete once learned:
/// steady-state samples do not go to DWARF. Same on a spawned thread (its chain ends on 0).
fn complete_chains_stay_on_frame_pointers() {
    sample_everything();
    for i in 0..10 {
        alloc_on_main_stack(i);
    }
    let before = heapsight::stats().dwarf_captures;
    for i in 0..1000 {
        alloc_on_main_stack(i);
    }
    std::thread::spawn(|| {
        for i in 0..1000 {
            alloc_on_main_stack(i);
        }
    })
    .join()
    .unwrap();
    let after = heapsight::stats().dwarf_captures;
    heapsight::set_sample_rate(0);
    // The new thread's first samples may run into set-up frames; 2,000 sampled allocations
    // through complete chains must not each go to DWARF.
    assert!(
        after - before < 10,
        "{} of 2000 samples went to DWARF",
        after - before
    );
}

static BAD_FP: AtomicUsize = AtomicUsize::new(0);

#[inline(never)]
fn alloc_in_signal_handler() {
    keep_block(2);
    black_box(());
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    let bad = BAD_FP.load(SeqCst);
    if bad == 0 {
        alloc_in_signal_handler();
    } else {
        with_frame_pointer(bad, &mut alloc_in_signal_handler);
    }
}

/// Installs the alternate stack (64 KiB, followed by an unreadable page) and the handler.
fn install_alt_stack() -> usize {
    const SIZE: usize = 64 * 1024;
    // SAFETY: a fresh private anonymous mapping of SIZE + one page; the last page is made
    // unreadable. Neither is unmapped while the alternate stack is installed (never, here).
    let base = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            SIZE + 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        assert_eq!(
            libc::mprotect(p.cast::<u8>().add(SIZE).cast(), 4096, libc::PROT_NONE),
            0
        );
        p as usize
    };
    let ss = libc::stack_t {
        ss_sp: base as *mut c_void,
        ss_flags: 0,
        ss_size: SIZE,
    };
    // SAFETY: `ss` describes the mapping above; `sa` is fully initialised.
    unsafe {
        assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    // The unreadable page: above the alternate stack, below the thread's stack.
    base + SIZE
}

#[inline(never)]
fn interrupted_by_signal() {
    // SAFETY: raise(3) on this thread; the handler allocates, which is safe here because this
    // thread is not inside the allocator when it raises.
    assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
    black_box(());
}

fn signal_handler_on_sigaltstack() {
    install_alt_stack();
    sample_everything();
    // Through the handler's frame into the interrupted stack, read with checked reads. The
    // interrupted function itself is not in the chain (its frame's return address is in the
    // kernel's signal frame, not in a frame record); its caller is.
    BAD_FP.store(0, SeqCst);
    interrupted_by_signal();
    heapsight::set_sample_rate(0);
    assert_site_with(&["alloc_in_signal_handler", "signal_handler_on_sigaltstack"]);
    drop_kept();
}

fn signal_handler_on_sigaltstack_with_garbage_frame_pointer() {
    let bad = install_alt_stack();
    sample_everything();
    BAD_FP.store(bad, SeqCst);
    interrupted_by_signal();
    BAD_FP.store(0, SeqCst);
    heapsight::set_sample_rate(0);
    assert_site_with(&["alloc_in_signal_handler"]);
    drop_kept();
}

#[inline(never)]
fn alloc_in_coroutine() {
    keep_block(3);
    black_box(());
}

#[inline(never)]
fn resume_coroutine(garbage: bool) {
    use corosensei::Coroutine;
    let bad = if garbage { unreadable_page() } else { 0 };
    let mut co = Coroutine::new(move |_yielder: &corosensei::Yielder<(), ()>, ()| {
        if bad == 0 {
            alloc_in_coroutine();
        } else {
            with_frame_pointer(bad, &mut alloc_in_coroutine);
        }
    });
    sample_everything();
    let r = co.resume(());
    heapsight::set_sample_rate(0);
    assert!(matches!(r, corosensei::CoroutineResult::Return(())));
    drop(co);
}

fn coroutine_stack() {
    resume_coroutine(false);
    assert_site_with(&["alloc_in_coroutine"]);
    drop_kept();
}

fn coroutine_stack_with_garbage_frame_pointer() {
    resume_coroutine(true);
    assert_site_with(&["alloc_in_coroutine"]);
    drop_kept();
}

fn main() {
    support::watchdog(120, "rel_stacks");
    support::run(&[
        (
            "broken_chain_is_redone_with_dwarf",
            broken_chain_is_redone_with_dwarf,
        ),
        (
            "complete_chains_stay_on_frame_pointers",
            complete_chains_stay_on_frame_pointers,
        ),
        (
            "signal_handler_on_sigaltstack",
            signal_handler_on_sigaltstack,
        ),
        (
            "signal_handler_on_sigaltstack_with_garbage_frame_pointer",
            signal_handler_on_sigaltstack_with_garbage_frame_pointer,
        ),
        ("coroutine_stack", coroutine_stack),
        (
            "coroutine_stack_with_garbage_frame_pointer",
            coroutine_stack_with_garbage_frame_pointer,
        ),
    ]);
}
