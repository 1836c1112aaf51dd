//! What the arguments resolve to before anything is opened: the targets, the plan, the
//! source addresses, the tokens.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::args::{BenchArgs, MAX_PAYLOAD, MAX_SOURCE_ADDRESSES};
use crate::plan::{Plan, Topics};
use crate::profile::{Profile, Target};
use crate::usage;
use crate::workers;

/// What the arguments resolve to before anything is opened.
pub(crate) struct Setup {
    pub(crate) targets: Vec<Arc<Target>>,
    pub(crate) publish_targets: Vec<Target>,
    pub(crate) plan: Plan,
    /// Source addresses to spread the streams over; empty: the kernel's choice.
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) publisher_token: Option<String>,
    /// One token for every stream, or (session profile, minted) one per topic.
    pub(crate) stream_tokens: Vec<Arc<str>>,
}

impl Setup {
    pub(crate) async fn new(args: &BenchArgs) -> Result<Setup, String> {
        if args.subscribers == 0 {
            return Err("--subscribers must be at least 1".into());
        }
        if args.publishers == 0 {
            return Err("--publishers must be at least 1".into());
        }
        if args.open_concurrency == 0 {
            return Err("--open-concurrency must be at least 1".into());
        }
        if args.streams_per_address == 0 {
            return Err("--streams-per-address must be at least 1".into());
        }
        let held = held_here(args)?;
        if !(args.rate >= 0.0 && args.rate.is_finite()) {
            return Err(format!(
                "--rate {}: give updates per second, or 0 for flat out",
                args.rate
            ));
        }
        if args.payload_size > MAX_PAYLOAD {
            return Err(format!(
                "--payload-size {} is over the {MAX_PAYLOAD} bytes a run sends",
                args.payload_size
            ));
        }
        if let Topics::Count(n) = args.topics {
            if n > args.subscribers {
                return Err(format!(
                    "--topics {n} is more than --subscribers {}: some topics would have no stream",
                    args.subscribers
                ));
            }
        }
        phases(args)?;
        usage::rss_bytes(&args.pid)?;
        let mut targets = Vec::with_capacity(args.urls.len());
        for url in &args.urls {
            targets.push(Arc::new(
                Target::resolve(url)
                    .await
                    .map_err(|e| format!("--url {e}"))?,
            ));
        }
        let mut publish_targets = Vec::with_capacity(args.publish_urls.len());
        for url in &args.publish_urls {
            publish_targets.push(
                Target::resolve(url)
                    .await
                    .map_err(|e| format!("--publish-url {e}"))?,
            );
        }
        if publish_targets.is_empty() {
            publish_targets.push((*targets[0]).clone());
        }
        if let Some(pid) = args.kill {
            if pid == std::process::id() || pid <= 1 {
                return Err(format!("--kill {pid}: give the pid of a hub instance"));
            }
        }
        let prefix = match &args.topic_prefix {
            Some(prefix) => prefix.clone(),
            None => format!("bench-{:08x}-", rand::random::<u32>()),
        };
        let plan = Plan::new(
            args.subscribers,
            args.topics,
            args.updates,
            args.broadcasts,
            &prefix,
        );
        let sources = source_addresses(args, &targets)?;
        raise_open_files_limit(held + args.publishers as u64 + 64)?;
        if args.worker.is_none() {
            // (The coordinator checks for every stream its workers will open.)
            conntrack_room(args.subscribers + args.publishers as u64)?;
        }
        let (publisher_token, stream_tokens) = tokens(args, &plan)?;
        Ok(Setup {
            targets,
            publish_targets,
            plan,
            sources,
            publisher_token,
            stream_tokens,
        })
    }
}

/// The most broadcasts a run sends (every stream keeps a bit for each).
const MAX_BROADCASTS: u64 = 100_000;

/// Checks what the hold, the broadcasts and the churn ask.
fn phases(args: &BenchArgs) -> Result<(), String> {
    if args.broadcasts > 0 && args.profile == Profile::Nchan {
        return Err(
            "--broadcasts needs streams that hold two topics: --profile mercure or session".into(),
        );
    }
    if args.broadcasts > MAX_BROADCASTS {
        return Err(format!(
            "--broadcasts {} is over the {MAX_BROADCASTS} a run sends",
            args.broadcasts
        ));
    }
    if args.hold >= args.timeout {
        return Err(format!(
            "--hold {:?} does not fit in --timeout {:?} (the bound on the whole run): raise --timeout",
            args.hold, args.timeout
        ));
    }
    if !(args.churn >= 0.0 && args.churn.is_finite()) {
        return Err(format!(
            "--churn {}: give reconnections per minute, or 0 for none",
            args.churn
        ));
    }
    if args.churn > 0.0 && args.churn_after >= args.hold {
        return Err(format!(
            "--churn runs from --churn-after ({:?}) to the end of --hold ({:?}): give a longer --hold",
            args.churn_after, args.hold
        ));
    }
    Ok(())
}

/// How many streams this process holds: all of them, or a worker's slice, or none (the
/// coordinator of `--workers`); checks what `--workers` asks.
fn held_here(args: &BenchArgs) -> Result<u64, String> {
    let workers = args.workers;
    if workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    if workers as u64 > args.subscribers {
        return Err(format!(
            "--workers {workers} is more than --subscribers {}: some workers would hold no stream",
            args.subscribers
        ));
    }
    if let Some(index) = args.worker {
        if index >= workers {
            return Err(format!("--worker {index} of --workers {workers}"));
        }
        let slice = workers::slice(args.subscribers, workers, index);
        return Ok(slice.end - slice.start);
    }
    if workers == 1 {
        return Ok(args.subscribers);
    }
    if args.kill.is_some() {
        return Err(
            "--kill is not supported with --workers: run the failover benchmark in one process"
                .into(),
        );
    }
    let most = args.subscribers.div_ceil(workers as u64);
    if most > workers::MAX_STREAMS_PER_WORKER {
        return Err(format!(
            "--workers {workers}: {most} streams per worker is over the {} one process holds \
             (the open-files limit): give --workers {} or more",
            workers::MAX_STREAMS_PER_WORKER,
            args.subscribers.div_ceil(workers::MAX_STREAMS_PER_WORKER)
        ));
    }
    Ok(0)
}

/// Loopback source addresses enough for the streams, when one is not enough.
fn source_addresses(args: &BenchArgs, targets: &[Arc<Target>]) -> Result<Vec<IpAddr>, String> {
    let needed = args.subscribers.div_ceil(args.streams_per_address) as usize;
    if needed <= 1 {
        return Ok(Vec::new());
    }
    if targets.iter().any(|t| !t.addr.is_ipv4()) {
        return Err(format!(
            "{} streams need {needed} source addresses at --streams-per-address {}; that \
             takes an IPv4 loopback --url (127.0.0.x), not ::1",
            args.subscribers, args.streams_per_address
        ));
    }
    if needed > MAX_SOURCE_ADDRESSES {
        return Err(format!(
            "{} streams at --streams-per-address {} need {needed} source addresses; \
             127.0.0.1 to 127.0.0.254 are {MAX_SOURCE_ADDRESSES}",
            args.subscribers, args.streams_per_address
        ));
    }
    Ok((1..=needed as u8)
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .collect())
}

fn raise_open_files_limit(needed: u64) -> Result<(), String> {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|e| format!("cannot raise the open files limit: {e}"))?;
    if limit < needed {
        return Err(format!(
            "the open files limit is {limit} and this run needs {needed}; raise the hard \
             limit (ulimit -Hn, or LimitNOFILE= for a service) or open fewer streams"
        ));
    }
    Ok(())
}

/// Where the kernel tracks connections (netfilter's conntrack, on when a firewall or NAT
/// rule is loaded), each connection takes an entry, loopback ones included; once the table
/// is full the kernel drops new connections' packets, and streams time out by the thousand
/// with nothing in any log but the kernel's ("nf_conntrack: table full"). Found at 267,000
/// streams here (262,144 entries): refused up front instead, saying what to raise.
fn conntrack_room(needed: u64) -> Result<(), String> {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let (Some(max), Some(count)) = (read("nf_conntrack_max"), read("nf_conntrack_count")) else {
        return Ok(()); // No connection tracking: no table to fill.
    };
    let room = max.saturating_sub(count);
    if needed > room {
        return Err(format!(
            "the kernel's connection tracking has room for {room} more connections \
             (net.netfilter.nf_conntrack_max {max}, {count} in use: entries of closed \
             connections linger a while) and this run opens {needed}: raise it \
             (sysctl -w net.netfilter.nf_conntrack_max={}) or open fewer streams",
            (count + needed) * 5 / 4
        ));
    }
    Ok(())
}

/// The publishers' token and the streams' tokens, as given or minted with `--jwt-key`.
fn tokens(args: &BenchArgs, plan: &Plan) -> Result<(Option<String>, Vec<Arc<str>>), String> {
    let sign = |mercure: serde_json::Value, sub: Option<String>| -> Result<String, String> {
        let key = args.jwt_key.as_deref().unwrap_or_default();
        let mut claims = serde_json::json!({ "mercure": mercure });
        if let Some(sub) = sub {
            claims["sub"] = sub.into();
        }
        tidings_client::token::mint(args.jwt_alg, key, &claims)
            .map_err(|e| format!("--jwt-key: {e}"))
    };
    let minting = args.jwt_key.is_some();
    let publisher = match (&args.token, minting) {
        (Some(token), _) => Some(token.clone()),
        (None, true) => Some(sign(serde_json::json!({ "publish": ["*"] }), None)?),
        (None, false) => None,
    };
    let subscribe_all = || serde_json::json!({ "subscribe": ["*"] });
    let streams = match (&args.subscriber_token, minting) {
        (Some(token), _) => vec![Arc::from(token.as_str())],
        (None, true) if args.profile == Profile::Session => (0..plan.topics)
            .map(|t| sign(subscribe_all(), Some(plan.topic_name(t))).map(Arc::from))
            .collect::<Result<_, _>>()?,
        (None, true) => vec![Arc::from(sign(subscribe_all(), None)?.as_str())],
        (None, false) => Vec::new(),
    };
    Ok((publisher, streams))
}
