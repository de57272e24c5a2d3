//! Which frames are the program's: the rule every output applies so that a site is charged to the
//! program's own function, as Go charges `main.build` and never `runtime.mallocgc`.
//!
//! A profile's stacks (snapshot) keep everything from the first frame above heapsight's hook:
//! the growth machinery (`RawVec::grow_one`, `finish_grow`, hashbrown's `reserve_rehash`,
//! `fmt::format`), the program, and the runtime below it (`_start`, `lang_start`, a tokio
//! worker's scheduler). The encoders write the **program view** of each stack:
//!
//! * **leaf side**: symbols of library crates ([`LIBRARY_CRATES`]: std, core, alloc, hashbrown,
//!   heapsight, backtrace) and `__` entry points before the first program symbol are dropped,
//!   symbol by symbol (an inlined `Vec::push` shares its return address with the program
//!   function it was inlined into). This is what Go's `writeHeapProto` does with the leading
//!   `runtime.*` frames (`hideRuntime`). Third-party crates (serde_json, hyper, tokio) are code
//!   that allocates like the program's, and keep their frames, as Go keeps `encoding/json`.
//! * **root side**: frames rootward of the outermost frame of the program's own crate (the
//!   executable's name, [`own_crate`]) are dropped, or, when the stack has no frame of that
//!   crate, rootward of its outermost program frame: `_start`, `__libc_start_main`, the
//!   `lang_start` shims and a tokio worker's scheduler frames above a handler. They have 100% `cum`
//!   and would fill the first rows of `go tool pprof -top -cum`, which then starts at the program.
//! * a stack with no program symbol at all (std's own allocations) is kept whole, as Go keeps
//!   all frames when hiding the runtime would leave none.
//!
//! What the dropped leaf side did is not lost: [`operation`] names it (`Vec::push`, `format!`,
//! `HashMap::entry`), and pprof carries it as the string label `op` of each sample (`go tool
//! pprof -tags` splits a site by it, `-tagfocus=op=HashMap` selects one), `top` and the page show
//! it under the site. `HeapProfile::stacks` and the `Site` API keep the whole stacks.
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use super::folded::closing_bracket;
use crate::symbols::{Frame, Symbol, Symbols};

/// Crates whose frames are library plumbing, never "the program's" call site.
pub(crate) const LIBRARY_CRATES: &[&str] = &[
    "std",
    "core",
    "alloc",
    "hashbrown",
    "heapsight",
    "backtrace",
];

/// The crate a demangled function belongs to: the first path segment, looking through the
/// `<...>` of an impl. `<Type as Trait>::f` belongs to the type's crate when the type has a path
/// (`<&mut serde_json::de::Deserializer<R>>::parse` is serde_json's), else to the trait's
/// (`<F as core::future::future::Future>::poll` is core's); an inherent impl on a primitive type
/// (`<str>::repeat`, `<[T]>::to_vec`) is the standard library's (`core`). A name without a path
/// (`main`, `_start`, `malloc`) is its own "crate".
pub(crate) fn crate_of(function: &str) -> &str {
    let f = function.trim_start();
    if f.starts_with('<') {
        let close = closing_bracket(f, 0).unwrap_or(f.len());
        let inner = &f[1..close];
        let (ty, tr) = split_as(inner);
        if let Some(c) = type_crate(ty) {
            return c;
        }
        return match tr {
            Some(tr) => crate_of(tr),
            None => "core",
        };
    }
    let end = f.find(['<', ' ', '(']).unwrap_or(f.len());
    let head = &f[..end];
    &head[..head.find("::").unwrap_or(head.len())]
}

/// `Type as Trait` split at its top-level ` as ` (`None` for an inherent impl).
fn split_as(inner: &str) -> (&str, Option<&str>) {
    let b = inner.as_bytes();
    let mut depth = 0i32;
    for i in 0..b.len() {
        match b[i] {
            b'<' | b'(' | b'[' => depth += 1,
            b'>' | b')' | b']' => depth -= 1,
            b' ' if depth == 0 && inner[i..].starts_with(" as ") => {
                return (&inner[..i], Some(&inner[i + 4..]));
            }
            _ => {}
        }
    }
    (inner, None)
}

/// The crate of a type's path (`&mut a::B<C>` is `a`'s), `None` for a type without one
/// (primitives, slices of generic parameters, a generic parameter `T`).
fn type_crate(ty: &str) -> Option<&str> {
    let mut t = ty.trim();
    loop {
        let before = t.len();
        for p in ["&", "*const ", "*mut ", "mut ", "dyn ", "[", "("] {
            t = t.strip_prefix(p).unwrap_or(t).trim_start();
        }
        if t.len() == before {
            break;
        }
    }
    let end = t.find(|c: char| "<,;]) ".contains(c)).unwrap_or(t.len());
    let path = &t[..end];
    path.find("::").map(|i| &path[..i])
}

/// Library plumbing: a [`LIBRARY_CRATES`] function, an allocator entry point or other `__` symbol
/// (`__rust_alloc`, `__rdl_alloc`, `__rg_alloc`), or an unknown frame.
pub(crate) fn is_library(function: &str) -> bool {
    LIBRARY_CRATES.contains(&crate_of(function)) || function.starts_with("__") || function == "??"
}

/// A frame of the program: a Rust path (`a::b`) outside the library crates. `main`, `_start` and
/// other names without a path are the C runtime's.
pub(crate) fn is_program(function: &str) -> bool {
    function.contains("::") && !is_library(function)
}

/// The program's own crate: the executable's file name as cargo names it (`my-app` builds crate
/// `my_app`; a test binary's `-0123456789abcdef` hash suffix removed). Read once.
pub(crate) fn own_crate() -> Option<&'static str> {
    static OWN: OnceLock<Option<String>> = OnceLock::new();
    OWN.get_or_init(|| {
        let exe = std::env::current_exe().ok()?;
        let name = exe.file_stem()?.to_str()?;
        Some(crate_name_of_binary(name))
    })
    .as_deref()
}

/// `my-app` -> `my_app`; `profiles_go-1a2b3c4d5e6f7a8b` -> `profiles_go`.
fn crate_name_of_binary(name: &str) -> String {
    let base = match name.rsplit_once('-') {
        Some((b, h)) if h.len() == 16 && h.bytes().all(|c| c.is_ascii_hexdigit()) => b,
        _ => name,
    };
    base.replace('-', "_")
}

/// Where the program view of a stack starts and ends, in (frame, symbol) positions of the
/// leaf-first order (symbols innermost first within a frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cut {
    /// The first program symbol.
    leaf: (usize, usize),
    /// The outermost symbol kept.
    root: (usize, usize),
}

fn cut(frames: &[Frame], own: Option<&str>) -> Option<Cut> {
    let syms = || {
        frames
            .iter()
            .enumerate()
            .flat_map(|(i, f)| f.symbols.iter().enumerate().map(move |(j, s)| (i, j, s)))
    };
    // The leaf side ends at the first program symbol, or at the first frame nothing is known
    // about (it may be the program's, in a library without symbols).
    let program = syms().find(|(_, _, s)| is_program(&s.function));
    let unknown = frames
        .iter()
        .position(|f| f.symbols.iter().all(|s| s.function == "??"));
    let leaf = match (program, unknown) {
        (Some((i, _, _)), Some(u)) if u < i => (u, 0),
        (Some((i, j, _)), _) => (i, j),
        (None, _) => return None,
    };
    let last_own = own.and_then(|own| {
        syms().rfind(|(_, _, s)| crate_of(&s.function) == own && is_program(&s.function))
    });
    let (ri, rj, _) = last_own.or_else(|| syms().rfind(|(_, _, s)| is_program(&s.function)))?;
    Some(Cut {
        leaf,
        root: (ri, rj),
    })
}

/// The program view of `frames` (leaf first), see the module docs; the stack itself when it is
/// already the view. Allocates the trimmed frames' symbol lists: call inside the profiler guard.
pub(crate) fn view<'a>(frames: &'a [Frame], own: Option<&str>) -> Cow<'a, [Frame]> {
    let Some(c) = cut(frames, own) else {
        return Cow::Borrowed(frames);
    };
    let whole = c.leaf == (0, 0)
        && c.root.0 + 1 == frames.len()
        && c.root.1 + 1 == frames[c.root.0].symbols.len();
    if whole {
        return Cow::Borrowed(frames);
    }
    let mut out: Vec<Frame> = frames[c.leaf.0..=c.root.0].to_vec();
    let n = out.len();
    // The root frame first: its indices are those of the original list.
    let root = &frames[c.root.0].symbols;
    let lo = if n == 1 { c.leaf.1 } else { 0 };
    if lo > 0 || c.root.1 + 1 < root.len() {
        out[n - 1].symbols = Symbols::new(root[lo..=c.root.1].to_vec());
    }
    if n > 1 && c.leaf.1 > 0 {
        out[0].symbols = Symbols::new(frames[c.leaf.0].symbols[c.leaf.1..].to_vec());
    }
    Cow::Owned(out)
}

/// The program views of every stack of a profile, computed once per encoding (index = stack).
pub(crate) fn views(stacks: &[Arc<[Frame]>]) -> Vec<Option<Vec<Frame>>> {
    let own = own_crate();
    stacks
        .iter()
        .map(|s| match view(s, own) {
            Cow::Borrowed(_) => None,
            Cow::Owned(v) => Some(v),
        })
        .collect()
}

/// The library symbols of a stack leaf-side of its first program symbol, innermost first: what
/// the program view drops.
fn machinery(frames: &[Frame]) -> Vec<&Symbol> {
    frames
        .iter()
        .flat_map(|f| f.symbols.iter())
        .take_while(|s| !is_program(&s.function))
        .collect()
}

/// Container types as the program names them, by the path of their implementation.
const CONTAINERS: &[(&str, &str)] = &[
    ("alloc::vec::Vec", "Vec"),
    ("alloc::raw_vec::RawVec", "Vec"),
    ("alloc::raw_vec::RawVecInner", "Vec"),
    ("alloc::string::String", "String"),
    ("alloc::collections::vec_deque::VecDeque", "VecDeque"),
    ("alloc::collections::btree::map::BTreeMap", "BTreeMap"),
    ("alloc::collections::btree::set::BTreeSet", "BTreeSet"),
    ("alloc::collections::binary_heap::BinaryHeap", "BinaryHeap"),
    ("alloc::boxed::Box", "Box"),
    ("alloc::sync::Arc", "Arc"),
    ("alloc::rc::Rc", "Rc"),
    ("std::collections::hash::map::HashMap", "HashMap"),
    ("std::collections::hash::set::HashSet", "HashSet"),
    ("hashbrown::map::HashMap", "HashMap"),
    ("hashbrown::set::HashSet", "HashSet"),
    ("hashbrown::raw::RawTable", "HashMap"),
    ("alloc::str::<impl str>", "str"),
    ("alloc::slice::<impl [T]>", "[T]"),
];

/// What the dropped machinery of a stack did, as the program wrote it: the operation the program
/// called (`Vec::push`, `HashMap::entry`, `String::push_str`, `format!`, `str::repeat`),
/// with the container's type arguments when the symbol names them (`Vec<u64>::push`); else
/// the growth function nearest the program (`RawVec::grow_one` as `Vec::grow_one`). `None` when
/// nothing was dropped.
pub(crate) fn operation(frames: &[Frame]) -> Option<String> {
    let under = machinery(frames);
    // The call nearest the program first: that is what the program wrote.
    let mut fallback = None;
    for s in under.iter().rev() {
        let f = super::folded::clean_name(&s.function);
        if f.contains("alloc::fmt::format") {
            return Some("format!".into());
        }
        if let Some(op) = container_call(&f) {
            return Some(op);
        }
        if fallback.is_none() && s.function != "??" && !s.function.starts_with("__") {
            fallback = Some(super::pprof::display_name(&f));
        }
    }
    // No container: the library function the program called, its path shortened.
    fallback.map(|f| short_path(&f))
}

/// `Type::method` for a method of a [`CONTAINERS`] type.
fn container_call(f: &str) -> Option<String> {
    // `<alloc::vec::Vec<u8>>::push` and `<alloc::vec::Vec<T> as core::clone::Clone>::clone`: the
    // type inside the brackets.
    let (ty_part, method) = if f.starts_with('<') {
        let close = closing_bracket(f, 0)?;
        let (ty, _) = split_as(&f[1..close]);
        (ty.trim(), last_segment(&f[close + 1..]))
    } else {
        let m = last_segment(f);
        let cut = f.len().checked_sub(m.len() + 2)?;
        (&f[..cut], m)
    };
    let (path, args) = match ty_part.find('<') {
        Some(i) if !ty_part[..i].ends_with("impl ") && !ty_part.starts_with("alloc::str::<") => {
            (&ty_part[..i], Some(&ty_part[i..]))
        }
        _ => (ty_part, None),
    };
    let (_, short) = CONTAINERS.iter().find(|(p, _)| *p == path)?;
    let args = args.filter(|a| is_concrete(a)).map(short_path);
    Some(format!("{short}{}::{method}", args.unwrap_or_default()))
}

/// Whether generic arguments are types rather than the impl's parameters (`<T,A>`, `<K, V, S>`).
fn is_concrete(args: &str) -> bool {
    let inner = args.trim_start_matches('<').trim_end_matches('>');
    !inner.split(',').all(|a| {
        let a = a.trim();
        a.len() <= 2
            && a.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    })
}

/// The last path segment of a demangled function, without generic arguments:
/// `<alloc::raw_vec::RawVec<u8>>::grow_one` -> `grow_one`.
pub(crate) fn last_segment(function: &str) -> &str {
    let mut depth = 0usize;
    let mut cut = 0;
    let b = function.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'<' => depth += 1,
            b'>' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && b.get(i + 1) == Some(&b':') => cut = i + 2,
            _ => {}
        }
    }
    let name = &function[cut.min(function.len())..];
    &name[..name.find('<').unwrap_or(name.len())]
}

/// Every path in `s` reduced to its last two segments' type part as a person writes it:
/// `alloc::vec::Vec<alloc::string::String>` -> `Vec<String>`, `core::option::Option<u8>` ->
/// `Option<u8>`; for a function, `Type::method`.
pub(crate) fn short_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String, keep_last_two: bool| {
        let segs: Vec<&str> = word.split("::").collect();
        let k = if keep_last_two { 2 } else { 1 };
        out.push_str(&segs[segs.len().saturating_sub(k)..].join("::"));
        word.clear();
    };
    for c in s.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' || c == '{' || c == '}' || c == '#' {
            word.push(c);
        } else {
            flush(&mut word, &mut out, false);
            out.push(c);
        }
    }
    // The function itself keeps its type (`Vec::push`, `Option::map`).
    flush(&mut word, &mut out, true);
    without_parameters(&out)
}

/// `s` without the generic argument lists that only name parameters (`Vec<T,A>::push` ->
/// `Vec::push`; `Vec<u8>::push` stays).
fn without_parameters(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s.as_bytes()[i] == b'<' {
            if let Some(j) = closing_bracket(s, i) {
                if !is_concrete(&s[i..=j]) {
                    i = j + 1;
                    continue;
                }
                out.push_str(&s[i..=j]);
                i = j + 1;
                continue;
            }
        }
        let c = s[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::frame;

    /// Real demangled names (from heapsight's symbolizer, v0 and legacy manglings) and whether
    /// each is the program's: std, core, alloc, hashbrown and heapsight never are; serde, tokio,
    /// hyper and axum code is code that allocates, as `encoding/json` is in a Go profile.
    const NAMES: &[(&str, &str, bool)] = &[
        ("<str>::repeat", "core", false),
        ("<str>::to_lowercase", "core", false),
        ("alloc::str::<impl str>::repeat", "alloc", false),
        ("<[u8]>::to_vec", "core", false),
        ("<alloc::raw_vec::RawVec<alloc::vec::Vec<u8>>>::grow_one", "alloc", false),
        ("alloc::raw_vec::RawVecInner<A>::finish_grow", "alloc", false),
        ("<alloc::raw_vec::RawVecInner>::grow_amortized", "alloc", false),
        ("alloc::raw_vec::finish_grow", "alloc", false),
        ("alloc::fmt::format::format_inner", "alloc", false),
        ("<alloc::string::String as core::clone::Clone>::clone", "alloc", false),
        ("<T as alloc::string::ToString>::to_string", "alloc", false),
        ("<alloc::vec::Vec<T> as core::clone::Clone>::clone", "alloc", false),
        ("hashbrown::raw::RawTable<T,A>::reserve_rehash", "hashbrown", false),
        ("hashbrown::raw::alloc::inner::do_alloc", "hashbrown", false),
        ("<hashbrown::map::HashMap<K,V,S,A>>::insert", "hashbrown", false),
        ("std::collections::hash::map::HashMap<K,V,S>::entry", "std", false),
        ("std::rt::lang_start_internal", "std", false),
        ("<F as core::future::future::Future>::poll", "core", false),
        ("core::ops::function::FnOnce::call_once", "core", false),
        ("<&dyn core::ops::function::Fn<(), Output = i32> + core::marker::Sync + core::panic::unwind_safe::RefUnwindSafe as core::ops::function::FnOnce<()>>::call_once", "core", false),
        ("<heapsight::alloc::HeapSight<A> as core::alloc::global::GlobalAlloc>::alloc", "heapsight", false),
        ("heapsight::alloc::take_sample", "heapsight", false),
        ("__rust_alloc", "__rust_alloc", false),
        ("__rdl_realloc", "__rdl_realloc", false),
        ("_start", "_start", false),
        ("main", "main", false),
        ("__libc_start_call_main", "__libc_start_call_main", false),
        ("??", "??", false),
        ("<&mut serde_json::de::Deserializer<R>>::parse_str", "serde_json", true),
        ("serde_json::ser::to_string", "serde_json", true),
        ("<serde_json::value::Value as serde::de::Deserialize>::deserialize", "serde_json", true),
        ("<app::Config as serde::de::Deserialize>::deserialize::<&mut serde_json::de::Deserializer<serde_json::read::StrRead>>", "app", true),
        ("<serde::__private::de::content::Content as serde::de::Deserialize>::deserialize", "serde", true),
        ("tokio::runtime::task::raw::poll", "tokio", true),
        ("<tokio::runtime::task::harness::Harness<T,S>>::poll", "tokio", true),
        ("tokio::runtime::scheduler::multi_thread::worker::Context::run_task", "tokio", true),
        ("<axum::routing::Router as tower_service::Service<http::request::Request<B>>>::call", "axum", true),
        ("<axum::routing::route::RouteFuture<E> as core::future::future::Future>::poll", "axum", true),
        ("hyper::proto::h1::io::Buffered<T,B>::read_mem", "hyper", true),
        ("app::build_index", "app", true),
        ("app::main::{closure#0}", "app", true),
        ("<app::Index as core::default::Default>::default", "app", true),
        ("<alloc::vec::Vec<app::Row> as core::clone::Clone>::clone", "alloc", false),
    ];

    #[test]
    fn a_table_of_real_names() {
        for &(name, krate, program) in NAMES {
            assert_eq!(crate_of(name), krate, "{name}");
            assert_eq!(is_program(name), program, "{name}");
        }
    }

    #[test]
    fn binary_names_to_crate_names() {
        assert_eq!(crate_name_of_binary("my-app"), "my_app");
        assert_eq!(
            crate_name_of_binary("profiles_go-1a2b3c4d5e6f7a8b"),
            "profiles_go"
        );
        assert_eq!(crate_name_of_binary("server-v2"), "server_v2");
    }

    fn names(frames: &[Frame]) -> Vec<Vec<String>> {
        frames
            .iter()
            .map(|f| f.symbols.iter().map(|s| s.function.clone()).collect())
            .collect()
    }

    #[test]
    fn the_view_starts_at_the_program_and_ends_at_its_own_crate() {
        // Leaf first: growth machinery (one frame partly the program's: `push` inlined into
        // `build`), the program, std's start-up.
        let stack = [
            frame(1, &["alloc::raw_vec::finish_grow"]),
            frame(
                2,
                &["<alloc::raw_vec::RawVec<alloc::string::String>>::grow_one"],
            ),
            frame(
                3,
                &["alloc::vec::Vec<T,A>::push", "app::build", "app::main"],
            ),
            frame(
                4,
                &[
                    "core::ops::function::FnOnce::call_once",
                    "std::sys::backtrace::__rust_begin_short_backtrace",
                ],
            ),
            frame(5, &["std::rt::lang_start_internal"]),
            frame(6, &["main"]),
            frame(7, &["_start"]),
        ];
        let v = view(&stack, Some("app"));
        assert_eq!(names(&v), [vec!["app::build", "app::main"]]);
        assert_eq!(v[0].address, 3);
        assert_eq!(operation(&stack).as_deref(), Some("Vec::push"));
        // Without the own crate known: the outermost program frame.
        assert_eq!(
            names(&view(&stack, None)),
            [vec!["app::build", "app::main"]]
        );
        // A tokio worker: scheduler frames rootward of the handler go, serde's stay.
        let task = [
            frame(1, &["alloc::raw_vec::finish_grow"]),
            frame(2, &["serde_json::ser::to_string"]),
            frame(3, &["app::handler::{closure#0}"]),
            frame(
                4,
                &["<axum::routing::route::RouteFuture<E> as core::future::future::Future>::poll"],
            ),
            frame(5, &["tokio::runtime::task::raw::poll"]),
            frame(
                6,
                &["std::sys::pal::unix::thread::Thread::new::thread_start"],
            ),
        ];
        let v = view(&task, Some("app"));
        assert_eq!(
            names(&v),
            [
                vec!["serde_json::ser::to_string"],
                vec!["app::handler::{closure#0}"]
            ]
        );
        let v = view(&task, Some("other"));
        assert_eq!(v.len(), 4, "{:?}", names(&v));
        // Nothing of the program: kept whole.
        let std_only = [
            frame(1, &["alloc::raw_vec::finish_grow"]),
            frame(2, &["std::thread::spawn"]),
        ];
        assert!(matches!(view(&std_only, Some("app")), Cow::Borrowed(_)));
    }

    #[test]
    fn operations_as_the_program_wrote_them() {
        let op = |names: &[&[&str]]| {
            let frames: Vec<Frame> = names
                .iter()
                .enumerate()
                .map(|(i, n)| frame(i + 1, n))
                .chain([frame(99, &["app::f"])])
                .collect();
            operation(&frames)
        };
        assert_eq!(
            op(&[
                &["alloc::raw_vec::finish_grow"],
                &["<alloc::raw_vec::RawVec<alloc::vec::Vec<u8>>>::grow_one"]
            ])
            .as_deref(),
            Some("Vec<Vec<u8>>::grow_one")
        );
        assert_eq!(
            op(&[&[
                "alloc::raw_vec::finish_grow",
                "alloc::raw_vec::RawVec<T,A>::grow_one",
                "alloc::vec::Vec<T,A>::push"
            ]])
            .as_deref(),
            Some("Vec::push")
        );
        assert_eq!(
            op(&[&["<alloc::vec::Vec<alloc::string::String>>::push"]]).as_deref(),
            Some("Vec<String>::push")
        );
        assert_eq!(
            op(&[
                &["hashbrown::raw::RawTable<T,A>::reserve_rehash"],
                &["std::collections::hash::map::HashMap<K,V,S>::entry"]
            ])
            .as_deref(),
            Some("HashMap::entry")
        );
        assert_eq!(
            op(&[
                &["alloc::fmt::format::format_inner"],
                &["alloc::fmt::format"]
            ])
            .as_deref(),
            Some("format!")
        );
        assert_eq!(op(&[&["<str>::repeat"]]).as_deref(), Some("str::repeat"));
        assert_eq!(
            op(&[&["<alloc::string::String as core::clone::Clone>::clone"]]).as_deref(),
            Some("String::clone")
        );
        assert_eq!(op(&[]), None);
        assert_eq!(
            short_path("alloc::vec::Vec<alloc::string::String>"),
            "Vec<String>"
        );
    }
}
