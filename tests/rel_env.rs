//! Guarantee 7 (environment): `HEAPSIGHT_SAMPLE_RATE`, `HEAPSIGHT_MAX_DEPTH`,
//! `HEAPSIGHT_MAX_SITES` and `HEAPSIGHT_UNWINDER` with garbage, negative, out-of-range, huge or
//! non-UTF-8 values give exactly one stderr line each, naming what the variable accepts, and keep
//! the default; valid values (units and words in any case) apply with no output. Each case re-runs this binary as a child with the variable set (heapsight
//! reads them once, at the first allocation); the child prints the settings in force.
//! Also: an empty profile (sampling off from the start) is well-formed.
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use heapsight::HeapSight;

mod support;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

const CHILD: &str = "HEAPSIGHT_REL_ENV_CHILD";
const VARS: [&str; 4] = [
    "HEAPSIGHT_SAMPLE_RATE",
    "HEAPSIGHT_MAX_DEPTH",
    "HEAPSIGHT_MAX_SITES",
    "HEAPSIGHT_UNWINDER",
];
const DEFAULTS: &str = "rate=524288 depth=128 sites=16384 unwinder=Auto";

fn settings() -> String {
    format!(
        "rate={} depth={} sites={} unwinder={:?}",
        heapsight::sample_rate(),
        heapsight::max_depth(),
        heapsight::max_sites(),
        heapsight::unwinder()
    )
}

/// Runs a child with `env`; returns (its settings line, its stderr lines).
fn child(env: &[(&str, &OsStr)]) -> (String, Vec<String>) {
    let mut all: Vec<(&str, &OsStr)> = vec![(CHILD, OsStr::new("1"))];
    all.extend_from_slice(env);
    let out = support::rerun_with_env(&all, &VARS);
    assert!(out.status.success(), "child failed: {out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).expect("stderr is UTF-8 even for non-UTF-8 values");
    (
        stdout.trim().to_string(),
        stderr.lines().map(str::to_string).collect(),
    )
}

fn bad_values_give_one_line_and_the_default() {
    let huge = "99999999999999999999999";
    let cases: &[(&str, &[u8])] = &[
        ("HEAPSIGHT_SAMPLE_RATE", b"abc"),
        ("HEAPSIGHT_SAMPLE_RATE", b"-1"),
        ("HEAPSIGHT_SAMPLE_RATE", b"1.5"),
        ("HEAPSIGHT_SAMPLE_RATE", b""),
        ("HEAPSIGHT_SAMPLE_RATE", b"512XB"),
        ("HEAPSIGHT_SAMPLE_RATE", huge.as_bytes()),
        ("HEAPSIGHT_SAMPLE_RATE", b"17179869184G"),
        ("HEAPSIGHT_SAMPLE_RATE", b"\xff\xfe\x80 bytes"),
        ("HEAPSIGHT_MAX_DEPTH", b"deep"),
        ("HEAPSIGHT_MAX_DEPTH", b"-5"),
        ("HEAPSIGHT_MAX_DEPTH", b"0"),
        ("HEAPSIGHT_MAX_DEPTH", b"257"),
        ("HEAPSIGHT_MAX_DEPTH", huge.as_bytes()),
        ("HEAPSIGHT_MAX_SITES", b"many"),
        ("HEAPSIGHT_MAX_SITES", b"-1"),
        ("HEAPSIGHT_MAX_SITES", b"0"),
        ("HEAPSIGHT_MAX_SITES", b"16777217"),
        ("HEAPSIGHT_MAX_SITES", huge.as_bytes()),
        ("HEAPSIGHT_UNWINDER", b"libunwind"),
        ("HEAPSIGHT_UNWINDER", b""),
        ("HEAPSIGHT_UNWINDER", b"DWARF-ish"),
        ("HEAPSIGHT_UNWINDER", &[b'x'; 5000]),
    ];
    for (var, value) in cases {
        let v = OsString::from(OsStr::from_bytes(value));
        let (got, err) = child(&[(var, &v)]);
        let shown = String::from_utf8_lossy(&value[..value.len().min(20)]).into_owned();
        assert_eq!(got, DEFAULTS, "{var}={shown:?} did not keep the defaults");
        assert_eq!(
            err.len(),
            1,
            "{var}={shown:?}: expected one stderr line, got {err:?}"
        );
        assert!(
            err[0].starts_with(&format!("heapsight: ignoring {var}="))
                && err[0].contains("keeping"),
            "{var}: unclear message {:?}",
            err[0]
        );
        // The message says what the variable accepts, with its range.
        let accepts = match *var {
            "HEAPSIGHT_SAMPLE_RATE" => "KiB",
            "HEAPSIGHT_MAX_DEPTH" => "from 1 to 256",
            "HEAPSIGHT_MAX_SITES" => "from 1 to 16777216",
            _ => "auto, fp (or frame-pointers) or dwarf",
        };
        assert!(
            err[0].contains("expected ") && err[0].contains(accepts),
            "{var}: the message does not say what is accepted: {:?}",
            err[0]
        );
        assert!(err[0].len() <= 512, "{var}: a {}-byte line", err[0].len());
    }
    // All four bad at once: four lines, one per variable.
    let bad: Vec<(&str, &OsStr)> = VARS.iter().map(|v| (*v, OsStr::new("?"))).collect();
    let (got, err) = child(&bad);
    assert_eq!(got, DEFAULTS);
    assert_eq!(err.len(), 4, "{err:?}");
    for v in VARS {
        assert_eq!(
            err.iter().filter(|l| l.contains(v)).count(),
            1,
            "{v}: {err:?}"
        );
    }
}

fn good_values_apply_silently() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("HEAPSIGHT_SAMPLE_RATE", "0")],
            "rate=0 depth=128 sites=16384 unwinder=Auto",
        ),
        (
            &[("HEAPSIGHT_SAMPLE_RATE", " 64KiB ")],
            "rate=65536 depth=128 sites=16384 unwinder=Auto",
        ),
        (
            &[
                ("HEAPSIGHT_SAMPLE_RATE", "1"),
                ("HEAPSIGHT_MAX_DEPTH", "256"),
                ("HEAPSIGHT_MAX_SITES", "100"),
                ("HEAPSIGHT_UNWINDER", "dwarf"),
            ],
            "rate=1 depth=256 sites=100 unwinder=Dwarf",
        ),
        (
            &[("HEAPSIGHT_UNWINDER", "fp")],
            "rate=524288 depth=128 sites=16384 unwinder=FramePointers",
        ),
        (
            &[
                ("HEAPSIGHT_UNWINDER", "FP"),
                ("HEAPSIGHT_SAMPLE_RATE", "64kb"),
            ],
            "rate=65536 depth=128 sites=16384 unwinder=FramePointers",
        ),
        (
            &[
                ("HEAPSIGHT_UNWINDER", "Dwarf\n"),
                ("HEAPSIGHT_SAMPLE_RATE", "1m"),
            ],
            "rate=1048576 depth=128 sites=16384 unwinder=Dwarf",
        ),
    ];
    for (env, want) in cases {
        let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(*v))).collect();
        let (got, err) = child(&env);
        assert_eq!(got, *want);
        assert!(err.is_empty(), "valid values printed {err:?}");
    }
}

/// With sampling off from the first allocation, a profile has no sites and still works.
fn empty_profile() {
    let (got, err) = child(&[
        ("HEAPSIGHT_SAMPLE_RATE", OsStr::new("0")),
        ("EMPTY_PROFILE", OsStr::new("1")),
    ]);
    assert!(err.is_empty(), "{err:?}");
    assert_eq!(
        got,
        "rate=0 depth=128 sites=16384 unwinder=Auto sites_in_profile=0 live=0"
    );
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        let mut line = settings();
        if std::env::var_os("EMPTY_PROFILE").is_some() {
            let v: Vec<u64> = (0..1000).collect();
            let p = heapsight::profile();
            line += &format!(
                " sites_in_profile={} live={}",
                p.sites().len(),
                p.live_samples()
            );
            drop((p, v));
        }
        println!("{line}");
        return;
    }
    support::watchdog(120, "rel_env");
    support::run(&[
        (
            "bad_values_give_one_line_and_the_default",
            bad_values_give_one_line_and_the_default,
        ),
        ("good_values_apply_silently", good_values_apply_silently),
        ("empty_profile", empty_profile),
    ]);
}
