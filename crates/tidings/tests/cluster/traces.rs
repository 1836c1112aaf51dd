//! Distributed tracing across three instances on one Redis, exported to an OTLP receiver of the
//! test's own: a publish on A under the publisher's `traceparent`, delivered to streams on B
//! and C, arrives as one trace — A's `tidings.publish` (a child of the publisher's span) and
//! `tidings.bus.store`, and a `tidings.deliver` from each of B and C under the store — and each
//! stream's opening is a span of its own. An instance without `--otlp-endpoint` exports nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

use crate::common::{wait_until, Hub, Stream};

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    /// The resource's `service.instance.id`.
    instance: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP receiver (protobuf) on loopback, keeping every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    /// Serves on a free loopback port; returns the base URL to give `--otlp-endpoint`.
    async fn serve(&self) -> String {
        let spans = self.spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let spans = spans.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    spans.lock().unwrap().extend(received(request));
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of trace `trace_id` named `name`.
    fn named(&self, trace_id: &str, name: &str) -> Vec<Received> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id && s.name == name)
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn received(request: ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let instance = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.instance.id")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Received {
                    instance: instance.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
                            (kv.key.clone(), text(value))
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

/// An instance on the test Redis under `prefix`, exporting to `collector` when given (batches
/// sent every 100 ms rather than 5 s). Without it the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
/// still names `endpoint`: only `--otlp-endpoint` turns tracing on.
fn instance(url: &str, prefix: &str, id: &str, collector: Option<&str>, endpoint: &str) -> Hub {
    let mut args = vec![
        "--auth",
        "none",
        "--bus",
        url,
        "--bus-prefix",
        prefix,
        "--instance-id",
        id,
    ];
    if let Some(endpoint) = collector {
        args.extend(["--otlp-endpoint", endpoint]);
    }
    let env = [
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
    ];
    Hub::start_with(&args, &env, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_and_its_deliveries_on_other_instances_are_one_trace() {
    let Some(keys) = crate::common::redis_keys("tracing") else {
        return;
    };
    let collector = Collector::default();
    let endpoint = collector.serve().await;
    let ids = ["trace-a", "trace-b", "trace-c"].map(|i| format!("{}-{i}", keys.prefix));
    let hubs: Vec<Hub> = ids
        .iter()
        .map(|id| instance(&keys.url, &keys.prefix, id, Some(&endpoint), &endpoint))
        .collect();
    // An instance without --otlp-endpoint, delivering the same update: it exports nothing.
    let off_id = format!("{}-off", keys.prefix);
    let untraced = instance(&keys.url, &keys.prefix, &off_id, None, &endpoint);
    let topic = format!("https://example.com/{}/traced", keys.prefix);
    let path = format!("/.well-known/mercure?topic={}", urlencode(&topic));
    let mut on_b = Stream::open(&hubs[1].url(&path), &[]).await;
    let mut on_c = Stream::open(&hubs[2].url(&path), &[]).await;
    let mut off = Stream::open(&untraced.url(&path), &[]).await;

    // The publisher's own trace: the publish joins it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = crate::common::client()
        .post(hubs[0].url("/.well-known/mercure"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("topic={}&data=traced", urlencode(&topic)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.text().await.unwrap();
    for stream in [&mut on_b, &mut on_c, &mut off] {
        assert_eq!(stream.next().await.id, id);
    }

    wait_until(
        "the trace's spans from A, B and C",
        Duration::from_secs(10),
        async || {
            collector.named(trace_id, "tidings.deliver").len() >= 2
                && !collector.named(trace_id, "tidings.bus.store").is_empty()
        },
    )
    .await;
    let [publish] = collector
        .named(trace_id, "tidings.publish")
        .try_into()
        .unwrap();
    assert_eq!(publish.instance, ids[0]);
    assert_eq!(
        publish.parent_span_id, caller_span,
        "under the publisher's span"
    );
    assert_eq!(publish.attributes["tidings.update.id"], id);
    let [store] = collector
        .named(trace_id, "tidings.bus.store")
        .try_into()
        .unwrap();
    assert_eq!(
        (store.instance.as_str(), store.parent_span_id.as_str()),
        (ids[0].as_str(), publish.span_id.as_str())
    );
    assert_eq!(store.attributes["messaging.system"], "redis");
    let mut delivered: Vec<(String, String, String)> = collector
        .named(trace_id, "tidings.deliver")
        .into_iter()
        .map(|d| {
            (
                d.instance,
                d.parent_span_id,
                d.attributes["tidings.subscribers.queued"].clone(),
            )
        })
        .collect();
    delivered.sort();
    assert_eq!(
        delivered,
        [
            (ids[1].clone(), store.span_id.clone(), "1".to_owned()),
            (ids[2].clone(), store.span_id.clone(), "1".to_owned()),
        ],
        "one delivery on each of B and C, under A's store"
    );

    // Each stream's opening is a trace of its own, on its instance.
    let opened: Vec<Received> = collector
        .spans()
        .into_iter()
        .filter(|s| s.name == "tidings.stream.open")
        .collect();
    for instance in &ids[1..] {
        let span = opened
            .iter()
            .find(|s| &s.instance == instance)
            .unwrap_or_else(|| panic!("no stream.open from {instance}: {opened:?}"));
        assert_eq!(span.attributes["tidings.stream.resumed"], "false");
        assert_eq!(span.attributes["http.response.status_code"], "200");
    }
    let from_off = collector
        .spans()
        .into_iter()
        .filter(|s| s.instance.ends_with("-off"))
        .count();
    assert_eq!(
        from_off, 0,
        "an instance without --otlp-endpoint exports nothing"
    );
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
