//! Distributed tracing with OpenTelemetry, exported over OTLP/HTTP (`--otlp-endpoint`; off by
//! default). One publish is one trace across the cluster: the publishing instance's
//! `tidings.publish` and `tidings.bus.store` spans, then a `tidings.deliver` span on every
//! instance that hands the update to its subscribers — the trace context travels inside the
//! bus message ([`TraceParent`], the wire format's `traceparent`). Streams opening or
//! resuming, the authorization callback and webhooks have spans of their own, and the
//! callback's and webhooks' requests carry the context to the application.
//!
//! Off, nothing is recorded and nothing is carried: [`span`] answers an inert [`Span`] after
//! one atomic load, so that the hot path pays nothing for the feature. On, the tracer provider
//! is one per process (an instance is a process; its id is the resource's
//! `service.instance.id`), spans are batched and sent from a thread of the SDK's own.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};

pub use opentelemetry::trace::SpanKind as Kind;

/// Whether spans are recorded: set when the exporter starts, cleared when it stops.
static ON: AtomicBool = AtomicBool::new(false);

/// The tracer every span comes from, once the exporter started.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The instrumentation scope of every span.
const SCOPE: &str = "tidings";

/// A W3C trace context (`traceparent`: version, trace id, parent span id, flags), as it
/// travels with an update from its publish to every instance that delivers it. Only sampled
/// contexts are carried: an update whose trace is not recorded travels without one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent(SpanContext);

impl TraceParent {
    /// Parses a `traceparent` value; `None` for anything the W3C format does not allow (a
    /// malformed context starts a new trace, as the format says, rather than failing what
    /// carried it).
    pub fn parse(value: &str) -> Option<Self> {
        let carrier = HashMap::from([("traceparent".to_owned(), value.to_owned())]);
        let context = TraceContextPropagator::new().extract(&carrier);
        let span = context.span().span_context().clone();
        span.is_valid().then_some(TraceParent(span))
    }

    /// Whether the trace is recorded (the `sampled` flag).
    pub fn sampled(&self) -> bool {
        self.0.is_sampled()
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.0.trace_id(),
            self.0.span_id(),
            self.0.trace_flags().to_u8()
        )
    }
}

/// Where a span hangs in its trace.
#[derive(Clone, Copy)]
pub enum Parent<'a> {
    /// Under the span of the task it runs in ([`Span::within`]), or a new trace.
    Current,
    /// A new trace.
    Root,
    /// Under a context that came from elsewhere: a publisher's `traceparent` header, a bus
    /// message.
    Remote(&'a TraceParent),
    /// Under a span of this instance.
    Of(&'a Span),
}

/// A span being recorded, ended when dropped; inert (a `None` inside) when tracing is off or
/// its trace is not sampled.
#[must_use = "a span ends when dropped"]
pub struct Span(Option<Context>);

/// Whether spans are recorded (an exporter runs).
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Sets an attribute on the current span ([`Span::within`]), if there is one.
pub fn note(key: &'static str, value: impl Into<opentelemetry::Value>) {
    if on() {
        Context::current()
            .span()
            .set_attribute(KeyValue::new(key, value));
    }
}

/// Starts a span named `name`, of `kind`, under `parent`.
pub fn span(name: &'static str, kind: SpanKind, parent: Parent<'_>) -> Span {
    start_span(name, kind, parent, None)
}

fn start_span(
    name: &'static str,
    kind: SpanKind,
    parent: Parent<'_>,
    start: Option<std::time::SystemTime>,
) -> Span {
    let Some(tracer) = TRACER.get().filter(|_| ON.load(Ordering::Relaxed)) else {
        return Span(None);
    };
    let parent = match parent {
        Parent::Current => Context::current(),
        Parent::Root => Context::new(),
        Parent::Remote(remote) => {
            // Not sampled upstream: nothing below it is recorded either.
            if !remote.sampled() {
                return Span(None);
            }
            Context::new().with_remote_span_context(remote.0.clone())
        }
        Parent::Of(Span(None)) => return Span(None),
        Parent::Of(Span(Some(context))) => context.clone(),
    };
    let mut builder = tracer.span_builder(name).with_kind(kind);
    if let Some(start) = start {
        builder = builder.with_start_time(start);
    }
    let span = builder.start_with_context(tracer, &parent);
    let context = parent.with_span(span);
    if !context.span().is_recording() {
        return Span(None);
    }
    Span(Some(context))
}

/// A span named `name`, of `kind`, under `parent`, that began at `start`: for work whose span
/// is worth keeping only once it is done (a delivery that reached no subscriber is not).
pub fn span_since(
    name: &'static str,
    kind: SpanKind,
    parent: Parent<'_>,
    start: std::time::SystemTime,
) -> Span {
    start_span(name, kind, parent, Some(start))
}

impl Span {
    /// Whether this span is recorded: attributes that cost something to make are made only
    /// then.
    pub fn recording(&self) -> bool {
        self.0.is_some()
    }

    /// Sets an attribute.
    pub fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(context) = &self.0 {
            context.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed, with what went wrong.
    pub fn fail(&self, description: impl Into<Cow<'static, str>>) {
        if let Some(context) = &self.0 {
            context.span().set_status(Status::error(description));
        }
    }

    /// The context to carry to another instance or another service: its `traceparent`.
    /// `None` when the span is not recorded.
    pub fn traceparent(&self) -> Option<TraceParent> {
        self.0
            .as_ref()
            .map(|context| TraceParent(context.span().span_context().clone()))
    }

    /// Runs `future` with this span as the current one: spans it starts with
    /// [`Parent::Current`] hang under this one.
    pub async fn within<F: Future>(&self, future: F) -> F::Output {
        use opentelemetry::context::FutureExt;
        match &self.0 {
            Some(context) => future.with_context(context.clone()).await,
            None => future.await,
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(context) = &self.0 {
            context.span().end();
        }
    }
}

/// Where spans go and which are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`): spans are posted to
    /// `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// The share of new traces recorded, 0 to 1. A trace that began elsewhere (a publisher's
    /// `traceparent`) follows the decision made there.
    pub sample_ratio: f64,
}

/// The exporter, while it runs: [`Exporter::shutdown`] sends what is left.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

/// Starts exporting spans as `settings` say, for the instance `instance_id` (the resource's
/// `service.instance.id`; `service.name` is `tidings`). The standard `OTEL_EXPORTER_OTLP_*`
/// variables (headers, timeout, compression) and `OTEL_BSP_*` (the batching) apply.
///
/// # Errors
/// A message when the exporter cannot be built (a URL the HTTP client refuses).
pub fn start(settings: &Settings, instance_id: &str) -> Result<Exporter, String> {
    use opentelemetry_otlp::WithExportConfig;
    let endpoint = format!("{}/v1/traces", settings.endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("otlp-endpoint: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(SCOPE)
        .with_attributes([
            KeyValue::new("service.instance.id", instance_id.to_owned()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .build();
    if TRACER.set(provider.tracer(SCOPE)).is_err() {
        return Err("traces: the exporter runs already (one per process)".to_owned());
    }
    ON.store(true, Ordering::Relaxed);
    Ok(Exporter { provider })
}

/// How long the last spans may take to go at shutdown, after the drain: within the stop
/// grace the image and the manifests give (docs/kubernetes.md counts it).
pub const FLUSH_AT_EXIT: Duration = Duration::from_millis(500);

impl Exporter {
    /// Stops recording and sends the spans not sent yet, for at most [`FLUSH_AT_EXIT`]
    /// (blocking: call it off the runtime's worker threads, as the server does after its
    /// drain).
    pub fn shutdown(self) {
        ON.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(FLUSH_AT_EXIT) {
            tracing::warn!(error = %e, "traces: the last spans could not be sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_reads_back_as_written() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(text).unwrap();
        assert!(parent.sampled());
        assert_eq!(parent.to_string(), text);
        let unsampled = TraceParent::parse(&text.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn a_malformed_traceparent_is_none() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "not a trace context",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn off_every_span_is_inert() {
        let span = span("test", SpanKind::Internal, Parent::Current);
        assert!(span.traceparent().is_none());
        let remote = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(
            super::span("test", SpanKind::Consumer, Parent::Remote(&remote.unwrap()))
                .traceparent()
                .is_none()
        );
    }
}
