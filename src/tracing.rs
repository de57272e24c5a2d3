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
//!
//! The thread's tag is that of the innermost tagged span *tracing* considers entered on it: the
//! layer keeps the same stack as the registry, so an exit out of order (`a` entered, `b` entered,
//! `a`'s guard dropped, then `b`'s) removes that span wherever it is, and once no tagged span is
//! left the thread has the tag it had before. A span entered on one thread and exited on another
//! stays the current span of the first thread for tracing, and so keeps tagging it until it is
//! exited there.
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

/// The tagged spans entered on this thread, innermost last: (span id, its tag id), mirroring
/// the registry's own stack of entered spans (`tracing_subscriber::registry`), so that the
/// thread's tag is always that of the innermost tagged span tracing considers entered here.
/// Fixed size, `const`-initialised and without a destructor, so it works in any thread state.
const DEPTH: usize = 64;
struct Entered {
    /// Entries stored in `slots`.
    len: Cell<usize>,
    /// Tagged spans entered past `DEPTH`: counted, not stored, and they change nothing.
    extra: Cell<usize>,
    /// The thread's tag before the first tagged span was entered, restored when none is left.
    base: Cell<u32>,
    slots: [Cell<(u64, u32)>; DEPTH],
}

thread_local! {
    static ENTERED: Entered = const {
        Entered {
            len: Cell::new(0),
            extra: Cell::new(0),
            base: Cell::new(0),
            slots: [const { Cell::new((0, 0)) }; DEPTH],
        }
    };
}

impl Entered {
    /// A tagged span was entered: it is now the innermost.
    fn enter(&self, id: u64, tag: u32) {
        let n = self.len.get();
        if n == DEPTH {
            self.extra.set(self.extra.get() + 1);
            return;
        }
        let prev = swap_current(tag);
        if n == 0 && self.extra.get() == 0 {
            self.base.set(prev);
        }
        self.slots[n].set((id, tag));
        self.len.set(n + 1);
    }

    /// A span was exited: as the registry does, the innermost entry of that id leaves the
    /// stack wherever it is (tracing allows exits out of order), and the thread takes the tag
    /// of the innermost tagged span still entered, or the tag it had before any. An exit of a
    /// span entered on another thread finds nothing here and changes nothing.
    fn exit(&self, id: u64, tagged: bool) {
        let n = self.len.get();
        let Some(i) = (0..n).rev().find(|&i| self.slots[i].get().0 == id) else {
            if tagged && self.extra.get() > 0 {
                self.extra.set(self.extra.get() - 1);
            }
            return;
        };
        for k in i..n - 1 {
            self.slots[k].set(self.slots[k + 1].get());
        }
        self.len.set(n - 1);
        let tag = match n - 1 {
            0 => self.base.get(),
            m => self.slots[m - 1].get().1,
        };
        swap_current(tag);
    }
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
        let _ = ENTERED.try_with(|e| e.enter(id.into_u64(), tag.id()));
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let _ = ENTERED.try_with(|e| {
            if e.len.get() == 0 && e.extra.get() == 0 {
                return;
            }
            let tagged = || {
                ctx.span(id)
                    .is_some_and(|s| s.extensions().get::<SpanTag>().is_some())
            };
            e.exit(id.into_u64(), e.extra.get() > 0 && tagged());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_core::callsite::{Callsite, Identifier};
    use tracing_core::field::{FieldSet, Value};
    use tracing_core::metadata::Kind;
    use tracing_core::{Interest, Level, Metadata};
    use tracing_subscriber::layer::SubscriberExt;

    struct Cs(&'static Metadata<'static>);
    impl Callsite for Cs {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            self.0
        }
    }
    macro_rules! span_meta {
        ($cs:ident, $meta:ident, $name:literal) => {
            static $cs: Cs = Cs(&$meta);
            static $meta: Metadata<'static> = Metadata::new(
                $name,
                "heapsight::tracing::tests",
                Level::INFO,
                None,
                None,
                None,
                FieldSet::new(&[], Identifier(&$cs)),
                Kind::SPAN,
            );
        };
    }
    span_meta!(CS_A, META_A, "order-a");
    span_meta!(CS_B, META_B, "order-b");
    span_meta!(CS_C, META_C, "order-c");

    fn new_span(sub: &impl Subscriber, meta: &'static Metadata<'static>) -> Id {
        let none: [(&Field, Option<&dyn Value>); 0] = [];
        sub.new_span(&Attributes::new(meta, &meta.fields().value_set(&none)))
    }

    /// This thread's tag id (read by swapping it back in).
    fn current() -> u32 {
        let t = swap_current(0);
        swap_current(t);
        t
    }

    fn tag(name: &str) -> u32 {
        Tag::new(name).id()
    }

    /// The registry's own idea of the current span, for comparison.
    fn registry_current(sub: &impl Subscriber) -> Option<&'static str> {
        sub.current_span().metadata().map(|m| m.name())
    }

    #[test]
    fn out_of_order_exits_follow_the_registry() {
        let sub = tracing_subscriber::registry().with(TagLayer::span_name());
        let (a, b) = (new_span(&sub, &META_A), new_span(&sub, &META_B));
        let before = current();
        // Enter a, enter b, exit a, exit b: tracing's current span is none, the tag is gone.
        sub.enter(&a);
        sub.enter(&b);
        assert_eq!(current(), tag("order-b"));
        sub.exit(&a);
        assert_eq!(registry_current(&sub), Some("order-b"));
        assert_eq!(current(), tag("order-b"));
        sub.exit(&b);
        assert_eq!(registry_current(&sub), None);
        assert_eq!(current(), before);
        // Enter a, b, c; exit b (the middle one), then c: back to a, as the registry says.
        let c = new_span(&sub, &META_C);
        sub.enter(&a);
        sub.enter(&b);
        sub.enter(&c);
        sub.exit(&b);
        assert_eq!(current(), tag("order-c"));
        sub.exit(&c);
        assert_eq!(registry_current(&sub), Some("order-a"));
        assert_eq!(current(), tag("order-a"));
        sub.exit(&a);
        assert_eq!(current(), before);
        // The same span entered twice: the tag stays until its last exit.
        sub.enter(&a);
        sub.enter(&b);
        sub.enter(&a);
        sub.exit(&a);
        assert_eq!(current(), tag("order-b"));
        sub.exit(&b);
        assert_eq!(current(), tag("order-a"));
        sub.exit(&a);
        assert_eq!(current(), before);
    }

    #[test]
    fn a_span_exited_on_another_thread_leaves_that_thread_alone() {
        let sub = std::sync::Arc::new(tracing_subscriber::registry().with(TagLayer::span_name()));
        let a = new_span(&*sub, &META_A);
        let before = current();
        sub.enter(&a);
        assert_eq!(current(), tag("order-a"));
        // Exited on another thread: that thread's stack has no entry for it (the registry's
        // neither), its tag is unchanged; this thread still is in `a` for tracing, and for us.
        let (sub2, a2) = (sub.clone(), a.clone());
        let other = std::thread::spawn(move || {
            let t = current();
            sub2.exit(&a2);
            (t, current())
        })
        .join()
        .unwrap();
        assert_eq!(other.0, other.1);
        assert_eq!(registry_current(&*sub), Some("order-a"));
        assert_eq!(current(), tag("order-a"));
        // A span entered on another thread and exited here: nothing of ours to undo.
        let (sub3, b) = (sub.clone(), new_span(&*sub, &META_B));
        let b2 = b.clone();
        std::thread::spawn(move || sub3.enter(&b2)).join().unwrap();
        sub.exit(&b);
        assert_eq!(current(), tag("order-a"));
        sub.exit(&a);
        assert_eq!(current(), before);
    }
}
