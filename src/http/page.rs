//! The HTML pages: the `/debug/pprof/` index and the `/debug/heapsight` page.
use std::fmt::Write as _;

use crate::{HeapProfile, SampleType};

pub(super) fn index_page() -> String {
    let mut s = String::from(
        "<!DOCTYPE html><html><head><title>/debug/pprof/</title></head><body>\n\
         <p>/debug/pprof/ (heapsight)</p>\n<p>Types of profiles available:</p>\n\
         <table><thead><td>Count</td><td>Profile</td></thead>\n",
    );
    // Go's Count is `pprof.Lookup(name).Count()`: for heap and allocs alike, the records of
    // the memory profile (`runtime.MemProfile`: one per stack and size with any allocation), the
    // lines of `?debug=1`. Ours: the distinct (stack, size) pairs of the site table, the lines of
    // our `?debug=1` text (before the program view merges any).
    let records = crate::guard::profiler_scope(|| {
        let mut keys: Vec<(usize, u64)> = crate::sites::buckets()
            .iter()
            .map(|r| (r.stack, r.size))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    });
    for (name, href) in [("allocs", "allocs?debug=1"), ("heap", "heap?debug=1")] {
        let _ = writeln!(
            s,
            "<tr><td>{records}</td><td><a href='{href}'>{name}</a></td></tr>"
        );
    }
    s.push_str(
        "</table>\n<a href=\"/debug/heapsight\">heapsight page</a> &middot; <a href=\"/metrics\">metrics</a>\n\
         <br><p>Profile Descriptions:<ul>\n\
         <li><div class=profile-name>allocs: </div> A sampling of all past memory allocations</li>\n\
         <li><div class=profile-name>heap: </div> A sampling of memory allocations of live objects. \
         Add ?seconds=N for the allocations of the next N seconds, ?since=10m for what changed since \
         the history's point nearest 10 minutes ago.</li>\n\
         </ul></p>\n</body></html>\n",
    );
    s
}

pub(super) fn escape_html(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// Bytes for the page: one decimal (`1.2 MiB`).
pub(super) fn human(b: u64) -> String {
    crate::profile::Bytes(b as f64, 1).to_string()
}

/// The page a person reads: counters, top sites by live and by allocated bytes, tags, the
/// flamegraph inline. No scripts, no external assets: it works offline and in a text browser.
pub(super) fn heapsight_page() -> String {
    let p = crate::snapshot::take(true);
    let s = p.stats();
    let mut h = String::new();
    h.push_str(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>heapsight</title><style>\
         body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
         table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:right}\
         td.l,th.l{text-align:left;font-family:monospace}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.2em}\
         .k{color:#666}#flamegraph svg{max-width:100%;height:auto}#timeline svg{max-width:100%;height:auto}\
         td.spark{padding:0 .4em}</style></head><body>\n<h1>heapsight</h1>\n",
    );
    if !crate::thread::is_active() {
        let _ = writeln!(
            h,
            "<p><b>{}</b>: this program's <code>#[global_allocator]</code> is another allocator, so \
             there are no counters or samples to show.</p></body></html>",
            crate::stats::NOT_ACTIVE
        );
        return h;
    }
    let _ = writeln!(
        h,
        "<p class=k>pid {} &middot; sample rate {} &middot; {} samples &middot; profiler memory {} &middot; \
         <a href=\"/debug/pprof/heap\">heap.pb.gz</a> &middot; <a href=\"/debug/pprof/heap?debug=1\">text</a> &middot; \
         <a href=\"/metrics\">metrics</a></p>",
        std::process::id(),
        if s.sample_rate == 0 { "off".to_string() } else { human(s.sample_rate) },
        s.samples,
        human(s.profiler_bytes)
    );
    h.push_str("<h2>Counters (exact)</h2>\n<table id=counters><tr><th class=l></th><th>objects</th><th>bytes</th></tr>\n");
    for (name, o, b) in [
        ("allocated", s.alloc_objects, s.alloc_bytes),
        ("freed", s.free_objects, s.free_bytes),
        ("in use", s.inuse_objects, s.inuse_bytes),
    ] {
        let _ = writeln!(
            h,
            "<tr><td class=l>{name}</td><td>{o}</td><td>{} ({b})</td></tr>",
            human(b)
        );
    }
    let _ = writeln!(
        h,
        "<tr><td class=l>peak in use</td><td></td><td>{}</td></tr></table>",
        human(s.peak_inuse_bytes)
    );
    history_sections(&mut h);
    for (title, id, ty) in [
        (
            "Top sites by live bytes (estimated)",
            "top-inuse",
            SampleType::InuseSpace,
        ),
        (
            "Top sites by allocated bytes (estimated)",
            "top-alloc",
            SampleType::AllocSpace,
        ),
    ] {
        let _ = writeln!(
            h,
            "<h2>{title}</h2>\n<pre id={id}>{}</pre>",
            escape_html(&p.top(10, ty).to_string())
        );
    }
    memory_section(&mut h, &crate::memory::memory());
    let tags = crate::tag_stats();
    if !tags.is_empty() {
        h.push_str("<h2>Tags</h2>\n<table id=tags><tr><th class=l>tag</th><th>alloc objects</th><th>alloc bytes</th><th>live objects (est.)</th><th>live bytes (est.)</th></tr>\n");
        for t in &tags {
            let _ = writeln!(
                h,
                "<tr><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape_html(&t.name),
                t.alloc_objects,
                human(t.alloc_bytes),
                t.inuse_objects,
                human(t.inuse_bytes)
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2>Live bytes by stack</h2>\n<div id=flamegraph>");
    h.push_str(&flamegraph_svg(&p));
    h.push_str("</div>\n</body></html>\n");
    h
}

pub(super) fn flamegraph_svg(p: &HeapProfile) -> String {
    let mut svg = Vec::new();
    match p.write_flamegraph(&mut svg, SampleType::InuseSpace) {
        Ok(()) => {
            let s = String::from_utf8_lossy(&svg);
            // Inline: drop the XML prolog and DOCTYPE, keep the <svg> element. Drop inferno's
            // script too: inlined in an HTML page its `init()` takes the page for the SVG
            // document and squeezes the frames to a sliver. The page stays script-free; every
            // frame keeps its `<title>` tooltip.
            let s = &s[s.find("<svg").unwrap_or(0)..];
            let s = s.replacen(r#" onload="init(evt)""#, "", 1);
            match (s.find("<script"), s.find("</script>")) {
                (Some(a), Some(b)) if a < b => {
                    format!("{}{}", &s[..a], &s[b + "</script>".len()..])
                }
                _ => s,
            }
        }
        Err(e) => format!("<p>no flamegraph: {}</p>", escape_html(&e.to_string())),
    }
}

/// The history's sections: a timeline of the exact counters and the sites that keep growing.
fn history_sections(h: &mut String) {
    let hist = crate::history::snapshot();
    let points: Vec<crate::history::HistoryPoint> = hist.points().collect();
    let _ = writeln!(
        h,
        "<h2>Timeline</h2>\n<p class=k>{} points every {} &middot; window {} &middot; history memory {} &middot; \
         <a href=\"/debug/pprof/heap?since=10m\">what grew in the last 10 min</a> (pprof)</p>",
        points.len(),
        duration_text(hist.interval().as_secs_f64()),
        duration_text(hist.interval().as_secs_f64() * (hist.capacity() - 1) as f64),
        human(hist.bytes() as u64)
    );
    h.push_str("<div id=timeline>");
    if points.len() < 2 {
        h.push_str(if crate::history::is_recording() {
            "<p>The timeline appears after the second point.</p>"
        } else {
            "<p>No history recorded: <code>heapsight::history::start</code> (the HTTP server starts it).</p>"
        });
    } else {
        h.push_str(&timeline_svg(&points));
    }
    h.push_str("</div>\n<h2>Growing sites</h2>\n");
    let growing = hist.growing();
    // The chart's rise put to a test (exact counters): said whether or not a site is named yet.
    if let Some(t) = hist.heap_trend() {
        let _ = writeln!(
            h,
            "<p id=heap-trend>Exact live bytes rising: +{} ± {} per minute (trend z {:.1}).{}</p>",
            human(t.bytes_per_minute.max(0.0) as u64),
            human(t.bytes_per_minute_error as u64),
            t.z,
            if growing.is_empty() {
                " No site's samples accumulate yet to name it by."
            } else {
                ""
            }
        );
    }
    if growing.is_empty() {
        let _ = writeln!(
            h,
            "<p id=growing>No site's live bytes keep rising over the window (a site needs {} points of steady rise).</p>",
            crate::history::MIN_POINTS
        );
        return;
    }
    h.push_str(
        "<p class=k>Estimates ± one standard error from sampling; listed by growth less two errors.</p>\n",
    );
    h.push_str(
        "<table id=growing><tr><th>growth / min</th><th>live now (est.)</th><th>trend z</th><th></th><th class=l>site</th></tr>\n",
    );
    for g in growing.iter().take(10) {
        let _ = writeln!(
            h,
            "<tr><td>+{} ± {}</td><td>{} ± {}</td><td>{:.1}</td><td class=spark>{}</td><td class=l>{}{}</td></tr>",
            human(g.bytes_per_minute.max(0.0) as u64),
            human(g.bytes_per_minute_error as u64),
            human(g.inuse_bytes),
            human(g.inuse_error as u64),
            g.z,
            sparkline(&g.series),
            escape_html(&site_label(g.frames())),
            if g.heap_trend.is_some() {
                " (credited with the exact rise: its samples accumulate)"
            } else {
                ""
            }
        );
    }
    h.push_str("</table>\n");
}

/// `program function (file:line) <- operation` (`Vec::push`, `format!`), as the top tables name
/// a site.
fn site_label(frames: &[crate::Frame]) -> String {
    let (user, growth) = crate::profile::name_site(frames);
    let op = crate::profile::program::operation(frames);
    let growth = op.or(growth.map(|g| g.function));
    let place = |s: &crate::Symbol| match (&s.file, s.line) {
        (Some(f), Some(l)) => format!("{} ({}:{l})", s.function, f.rsplit('/').next().unwrap_or(f)),
        _ => s.function.clone(),
    };
    match (user, growth) {
        (Some(u), Some(g)) => format!("{} <- {g}", place(&u)),
        (Some(u), None) => place(&u),
        (None, Some(g)) => g,
        (None, None) if frames.is_empty() => "(overflow: sites beyond the cap)".into(),
        (None, None) => format!("{:#x}", frames[0].address),
    }
}

/// An axis label: `human`, without a decimal where the value is round in its unit.
fn round_bytes(v: f64) -> String {
    human(v as u64).replace(".0 ", " ")
}

/// `45s`, `10m`, `1.5h`.
fn duration_text(secs: f64) -> String {
    if secs < 60.0 {
        format!("{}s", trim_num(secs))
    } else if secs < 3600.0 {
        format!("{}m", trim_num(secs / 60.0))
    } else {
        format!("{}h", trim_num(secs / 3600.0))
    }
}

fn trim_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

/// A round axis step at least `span / max_ticks`, from 1-2-5 steps (for bytes: of powers of
/// 1024 so labels stay round in KiB/MiB).
fn nice_step(span: f64, max_ticks: f64, binary: bool) -> f64 {
    let raw = (span / max_ticks).max(f64::MIN_POSITIVE);
    let base = if binary { 1024f64 } else { 10f64 };
    let mut unit = 1.0;
    while unit * base <= raw {
        unit *= base;
    }
    let steps: &[f64] = if binary {
        &[
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
        ]
    } else {
        &[1.0, 2.0, 5.0, 10.0]
    };
    steps
        .iter()
        .map(|m| m * unit)
        .find(|s| *s >= raw)
        .unwrap_or(unit * base)
}

/// A round time step in seconds for an axis spanning `span` seconds.
fn time_step(span: f64) -> f64 {
    const STEPS: [f64; 17] = [
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
        3600.0, 7200.0,
    ];
    STEPS
        .iter()
        .copied()
        .find(|s| span / s <= 6.0)
        .unwrap_or(span / 6.0)
}

/// The timeline: exact in-use bytes and the peak above, the allocation rate below, over the
/// recorded window; x is time before the latest point. Inline SVG, no script.
fn timeline_svg(points: &[crate::history::HistoryPoint]) -> String {
    const W: f64 = 960.0;
    const L: f64 = 100.0; // left margin for the y labels
    const R: f64 = 20.0;
    const TOP: (f64, f64) = (34.0, 200.0); // in-use panel: y from, y to
    const BOT: (f64, f64) = (240.0, 330.0); // allocation-rate panel
    const H: f64 = 370.0;
    let end = points.last().map_or(0.0, |p| p.elapsed.as_secs_f64());
    let start = points.first().map_or(0.0, |p| p.elapsed.as_secs_f64());
    let span = (end - start).max(1e-3);
    let x = |t: f64| L + (t - start) / span * (W - L - R);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         font-family=\"system-ui,sans-serif\" font-size=\"12\" role=\"img\" aria-label=\"heap timeline\">\
         <rect width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>"
    );
    // Panel 1: in-use and peak.
    let top_max = points
        .iter()
        .map(|p| p.stats.peak_inuse_bytes.max(p.stats.inuse_bytes))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let ystep = nice_step(top_max, 4.0, true);
    let ymax = (top_max / ystep).ceil() * ystep;
    let y1 = |v: f64| TOP.1 - v / ymax * (TOP.1 - TOP.0);
    axis(&mut s, TOP, ymax, ystep, &|v| round_bytes(v), &y1, L, W - R);
    let _ = write!(
        s,
        "<text x=\"{L}\" y=\"18\" font-weight=\"bold\">Live bytes (exact)</text>\
         <line x1=\"{a}\" y1=\"14\" x2=\"{b}\" y2=\"14\" stroke=\"#1f5fbf\" stroke-width=\"3\"/>\
         <text x=\"{c}\" y=\"18\">in use</text>\
         <line x1=\"{d}\" y1=\"14\" x2=\"{e}\" y2=\"14\" stroke=\"#c0392b\" stroke-width=\"2\" stroke-dasharray=\"6 3\"/>\
         <text x=\"{f}\" y=\"18\">peak since start</text>",
        a = L + 150.0,
        b = L + 175.0,
        c = L + 180.0,
        d = L + 240.0,
        e = L + 265.0,
        f = L + 270.0,
    );
    let inuse: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (x(p.elapsed.as_secs_f64()), y1(p.stats.inuse_bytes as f64)))
        .collect();
    let peak: Vec<(f64, f64)> = points
        .iter()
        .map(|p| {
            (
                x(p.elapsed.as_secs_f64()),
                y1(p.stats.peak_inuse_bytes as f64),
            )
        })
        .collect();
    let mut area = format!("M{:.1},{:.1}", inuse[0].0, TOP.1);
    for (px, py) in &inuse {
        let _ = write!(area, " L{px:.1},{py:.1}");
    }
    let _ = write!(area, " L{:.1},{:.1} Z", inuse[inuse.len() - 1].0, TOP.1);
    let _ = write!(
        s,
        "<path d=\"{area}\" fill=\"#1f5fbf\" fill-opacity=\"0.12\"/>\
         <polyline points=\"{}\" fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"2.5\" stroke-linejoin=\"round\"/>\
         <polyline points=\"{}\" fill=\"none\" stroke=\"#c0392b\" stroke-width=\"2\" stroke-dasharray=\"6 3\"/>",
        poly(&inuse),
        poly(&peak)
    );
    // Panel 2: allocation rate between consecutive points, as bars.
    let rates: Vec<(f64, f64, f64)> = points
        .windows(2)
        .map(|w| {
            let dt = (w[1].elapsed.as_secs_f64() - w[0].elapsed.as_secs_f64()).max(1e-9);
            let db = w[1]
                .stats
                .alloc_bytes
                .saturating_sub(w[0].stats.alloc_bytes) as f64;
            (
                w[0].elapsed.as_secs_f64(),
                w[1].elapsed.as_secs_f64(),
                db / dt,
            )
        })
        .collect();
    let rmax = rates.iter().map(|r| r.2).fold(1.0, f64::max);
    let rstep = nice_step(rmax, 2.0, true);
    let rtop = (rmax / rstep).ceil() * rstep;
    let y2 = |v: f64| BOT.1 - v / rtop * (BOT.1 - BOT.0);
    axis(
        &mut s,
        BOT,
        rtop,
        rstep,
        &|v| format!("{}/s", round_bytes(v)),
        &y2,
        L,
        W - R,
    );
    let _ = write!(
        s,
        "<text x=\"{L}\" y=\"{}\" font-weight=\"bold\">Allocation rate (exact, bytes/s)</text>",
        BOT.0 - 10.0
    );
    for (a, b, r) in &rates {
        let (xa, xb) = (x(*a), x(*b));
        let _ = write!(
            s,
            "<rect x=\"{xa:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#27ae60\" fill-opacity=\"0.75\"/>",
            y2(*r),
            (xb - xa - 0.5).max(0.5),
            BOT.1 - y2(*r)
        );
    }
    // Time axis under both panels: time before the latest point.
    let tstep = time_step(span);
    let mut k = 0.0;
    while k <= span + 1e-9 {
        let xx = x(end - k);
        let label = if k == 0.0 {
            "now".to_string()
        } else {
            format!("-{}", duration_text(k))
        };
        let _ = write!(
            s,
            "<line x1=\"{xx:.1}\" y1=\"{}\" x2=\"{xx:.1}\" y2=\"{}\" stroke=\"#999\"/>\
             <text x=\"{xx:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#444\">{label}</text>",
            BOT.1,
            BOT.1 + 5.0,
            BOT.1 + 19.0
        );
        k += tstep;
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#444\">time before the latest point</text></svg>",
        (L + W - R) / 2.0,
        H - 6.0
    );
    s
}

/// Horizontal grid lines and y labels for one panel.
#[allow(clippy::too_many_arguments)]
fn axis(
    s: &mut String,
    panel: (f64, f64),
    max: f64,
    step: f64,
    label: &dyn Fn(f64) -> String,
    y: &dyn Fn(f64) -> f64,
    x0: f64,
    x1: f64,
) {
    let mut v = 0.0;
    while v <= max + step * 1e-6 {
        let yy = y(v);
        let _ = write!(
            s,
            "<line x1=\"{x0}\" y1=\"{yy:.1}\" x2=\"{x1}\" y2=\"{yy:.1}\" stroke=\"{}\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444\">{}</text>",
            if v == 0.0 { "#888" } else { "#e4e4e4" },
            x0 - 6.0,
            yy + 4.0,
            label(v)
        );
        v += step;
    }
    let _ = write!(
        s,
        "<line x1=\"{x0}\" y1=\"{}\" x2=\"{x0}\" y2=\"{}\" stroke=\"#888\"/>",
        panel.0, panel.1
    );
}

fn poly(pts: &[(f64, f64)]) -> String {
    let mut o = String::with_capacity(pts.len() * 14);
    for (x, y) in pts {
        let _ = write!(o, "{x:.1},{y:.1} ");
    }
    o
}

/// A 120 × 24 trend line of one growing site's live bytes (0 at the bottom).
fn sparkline(series: &[(f64, u64)]) -> String {
    const W: f64 = 120.0;
    const H: f64 = 24.0;
    let span = series.first().map_or(0.0, |s| s.0).max(1e-9);
    let max = series.iter().map(|s| s.1).max().unwrap_or(1).max(1) as f64;
    let pts: Vec<(f64, f64)> = series
        .iter()
        .map(|(ago, v)| {
            (
                W - 1.0 - ago / span * (W - 2.0),
                H - 1.0 - *v as f64 / max * (H - 2.0),
            )
        })
        .collect();
    format!(
        "<svg class=spark width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <polyline points=\"{}\" fill=\"none\" stroke=\"#c0392b\" stroke-width=\"1.5\"/></svg>",
        poly(&pts)
    )
}

/// The memory table (`heapsight::memory()`): the classes that add up to RSS and the container.
fn memory_section(h: &mut String, m: &crate::MemoryReport) {
    let _ = writeln!(
        h,
        "<h2>Memory: heap to container</h2>\n<pre id=memory>{}</pre>",
        escape_html(&m.to_string())
    );
}

#[cfg(test)]
mod history_tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(
            nice_step(100.0 * 1024.0 * 1024.0, 4.0, true),
            32.0 * 1024.0 * 1024.0
        );
        assert_eq!(nice_step(3.0, 4.0, true), 1.0);
        assert_eq!(time_step(3600.0), 600.0);
        assert_eq!(time_step(3.0), 0.5);
        assert_eq!(duration_text(600.0), "10m");
        assert_eq!(duration_text(5400.0), "1.5h");
        assert_eq!(duration_text(0.5), "0.5s");
    }
}
