//! For the OTLP tests: the real OpenTelemetry Collector (built by .ci/build-collector.sh) as a
//! child process writing what it receives to a file, and a naive protobuf decoder to read that
//! file back (independent of heapsight's encoder: it knows only the wire format).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One decoded field value.
#[derive(Clone, Debug)]
pub enum Val {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(Vec<u8>),
}

/// A decoded message: its fields in wire order.
#[derive(Clone, Debug, Default)]
pub struct Msg(pub Vec<(u32, Val)>);

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let mut x = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*i];
        *i += 1;
        x |= ((byte & 0x7f) as u64) << shift;
        if byte < 0x80 {
            return x;
        }
    }
    panic!("varint longer than 10 bytes")
}

impl Msg {
    pub fn decode(b: &[u8]) -> Msg {
        let mut i = 0;
        let mut out = Vec::new();
        while i < b.len() {
            let key = varint(b, &mut i);
            let (field, wire) = ((key >> 3) as u32, key & 7);
            let v = match wire {
                0 => Val::Varint(varint(b, &mut i)),
                1 => {
                    let v = u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
                    i += 8;
                    Val::Fixed64(v)
                }
                2 => {
                    let n = varint(b, &mut i) as usize;
                    let v = b[i..i + n].to_vec();
                    i += n;
                    Val::Bytes(v)
                }
                5 => {
                    let v = u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
                    i += 4;
                    Val::Fixed32(v)
                }
                w => panic!("wire type {w} at byte {i}"),
            };
            out.push((field, v));
        }
        Msg(out)
    }

    /// Every occurrence of `field` as a nested message.
    pub fn msgs(&self, field: u32) -> Vec<Msg> {
        self.0
            .iter()
            .filter(|(f, _)| *f == field)
            .map(|(_, v)| match v {
                Val::Bytes(b) => Msg::decode(b),
                v => panic!("field {field} is not a message: {v:?}"),
            })
            .collect()
    }

    /// The last occurrence of a nested message (empty if absent, as proto3 reads it).
    pub fn msg(&self, field: u32) -> Msg {
        self.msgs(field).pop().unwrap_or_default()
    }

    /// A scalar (varint or fixed64), 0 if absent.
    pub fn u(&self, field: u32) -> u64 {
        self.0
            .iter()
            .rev()
            .find(|(f, _)| *f == field)
            .map_or(0, |(_, v)| match v {
                Val::Varint(x) | Val::Fixed64(x) => *x,
                Val::Fixed32(x) => *x as u64,
                v => panic!("field {field} is not a scalar: {v:?}"),
            })
    }

    pub fn str(&self, field: u32) -> String {
        self.strs(field).pop().unwrap_or_default()
    }

    pub fn strs(&self, field: u32) -> Vec<String> {
        self.0
            .iter()
            .filter(|(f, _)| *f == field)
            .map(|(_, v)| match v {
                Val::Bytes(b) => String::from_utf8(b.clone()).expect("utf-8"),
                v => panic!("field {field} is not a string: {v:?}"),
            })
            .collect()
    }

    /// A repeated integer field, packed or not.
    pub fn ints(&self, field: u32) -> Vec<u64> {
        let mut out = Vec::new();
        for (f, v) in &self.0 {
            if *f != field {
                continue;
            }
            match v {
                Val::Varint(x) => out.push(*x),
                Val::Bytes(b) => {
                    let mut i = 0;
                    while i < b.len() {
                        out.push(varint(b, &mut i));
                    }
                }
                v => panic!("field {field} is not an integer: {v:?}"),
            }
        }
        out
    }
}

/// An `AnyValue` as a string (string or int values). The Collector's pdata rewrites strings in
/// profiles as references into the dictionary's string table (`string_value_strindex = 8`, and
/// `KeyValue.key_strindex = 3`), so both spellings are read.
pub fn any_value(v: &Msg, strings: &[String]) -> String {
    match v.0.first() {
        Some((1, Val::Bytes(b))) => String::from_utf8(b.clone()).unwrap(),
        Some((3, Val::Varint(x))) => (*x as i64).to_string(),
        Some((8, Val::Varint(i))) => strings[*i as usize].clone(),
        Some((f, v)) => format!("<field {f}: {v:?}>"),
        None => String::new(),
    }
}

/// One received `ProfilesData` (= `ExportProfilesServiceRequest`), resolved against its
/// dictionary.
pub struct Received {
    pub resource: HashMap<String, String>,
    pub scope_name: String,
    /// (type, unit, period type, period unit, period, time, duration, samples)
    pub profiles: Vec<Profile>,
    /// Mapping (filename, build_id attribute) used by locations.
    pub mappings: Vec<(String, String)>,
}

pub struct Profile {
    pub sample_type: (String, String),
    pub period_type: (String, String),
    pub period: u64,
    pub time_unix_nano: u64,
    pub duration_nano: u64,
    /// (function system names leaf first with "|" between inlined ones, attributes, value)
    pub samples: Vec<(Vec<String>, HashMap<String, String>, i64)>,
}

impl Profile {
    /// Values summed per (stack, tag).
    pub fn by_site(&self) -> HashMap<(Vec<String>, String), i64> {
        let mut m = HashMap::new();
        for (stack, attrs, v) in &self.samples {
            let tag = attrs.get("tag").cloned().unwrap_or_default();
            *m.entry((stack.clone(), tag)).or_insert(0) += v;
        }
        m
    }
}

/// Decodes one `ProfilesData` message.
pub fn resolve(b: &[u8]) -> Received {
    let data = Msg::decode(b);
    let dict = data.msg(2);
    let strings = dict.strs(5);
    let s = |i: u64| strings[i as usize].clone();
    let attrs = dict.msgs(6);
    let attr = |i: u64| {
        let a = &attrs[i as usize];
        (s(a.u(1)), any_value(&a.msg(2), &strings))
    };
    let functions = dict.msgs(3);
    let locations = dict.msgs(2);
    let stacks = dict.msgs(7);
    let mappings_tab = dict.msgs(1);
    let rps = data.msgs(1);
    assert_eq!(rps.len(), 1, "one ResourceProfiles per request");
    let rp = &rps[0];
    let resource = rp
        .msg(1)
        .msgs(1)
        .iter()
        .map(|kv| {
            let key = match kv.u(3) {
                0 => kv.str(1),
                i => s(i),
            };
            (key, any_value(&kv.msg(2), &strings))
        })
        .collect();
    let sp = rp.msg(2);
    let mut profiles = Vec::new();
    let mut used_mappings = std::collections::BTreeSet::new();
    for p in sp.msgs(2) {
        let st = p.msg(1);
        let pt = p.msg(5);
        let mut samples = Vec::new();
        for smp in p.msgs(2) {
            let stack = &stacks[smp.u(1) as usize];
            let mut frames = Vec::new();
            for l in stack.ints(1) {
                let loc = &locations[l as usize];
                if loc.u(1) != 0 {
                    used_mappings.insert(loc.u(1));
                }
                let names: Vec<String> = loc
                    .msgs(3)
                    .iter()
                    .map(|line| s(functions[line.u(1) as usize].u(2)))
                    .collect();
                frames.push(names.join("|"));
            }
            let a: HashMap<String, String> = smp.ints(2).into_iter().map(attr).collect();
            let values = smp.ints(4);
            assert_eq!(values.len(), 1, "one value per sample (one sample type)");
            samples.push((frames, a, values[0] as i64));
        }
        profiles.push(Profile {
            sample_type: (s(st.u(1)), s(st.u(2))),
            period_type: (s(pt.u(1)), s(pt.u(2))),
            period: p.u(6),
            time_unix_nano: p.u(3),
            duration_nano: p.u(4),
            samples,
        });
    }
    let mappings = used_mappings
        .into_iter()
        .map(|m| {
            let m = &mappings_tab[m as usize];
            let build_id = m
                .ints(5)
                .into_iter()
                .map(attr)
                .find(|(k, _)| k == "process.executable.build_id.gnu")
                .map(|(_, v)| v)
                .unwrap_or_default();
            (s(m.u(4)), build_id)
        })
        .collect();
    Received {
        resource,
        scope_name: sp.msg(1).str(1),
        profiles,
        mappings,
    }
}

/// Heapsight's own profile keyed like [`Profile::by_site`]: (function names leaf first, tag).
/// The program view the encoders write (docs/profiles.md), for stacks whose program frames are
/// all the test binary's own (`crate_name::`, `<crate_name::`): from its first symbol of that
/// crate to its last, symbol by symbol (innermost first within a frame). A stack without one is
/// kept whole. A naive oracle of `program::view` for the tests' own workloads.
pub fn own_crate_view(frames: Vec<Vec<String>>) -> Vec<Vec<String>> {
    let exe = std::env::current_exe().unwrap();
    let stem = exe.file_stem().unwrap().to_str().unwrap();
    let own = format!("{}::", stem.split('-').next().unwrap());
    let is_own = |s: &String| {
        s.starts_with(&own) || s.strip_prefix('<').is_some_and(|t| t.starts_with(&own))
    };
    let flat: Vec<(usize, usize)> = frames
        .iter()
        .enumerate()
        .flat_map(|(i, f)| (0..f.len()).map(move |j| (i, j)))
        .filter(|&(i, j)| is_own(&frames[i][j]))
        .collect();
    let (Some(&(li, lj)), Some(&(ri, rj))) = (flat.first(), flat.last()) else {
        return frames;
    };
    let mut out: Vec<Vec<String>> = frames[li..=ri].to_vec();
    let n = out.len();
    out[n - 1].truncate(rj + 1);
    out[0].drain(..lj);
    out
}

pub fn own_by_site(
    p: &heapsight::HeapProfile,
    value: fn(&heapsight::Site) -> u64,
) -> HashMap<(Vec<String>, String), i64> {
    let mut m = HashMap::new();
    for site in p.sites_by_tag() {
        let frames: Vec<Vec<String>> = site
            .frames()
            .iter()
            .map(|f| {
                f.symbols
                    .iter()
                    .filter(|s| s.function != "??")
                    .map(|s| s.function.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        let frames = own_crate_view(frames)
            .into_iter()
            .map(|f| f.join("|"))
            .collect();
        let v = value(site) as i64;
        if v != 0 {
            *m.entry((frames, site.tag().unwrap_or("").to_string()))
                .or_insert(0) += v;
        }
    }
    m
}

/// The Collector binary, building it (cached in target/otelcol/) if needed. `None` (after a loud
/// SKIPPED line) when it cannot be had outside CI; under CI that is a failure.
pub fn collector_binary() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("target/otelcol/otelcol-heapsight");
    let status = Command::new("bash")
        .arg(root.join(".ci/build-collector.sh"))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .expect("run bash .ci/build-collector.sh");
    if status.success() && bin.exists() {
        return Some(bin);
    }
    let why = match status.code() {
        Some(2) => "no Go toolchain to build the OpenTelemetry Collector",
        _ => "building the OpenTelemetry Collector failed (see above)",
    };
    if std::env::var_os("CI").is_some() {
        panic!("{why}, and CI must run every test (.ci/run installs Go)");
    }
    eprintln!("SKIPPED: {why}; this test did not run");
    None
}

/// A free loopback port (bound, then released for the Collector to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running Collector: OTLP/HTTP on `port`, profiles written to `out` (length-prefixed proto).
pub struct Collector {
    child: Child,
    pub out: PathBuf,
    pub port: u16,
}

impl Collector {
    pub fn start(bin: &Path, dir: &Path, port: u16, name: &str) -> Collector {
        let out = dir.join(format!("{name}.pb"));
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{port}
exporters:
  file:
    path: {out}
    format: proto
    flush_interval: 50ms
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
  pipelines:
    profiles:
      receivers: [otlp]
      exporters: [file]
",
                out = out.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config={}", config.display()))
            .arg("--feature-gates=service.profilesSupport")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the Collector");
        let mut c = Collector { child, out, port };
        // Ready when the receiver accepts connections (the watchdog bounds a Collector that
        // never comes up; an early exit is reported with its log).
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(st) = c.child.try_wait().unwrap() {
                let log =
                    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
                panic!("the Collector exited ({st}) before listening:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    /// The requests written so far (each a `ProfilesData`).
    pub fn received(&self) -> Vec<Vec<u8>> {
        let b = std::fs::read(&self.out).unwrap_or_default();
        let mut out = Vec::new();
        let mut i = 0;
        while i + 4 <= b.len() {
            let n = u32::from_be_bytes(b[i..i + 4].try_into().unwrap()) as usize;
            if i + 4 + n > b.len() {
                break; // a partly flushed frame
            }
            out.push(b[i + 4..i + 4 + n].to_vec());
            i += 4 + n;
        }
        out
    }

    /// Waits until at least `n` requests are in the file.
    pub fn wait_for(&self, n: usize) -> Vec<Vec<u8>> {
        loop {
            let r = self.received();
            if r.len() >= n {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the Collector (no graceful shutdown: an outage as the exporter sees one).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under target/ for one test's Collector files, removed by [`TempDir`]'s drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/otlp-tests")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
