//! Feature `tracing`: memory per `tracing` span, from the spans a service already has.
//!
//! [`TagLayer`] is a `tracing_subscriber` [`Layer`] that gives each span a heapsight [`Tag`] when
//! the span is created, from its name or from one of its fields (`http.route`, `job`, ...), and
//! makes that tag the thread's tag while the span is entered. An instrumented future enters its
//! span on every poll, so the tag follows the task across `.await` and across a runtime's worker
//! threads, exactly as [`TagFutureExt::tagged`](crate::TagFutureExt::tagged) does. Everything
//! [`tag_stats`](crate::tag_stats) and the profiles say about tags then holds per span: exact
//! allocation counts per tag, sampled in-use estimates, the pprof label `tag`
//! (`go tool pprof -tagfocus=tag=/users/{id}`).
//!
//! ```no_run
//! # #[cfg(feature = "tracing")] {
//! use tracing_subscriber::prelude::*;
//! tracing_subscriber::registry()
//!     .with(heapsight::tracing::TagLayer::field("http.route"))
//!     .init();
//! # }
//! ```
//!
//! With tower-http's `TraceLayer`, put the route in the span, e.g. with axum:
//! `TraceLayer::new_for_http().make_span_with(|req: &Request<_>| { let route =
//! req.extensions().get::<MatchedPath>().map(MatchedPath::as_str); info_span!("request",
//! http.route = route) })`.
//!
//! Spans without the field leave the tag as it was; the innermost tagged span wins. Tags are
//! interned, and the tag table is bounded ([`MAX_TAG_NAMES`](crate::MAX_TAG_NAMES)): tag by
//! route or job kind, never by a field that is different for every request (an id, a full URI). A value recorded later (`span.record("http.route", ..)`)
//! applies from the span's next entry. On each thread at most 64 tagged spans can be entered
//! at once; deeper ones leave the tag of the 64th in force.
use core::cell::Cell;
use core::fmt;

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::Subscriber;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::tags::{swap_current, Tag};

/// A [`Layer`] that tags allocations with the span they happen in; see the [module
/// docs](self).
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
#[derive(Clone, Debug)]
pub struct TagLayer {
    from: From,
}

#[derive(Clone, Debug)]
enum From {
    SpanName,
    Field(&'static str),
}

impl TagLayer {
    /// Tags each span with its name (`request`, `flush_batch`, ...).
    pub fn span_name() -> Self {
        TagLayer {
            from: From::SpanName,
        }
    }

    /// Tags each span that has the field `name` with the field's value (strings as they are,
    /// other values as `Debug` prints them). Spans without it are not tagged.
    pub fn field(name: &'static str) -> Self {
        TagLayer {
            from: From::Field(name),
        }
    }

    fn tag_from(&self, meta_name: &str, fields: impl FnOnce(&mut dyn Visit)) -> Option<Tag> {
        match self.from {
            From::SpanName => Some(Tag::new(meta_name)),
            From::Field(want) => {
                let mut v = FindField { want, found: None };
                fields(&mut v);
                v.found
            }
        }
    }
}

/// The tag of a span, kept in its extensions.
struct SpanTag(Tag);

/// Looks for one field and interns its value.
struct FindField {
    want: &'static str,
    found: Option<Tag>,
}

impl Visit for FindField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == self.want {
            self.found = Some(Tag::new(value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == self.want {
            self.found = Some(Tag::new(&format!("{value:?}")));
        }
    }
}

/// Spans entered on this thread that set a tag, innermost last: (span id, tag to restore).
/// Fixed size, `const`-initialised and without a destructor, so it works in any thread state.
const DEPTH: usize = 64;
struct Entered {
    len: Cell<usize>,
    /// Entries past `DEPTH` are counted in `len` but not stored, and change nothing.
    slots: [Cell<(u64, u32)>; DEPTH],
}

thread_local! {
    static ENTERED: Entered = const {
        Entered {
            len: Cell::new(0),
            slots: [const { Cell::new((0, 0)) }; DEPTH],
        }
    };
}

impl<S> Layer<S> for TagLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(tag) = self.tag_from(attrs.metadata().name(), |v| attrs.record(v)) else {
            return;
        };
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanTag(tag));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let From::Field(_) = self.from else { return };
        let Some(tag) = self.tag_from("", |v| values.record(v)) else {
            return;
        };
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            match ext.get_mut::<SpanTag>() {
                Some(t) => t.0 = tag,
                None => ext.insert(SpanTag(tag)),
            }
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(tag) = ctx
            .span(id)
            .and_then(|s| s.extensions().get::<SpanTag>().map(|t| t.0))
        else {
            return;
        };
        let _ = ENTERED.try_with(|e| {
            let n = e.len.get();
            if n < DEPTH {
                e.slots[n].set((id.into_u64(), swap_current(tag.id())));
            }
            e.len.set(n + 1);
        });
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let _ = ENTERED.try_with(|e| {
            let n = e.len.get();
            if n == 0 {
                return;
            }
            if n > DEPTH {
                // Past the stored depth: count tagged spans out, nothing to restore.
                let tagged = ctx
                    .span(id)
                    .is_some_and(|s| s.extensions().get::<SpanTag>().is_some());
                if tagged {
                    e.len.set(n - 1);
                }
                return;
            }
            let (top, prev) = e.slots[n - 1].get();
            // A span that set no tag was never pushed: its exit changes nothing.
            if top == id.into_u64() {
                swap_current(prev);
                e.len.set(n - 1);
            }
        });
    }
}
