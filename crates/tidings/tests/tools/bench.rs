//! `tidings-bench`, run as a user would against real hubs: Tidings through both APIs, two
//! instances on Redis, and Nchan in nginx. A small run must count every delivery exactly once
//! and say so in its JSON; a run that loses deliveries must fail and say why. (What the bench
//! does without a hub, its own crate's tests check.)

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::common::{missing, Hub, KEY};
use serde_json::Value;

/// The `tidings-bench` program, built beside `tidings` (`cargo test --workspace` builds it
/// for its own tests, `cargo build --workspace` too), or `None`, said once, when it is not
/// there. (`cargo test -p tidings` alone uses whatever `tidings-bench` was built last.)
fn program() -> Option<PathBuf> {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_tidings"))
        .with_file_name(format!("tidings-bench{}", std::env::consts::EXE_SUFFIX));
    if path.exists() {
        return Some(path);
    }
    missing(
        "the tidings-bench program",
        &format!("{} is not built", path.display()),
        "build it (cargo build -p tidings-bench), or run cargo test --workspace",
    );
    None
}

fn bench(args: &[&str]) -> Option<Output> {
    let mut cmd = Command::new(program()?);
    cmd.args(args).arg("--quiet");
    for (k, _) in std::env::vars() {
        if k.starts_with("TIDINGS_") {
            cmd.env_remove(k);
        }
    }
    Some(
        cmd.stdin(Stdio::null())
            .output()
            .expect("run tidings-bench"),
    )
}

/// Runs the bench with `--json -` and returns its exit status and figures.
fn bench_json(args: &[&str]) -> Option<(bool, Value)> {
    let mut all = args.to_vec();
    all.extend(["--json", "-", "--settle", "0.3", "--drain", "5"]);
    let out = bench(&all)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): stdout {stdout:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Some((out.status.success(), json))
}

fn assert_clean(json: &Value, expected: u64) {
    assert_eq!(json["ok"], true, "{json:#}");
    let d = &json["deliveries"];
    assert_eq!(d["expected"], expected, "{json:#}");
    assert_eq!(d["received"], expected, "{json:#}");
    assert_eq!(d["lost"], 0);
    assert_eq!(d["duplicated"], 0);
    assert_eq!(d["out_of_order"], 0);
    assert_eq!(json["latency_ms"]["samples"], expected);
    assert!(
        json["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{json:#}"
    );
}

#[test]
fn a_mercure_run_counts_every_delivery_once_and_reads_the_hubs_memory() {
    let hub = Hub::start(&["--auth", "none", "--max-streams-per-address", "10000"]);
    let pid = hub.pid().to_string();
    // 200 streams over 4 topics (50 each), 40 updates (10 per topic): 2,000 deliveries.
    let Some((ok, json)) = bench_json(&[
        "--url", &hub.base, "-c", "200", "--topics", "4", "-n", "40", "-p", "4", "--pid", &pid,
        "--label", "small",
    ]) else {
        return;
    };
    assert!(ok, "{json:#}");
    assert_clean(&json, 2000);
    assert_eq!(json["label"], "small");
    assert_eq!(json["streams"]["opened"], 200);
    assert_eq!(json["publish"]["published"], 40);
    let memory = &json["memory"];
    assert!(memory["rss_idle_bytes"].as_u64().unwrap() > 0, "{json:#}");
    assert!(
        memory["per_idle_stream_bytes"].as_f64().is_some(),
        "{json:#}"
    );
}

#[test]
fn a_run_over_three_worker_processes_counts_as_one_and_reports_their_memory_apart() {
    let hub = Hub::start(&["--auth", "none", "--max-streams-per-address", "10000"]);
    let pid = hub.pid().to_string();
    // 300 streams over 6 topics (50 each) held by 3 workers from 8 source addresses (40
    // streams each), 60 updates (10 per topic) published by the coordinator: 3,000 deliveries.
    let Some((ok, json)) = bench_json(&[
        "--url",
        &hub.base,
        "-c",
        "300",
        "--topics",
        "6",
        "-n",
        "60",
        "-p",
        "2",
        "--pid",
        &pid,
        "--workers",
        "3",
        "--streams-per-address",
        "40",
    ]) else {
        return;
    };
    assert!(ok, "{json:#}");
    assert_clean(&json, 3000);
    assert_eq!(json["streams"]["opened"], 300);
    assert_eq!(json["streams"]["connect_ms"]["samples"], 300, "{json:#}");
    let machine = &json["machine"];
    assert_eq!(machine["workers"], 3);
    assert!(
        machine["client_rss_idle_bytes"].as_u64().unwrap() > 3 * 1024 * 1024,
        "three processes' memory: {json:#}"
    );
    // (The machine's count, not its growth: tests running beside this one open and close
    // sockets of their own between the two readings.)
    assert!(
        machine["kernel_idle"]["tcp_sockets"].as_u64().unwrap() >= 600,
        "both ends of 300 streams: {json:#}"
    );
}

#[test]
fn a_session_run_with_minted_tokens_reaches_each_session_at_its_rate() {
    let hub = Hub::start(&["--jwt-key", KEY, "--max-streams-per-address", "10000"]);
    let Some((ok, json)) = bench_json(&[
        "--profile",
        "session",
        "--url",
        &hub.base,
        "--jwt-key",
        KEY,
        "-c",
        "30",
        "--topics",
        "each",
        "-n",
        "60",
        "-p",
        "3",
        "--rate",
        "200",
    ]) else {
        return;
    };
    assert!(ok, "{json:#}");
    // Two updates per session, each session with one stream.
    assert_clean(&json, 60);
    assert_eq!(json["profile"], "session");
    assert_eq!(json["rate"], 200.0);
    // 60 updates at 200/s take about 0.3 s.
    assert!(
        json["publish"]["seconds"].as_f64().unwrap() >= 0.25,
        "{json:#}"
    );
}

#[test]
fn a_run_whose_publishes_fail_fails_and_says_why() {
    // The hub wants a publisher token and the bench has none: every publish is refused.
    let hub = Hub::start(&["--jwt-key", KEY, "--anonymous"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.json");
    let Some(out) = bench(&[
        "--url",
        &hub.base,
        "-c",
        "5",
        "-n",
        "3",
        "--json",
        path.to_str().unwrap(),
        "--drain",
        "1",
    ]) else {
        return;
    };
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 publishes failed"), "{stderr}");
    // The table still went to standard output, and the JSON to the file.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED"), "{stdout}");
    assert!(stdout.contains("publish answered 401"), "{stdout}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["publish"]["failed"], 3);
    // Their deliveries could not arrive: forfeited, not lost.
    assert_eq!(json["deliveries"]["lost"], 0);
    assert_eq!(json["deliveries"]["forfeited"], 15);
}

#[test]
fn a_run_whose_some_streams_are_refused_still_measures_the_rest_and_fails() {
    // The hub takes 3 streams from an address; the bench opens 5 from one.
    let hub = Hub::start(&["--auth", "none", "--max-streams-per-address", "3"]);
    let Some(out) = bench(&[
        "--url", &hub.base, "-c", "5", "-n", "4", "--json", "-", "--drain", "5",
    ]) else {
        return;
    };
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 streams failed to open"), "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["streams"]["opened"], 3);
    // The updates were still published, and the three streams had every one.
    assert_eq!(json["publish"]["published"], 4);
    let d = &json["deliveries"];
    assert_eq!(d["received"], 12, "{json:#}");
    assert_eq!(d["forfeited"], 8, "{json:#}");
    assert_eq!(d["lost"], 0, "{json:#}");
}

#[test]
fn streams_spread_over_two_instances_get_what_a_third_url_publishes_via_redis() {
    let Some(keys) = crate::common::redis_keys("bench") else {
        return;
    };
    let hubs = crate::common::redis_cluster(&keys, 2, &["--max-streams-per-address", "10000"]);
    let Some((ok, json)) = bench_json(&[
        "--url",
        &hubs[0].base,
        "--url",
        &hubs[1].base,
        "--publish-url",
        &hubs[1].base,
        "-c",
        "100",
        "--topics",
        "10",
        "-n",
        "50",
        "-p",
        "2",
        "--streams-per-address",
        "40",
    ]) else {
        return;
    };
    assert!(ok, "{json:#}");
    // 10 streams per topic, 5 updates per topic.
    assert_clean(&json, 500);
    assert_eq!(json["urls"].as_array().unwrap().len(), 2);
}

const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

/// nginx with the Nchan module on a free loopback port, or `None` (skip) when nginx or the
/// module is missing — a failure under `TIDINGS_REQUIRE_BROKERS=1`.
fn nchan() -> Option<crate::common::Proxy> {
    let present = Command::new("nginx").arg("-v").output().is_ok()
        && std::path::Path::new(NCHAN_MODULE).exists();
    if !crate::common::installed(&format!("nginx with {NCHAN_MODULE}"), present) {
        return None;
    }
    Some(crate::common::Proxy::nginx(
        &format!("load_module {NCHAN_MODULE};\n"),
        |_, port| {
            format!(
                " server {{\n  listen 127.0.0.1:{port};\n\
                 location ~ ^/sub/(.+)$ {{ nchan_subscriber eventsource; nchan_channel_id $1; }}\n\
                 location ~ ^/pub/(.+)$ {{ nchan_publisher; nchan_channel_id $1; }}\n }}"
            )
        },
    ))
}

#[test]
fn the_nchan_profile_drives_nchan_in_nginx() {
    let Some(nchan) = nchan() else {
        return;
    };
    let Some((ok, json)) = bench_json(&[
        "--profile",
        "nchan",
        "--url",
        &nchan.base,
        "-c",
        "100",
        "--topics",
        "5",
        "-n",
        "25",
        "-p",
        "2",
    ]) else {
        return;
    };
    assert!(ok, "{json:#}");
    assert_clean(&json, 500);
}
