//! The HTML pages: the `/debug/pprof/` index and the `/debug/heapsight` page.
use std::fmt::Write as _;

use crate::{HeapProfile, SampleType};

pub(super) fn index_page() -> String {
    let mut s = String::from(
        "<!DOCTYPE html><html><head><title>/debug/pprof/</title></head><body>\n\
         <p>/debug/pprof/ (heapsight)</p>\n<p>Types of profiles available:</p>\n\
         <table><thead><td>Count</td><td>Profile</td></thead>\n",
    );
    let live = crate::stats().inuse_objects;
    for (name, href) in [("allocs", "allocs?debug=1"), ("heap", "heap?debug=1")] {
        let _ = writeln!(
            s,
            "<tr><td>{live}</td><td><a href='{href}'>{name}</a></td></tr>"
        );
    }
    s.push_str(
        "</table>\n<a href=\"/debug/heapsight\">heapsight page</a> &middot; <a href=\"/metrics\">metrics</a>\n\
         <br><p>Profile Descriptions:<ul>\n\
         <li><div class=profile-name>allocs: </div> A sampling of all past memory allocations</li>\n\
         <li><div class=profile-name>heap: </div> A sampling of memory allocations of live objects. \
         Add ?seconds=N for the allocations of the next N seconds.</li>\n\
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

pub(super) fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The page a person reads: counters, top sites by live and by allocated bytes, tags, the
/// flamegraph inline. No scripts, no external assets: it works offline and in a text browser.
pub(super) fn heapsight_page() -> String {
    let p = crate::profile();
    let s = p.stats();
    let mut h = String::new();
    h.push_str(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>heapsight</title><style>\
         body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
         table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:right}\
         td.l,th.l{text-align:left;font-family:monospace}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.2em}\
         .k{color:#666}#flamegraph svg{max-width:100%;height:auto}</style></head><body>\n<h1>heapsight</h1>\n",
    );
    if !crate::is_active() {
        let _ = writeln!(
            h,
            "<p><b>{}</b>: this program's <code>#[global_allocator]</code> is another allocator, so \
             there are no counters or samples to show.</p></body></html>",
            crate::NOT_ACTIVE
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
