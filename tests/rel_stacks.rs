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

#[path = "support/strict.rs"]
mod strict;
mod support;

use strict::Strict;

#[global_allocator]
static GLOBAL: HeapSight<Strict> = HeapSight::new(Strict::system());

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

// `call_with_cfa_on_bad_rbp(f, data, bad)`: a frame whose CFI says "CFA = rbp + 16" (as every
// function that keeps a frame pointer says) while it calls `f(data)` with rbp set to `bad`: rbp
// disagrees with its CFI (hand-written assembly, JIT code, context-switch trampolines do this).
// A DWARF unwinder that trusts the registers computes the CFA from `bad` and reads there.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".globl rel_stacks_call_with_cfa_on_bad_rbp",
    ".type rel_stacks_call_with_cfa_on_bad_rbp,@function",
    "rel_stacks_call_with_cfa_on_bad_rbp:",
    ".cfi_startproc",
    "push rbp",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset rbp, -16",
    "mov rbp, rsp",
    ".cfi_def_cfa_register rbp",
    "push rbx",
    ".cfi_offset rbx, -24",
    "sub rsp, 8",
    "mov rbx, rbp",
    "mov rax, rdi",
    "mov rdi, rsi",
    "mov rbp, rdx",
    "call rax",
    "mov rbp, rbx",
    "add rsp, 8",
    "pop rbx",
    "pop rbp",
    ".cfi_def_cfa rsp, 8",
    "ret",
    ".cfi_endproc",
    ".size rel_stacks_call_with_cfa_on_bad_rbp, .-rel_stacks_call_with_cfa_on_bad_rbp",
);

#[cfg(target_arch = "x86_64")]
extern "C" {
    fn rel_stacks_call_with_fp(f: extern "C" fn(*mut c_void), data: *mut c_void, fp: usize);
    fn rel_stacks_call_with_cfa_on_bad_rbp(
        f: extern "C" fn(*mut c_void),
        data: *mut c_void,
        bad: usize,
    );
}

/// One of the assembly frames above: `asm(f, data, arg)` calls `f(data)` and returns normally.
#[cfg(target_arch = "x86_64")]
type AsmFrame = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, usize);

/// Runs `f` under the assembly frame `asm` with its register argument `arg`.
#[cfg(target_arch = "x86_64")]
fn under_asm_frame(asm: AsmFrame, arg: usize, f: &mut dyn FnMut()) {
    extern "C" fn trampoline(data: *mut c_void) {
        // SAFETY: `data` is the `&mut &mut dyn FnMut()` passed below, alive for the call.
        let f = unsafe { &mut *(data as *mut &mut dyn FnMut()) };
        f();
    }
    let mut f = f;
    // SAFETY: both assembly frames call `trampoline(data)`, restore rbp and return normally;
    // `data` points to `f`.
    unsafe { asm(trampoline, &mut f as *mut _ as *mut c_void, arg) }
}

/// Runs `f` under a frame whose CFI computes the CFA from an rbp that is `bad`.
#[cfg(target_arch = "x86_64")]
fn with_cfa_on_bad_rbp(bad: usize, f: &mut dyn FnMut()) {
    under_asm_frame(rel_stacks_call_with_cfa_on_bad_rbp, bad, f)
}

#[cfg(not(target_arch = "x86_64"))]
fn with_cfa_on_bad_rbp(_bad: usize, f: &mut dyn FnMut()) {
    f()
}

/// Runs `f` under a frame whose saved frame pointer is `fp`.
#[cfg(target_arch = "x86_64")]
fn with_frame_pointer(fp: usize, f: &mut dyn FnMut()) {
    under_asm_frame(rel_stacks_call_with_fp, fp, f)
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
/// Whether the handler runs its allocation under a frame whose rbp disagrees with its CFI
/// (`BAD_FP` then being the rbp).
static BAD_CFA: AtomicUsize = AtomicUsize::new(0);

#[inline(never)]
fn alloc_in_signal_handler() {
    keep_block(2);
    black_box(());
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    let bad = BAD_FP.load(SeqCst);
    if bad == 0 {
        alloc_in_signal_handler();
    } else if BAD_CFA.load(SeqCst) != 0 {
        with_cfa_on_bad_rbp(bad, &mut alloc_in_signal_handler);
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

/// The fault: a sampled allocation in a handler on a `sigaltstack`, under a frame whose
/// rbp (pointing at an unreadable page) disagrees with its CFI. With both unwinders forced: the
/// frame-pointer walk breaks there and goes to DWARF; DWARF alone meets it too. libgcc's
/// unwinder faulted here (`_Unwind_Backtrace`); the checked one stops.
fn sigaltstack_frame_whose_rbp_disagrees_with_its_cfi() {
    if !cfg!(target_arch = "x86_64") {
        eprintln!("SKIPPED: the bad-CFA trampoline is x86_64 assembly");
        return;
    }
    let bad = install_alt_stack();
    for u in [Unwinder::FramePointers, Unwinder::Dwarf] {
        heapsight::set_unwinder(u);
        heapsight::set_sample_rate(1);
        let before = heapsight::stats().dwarf_captures;
        BAD_FP.store(bad, SeqCst);
        BAD_CFA.store(1, SeqCst);
        interrupted_by_signal();
        BAD_CFA.store(0, SeqCst);
        BAD_FP.store(0, SeqCst);
        heapsight::set_sample_rate(0);
        assert!(
            heapsight::stats().dwarf_captures > before,
            "{u:?}: DWARF not used"
        );
        assert_site_with(&["alloc_in_signal_handler"]);
        drop_kept();
    }
    heapsight::set_unwinder(Unwinder::FramePointers);
}

#[inline(never)]
fn alloc_under_zero_frame_pointer() {
    keep_block(4);
    black_box(());
}

#[inline(never)]
fn outer_of_zero_frame_pointer() {
    with_frame_pointer(0, &mut alloc_under_zero_frame_pointer);
    black_box(());
}

/// A frame pointer of 0 in the middle of the stack (a function without frame pointers that uses
/// rbp as a plain register) is not the thread's entry: the program's frames above it are found.
fn zero_frame_pointer_mid_stack() {
    if !cfg!(target_arch = "x86_64") {
        eprintln!("SKIPPED: the frame-pointer trampoline is x86_64 assembly");
        return;
    }
    sample_everything();
    outer_of_zero_frame_pointer();
    heapsight::set_sample_rate(0);
    assert_site_with(&[
        "alloc_under_zero_frame_pointer",
        "outer_of_zero_frame_pointer",
        "zero_frame_pointer_mid_stack",
    ]);
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

/// A seccomp filter (classic BPF) returning `deny` for each of `nrs`, allowing everything else.
fn install_seccomp(nrs: &[libc::c_long], deny: u32) {
    const LD_ABS_W: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let allow = 3 + nrs.len();
    let mut prog = vec![
        ins(LD_ABS_W, 0, 0, 4), // seccomp_data.arch
        ins(JEQ_K, 0, (allow - 2) as u8, AUDIT_ARCH_X86_64),
        ins(LD_ABS_W, 0, 0, 0), // seccomp_data.nr
    ];
    for (i, &nr) in nrs.iter().enumerate() {
        let at = 3 + i;
        prog.push(ins(JEQ_K, (allow + 1 - at - 1) as u8, 0, nr as u32));
    }
    prog.push(ins(RET_K, 0, 0, 0x7fff_0000)); // SECCOMP_RET_ALLOW
    prog.push(ins(RET_K, 0, 0, deny));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points to `prog`, alive for the calls; the kernel copies the program.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                2, /* SECCOMP_MODE_FILTER */
                &fprog
            ),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}

/// In a child process: the filter of `mode`, then samples on a coroutine stack with both
/// unwinders. Exits 0 if the process survived and the samples were recorded.
fn seccomp_child(mode: &str) {
    const KILL_PROCESS: u32 = 0x8000_0000;
    const ERRNO_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    // Warm up before the filter (the first profile parses debug info).
    coroutine_stack();
    match mode {
        // process_vm_readv is outside every service profile's allow list (systemd: @debug).
        "kill" => install_seccomp(&[libc::SYS_process_vm_readv], KILL_PROCESS),
        // Denied with an error: also the readability probe, so nothing off the known stacks can
        // be proven readable.
        "errno" => install_seccomp(
            &[libc::SYS_process_vm_readv, libc::SYS_rt_sigprocmask],
            ERRNO_EPERM,
        ),
        _ => unreachable!(),
    }
    for u in [Unwinder::FramePointers, Unwinder::Dwarf] {
        heapsight::set_unwinder(u);
        let before = heapsight::stats().samples;
        resume_coroutine(false);
        resume_coroutine(true);
        heapsight::set_unwinder(Unwinder::FramePointers);
        assert!(heapsight::stats().samples > before, "{u:?}: no sample");
        if mode == "kill" {
            // The probe is allowed: the coroutine's frames are read.
            assert_site_with(&["alloc_in_coroutine"]);
        }
        drop_kept();
    }
    strict::assert_clean();
    println!("child {mode}: survived");
}

fn seccomp(mode: &str) {
    if !cfg!(target_arch = "x86_64") {
        eprintln!("SKIPPED: the BPF program checks AUDIT_ARCH_X86_64 only");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg(format!("seccomp-{mode}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child under a {mode}-mode filter: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn seccomp_kill_mode() {
    seccomp("kill")
}

fn seccomp_errno_mode() {
    seccomp("errno")
}

/// `rel_stacks measure`: wall-clock cost of a sampled allocation (rate 1, frame pointers) on the
/// thread's stack and on a coroutine's, in interleaved rounds. Prints; asserts nothing.
fn measure() {
    use std::time::Instant;
    heapsight::set_unwinder(Unwinder::FramePointers);
    let n = 20_000;
    let run = |on_coroutine: bool| -> f64 {
        let body = move || {
            heapsight::set_sample_rate(1);
            let t = Instant::now();
            for i in 0..n {
                black_box(vec![i as u8; 64]);
            }
            let e = t.elapsed();
            heapsight::set_sample_rate(0);
            e.as_nanos() as f64 / n as f64
        };
        if on_coroutine {
            let mut co =
                corosensei::Coroutine::new(move |_: &corosensei::Yielder<(), ()>, ()| body());
            match co.resume(()) {
                corosensei::CoroutineResult::Return(ns) => ns,
                _ => unreachable!(),
            }
        } else {
            body()
        }
    };
    let (mut th, mut co) = (Vec::new(), Vec::new());
    let d0 = heapsight::stats().dwarf_captures;
    for _ in 0..7 {
        th.push(run(false));
        co.push(run(true));
    }
    th.sort_by(f64::total_cmp);
    co.sort_by(f64::total_cmp);
    println!(
        "sampled alloc+free, ns: thread stack median {:.0} (min {:.0}, max {:.0}); coroutine stack median {:.0} (min {:.0}, max {:.0})",
        th[3], th[0], th[6], co[3], co[0], co[6]
    );
    println!(
        "DWARF captures: {} of {} samples",
        heapsight::stats().dwarf_captures - d0,
        14 * n
    );
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("seccomp-kill") => return seccomp_child("kill"),
        Some("seccomp-errno") => return seccomp_child("errno"),
        Some("measure") => return measure(),
        _ => {}
    }
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
        ("zero_frame_pointer_mid_stack", zero_frame_pointer_mid_stack),
        (
            "sigaltstack_frame_whose_rbp_disagrees_with_its_cfi",
            sigaltstack_frame_whose_rbp_disagrees_with_its_cfi,
        ),
        ("seccomp_kill_mode", seccomp_kill_mode),
        ("seccomp_errno_mode", seccomp_errno_mode),
        ("strict_saw_no_wrong_layout", strict::assert_clean),
    ]);
}
