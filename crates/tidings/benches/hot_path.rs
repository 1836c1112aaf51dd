//! Hot-path benchmarks (`cargo bench -p tidings --bench hot_path`): selector matching, SSE
//! encoding, the wire-format decoder, and dispatching one update to 10,000 local subscribers.
//! They measure the work done per update and per subscriber, so that what is per update
//! (encoding, decoding) stays off the per-subscriber path.

// criterion_group! and criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use tidings::envelope::{now_micros, Envelope, Position};
use tidings::hub::Hub;
use tidings::metrics::Metrics;
use tidings::selector::Selector;
use tidings::subscriber::{Access, SubscriberLabel, SubscriberSpec};
use tidings::update::Limits;
use tidings::update::{EventName, Topic, Update, UpdateId};

const TOPIC: &str = "https://example.com/books/1234/reviews/5678";

fn update(topic: &str, data: String) -> Update {
    Update::new(
        UpdateId::generate(),
        vec![Topic::new(topic, 2048).unwrap()],
        Some(EventName::new("review", 256).unwrap()),
        data,
        None,
        false,
    )
    .unwrap()
}

fn selectors(c: &mut Criterion) {
    let mut group = c.benchmark_group("selector");
    let cases = [
        ("exact", TOPIC.to_owned()),
        ("any", "*".to_owned()),
        (
            "template",
            "https://example.com/books/{book}/reviews/{review}".to_owned(),
        ),
    ];
    for (name, source) in cases {
        let selector = Selector::compile(&source, 2048).unwrap();
        group.bench_function(name, |b| b.iter(|| selector.matches(TOPIC)));
    }
    let many: Vec<Selector> = (0..100)
        .map(|i| {
            Selector::compile(&format!("https://example.com/shelf/{i}/{{book}}"), 2048).unwrap()
        })
        .collect();
    let topics = [Topic::new(TOPIC, 2048).unwrap()];
    group.bench_function("100_templates_none_match", |b| {
        b.iter(|| many.iter().any(|s| s.matches_any(&topics)))
    });
    group.finish();
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let line = "x".repeat(340);
    let data = format!("{line}\n{line}\n{line}");
    let update = update(TOPIC, data);
    group.throughput(Throughput::Bytes(update.data.len() as u64));
    group.bench_function("sse_1kib_3_lines", |b| {
        b.iter(|| tidings::sse::encode_update(&update))
    });
    let message = tidings::bus::wire::encode(&update);
    let limits = Limits::default();
    group.bench_function("wire_decode_1kib", |b| {
        b.iter(|| tidings::bus::wire::decode(&message, || unreachable!(), &limits).unwrap())
    });
    group.finish();
}

fn dispatch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let mut group = c.benchmark_group("dispatch");
    for subscribers in [1_000usize, 10_000] {
        let hub = Hub::new(1024, Arc::new(Metrics::new()));
        let mut subscriptions: Vec<_> = (0..subscribers)
            .map(|_| {
                hub.subscribe(SubscriberSpec {
                    label: SubscriberLabel::new(None),
                    selectors: vec![Selector::compile(TOPIC, 2048).unwrap()],
                    access: Access::public_only(),
                    event_names: Vec::new(),
                    session: None,
                    expires: None,
                })
            })
            .collect();
        let envelope = Arc::new(Envelope::new(
            update(TOPIC, "x".repeat(100)),
            Position(1),
            now_micros(),
        ));
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::new("one_topic", subscribers),
            &subscribers,
            |b, _| {
                // Only the dispatch is timed; the queues are emptied between rounds.
                b.iter_custom(|rounds| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..rounds {
                        let started = Instant::now();
                        hub.dispatch(&envelope);
                        spent += started.elapsed();
                        for s in &mut subscriptions {
                            let got = s.recv().now_or_never().flatten();
                            assert!(got.is_some(), "every subscriber gets the update");
                        }
                    }
                    spent
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, selectors, encoding, dispatch);
criterion_main!(benches);
