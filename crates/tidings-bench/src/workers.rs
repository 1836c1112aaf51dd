//! A run spread over processes (`--workers N`): past one process's open-files limit (20,000
//! here), the streams are opened by worker processes — this program again, started with
//! `--worker I` — each holding a contiguous slice of the streams (with the run's source
//! addresses: stream `i` connects from the address of its global index). The coordinator (the
//! process the user started) publishes, and adds up what the workers counted into one report.
//!
//! The coordinator and a worker speak in lines. The worker writes JSON to its standard output:
//! `{"progress":{…}}` every 200 ms, then `{"part":{…}}` (its [`Part`]) at the end. The
//! coordinator writes to the worker's standard input: `churn` when the churn starts
//! (`--churn`), `drain SECS` once the publishing is over (the churn ends; wait up to SECS for
//! the deliveries still due, then report), or closes it (report now).
//! A worker whose coordinator is gone (its input closed) reports and ends by itself.
//!
//! Send times travel in the payloads on the coordinator's clock: a worker's tally starts at
//! the coordinator's epoch (`--epoch-us`, the wall clock of this one machine).

use std::ops::Range;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;

use crate::args::BenchArgs;
use crate::plan::Plan;
use crate::stream::Churn;
use crate::tally::{Part, Tally};

/// How long past the drain a worker may take to report: it finishes reading what is queued
/// for its streams first, and at a million streams on two cores (load average over 100) one
/// took longer than 30 s.
const REPORT_GRACE: Duration = Duration::from_secs(60);

/// The most streams one worker holds: the open-files limit (20,000) less room for the
/// process's own files.
pub(crate) const MAX_STREAMS_PER_WORKER: u64 = 19_500;

/// The streams worker `index` of `workers` holds: a contiguous slice of `0..streams`.
pub(crate) fn slice(streams: u64, workers: usize, index: usize) -> Range<u64> {
    let at = |i: usize| streams * i as u64 / workers as u64;
    at(index)..at(index + 1)
}

/// What a worker says while it runs.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Progress {
    pub(crate) opened: u64,
    pub(crate) failed: u64,
    pub(crate) unique: u64,
    /// The worker's resident memory before it opened its streams.
    pub(crate) rss_before: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Said {
    Progress(Progress),
    Part(Box<Part>),
}

/// The workers' counters as they last said them.
#[derive(Clone)]
pub(crate) struct Counts(Vec<[Arc<AtomicU64>; 4]>);

impl Counts {
    /// Added up over the workers.
    pub(crate) fn sum(&self) -> Progress {
        let mut sum = Progress::default();
        for [opened, failed, unique, rss_before] in &self.0 {
            sum.opened += opened.load(Relaxed);
            sum.failed += failed.load(Relaxed);
            sum.unique += unique.load(Relaxed);
            sum.rss_before += rss_before.load(Relaxed);
        }
        sum
    }
}

/// One worker, as its coordinator sees it.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    /// What it last said: opened, failed, unique, its memory before opening.
    said: [Arc<AtomicU64>; 4],
    /// Reads its output; ends with its part (or why there is none).
    reader: JoinHandle<Result<Part, String>>,
}

/// The coordinator's side: the workers it started.
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

impl Workers {
    /// Starts `args.workers` workers of this run, on the clock `epoch_us`, for `plan`'s topics.
    pub(crate) fn start(args: &BenchArgs, plan: &Plan, epoch_us: u64) -> Result<Workers, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("--workers: cannot find this program to start it again: {e}"))?;
        let mut workers = Vec::with_capacity(args.workers);
        for index in 0..args.workers {
            let mut command = Command::new(&exe);
            command
                .args(std::env::args_os().skip(1))
                .arg("--worker")
                .arg(index.to_string())
                .arg("--epoch-us")
                .arg(epoch_us.to_string());
            if args.topic_prefix.is_none() {
                command.arg("--topic-prefix").arg(plan.prefix());
            }
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("--workers: cannot start worker {index}: {e}"))?;
            let stdout = child.stdout.take().ok_or("a worker without its output")?;
            let said: [Arc<AtomicU64>; 4] = Default::default();
            let reader = tokio::spawn(read(index, stdout, said.clone()));
            workers.push(Worker {
                stdin: child.stdin.take(),
                child,
                said,
                reader,
            });
        }
        Ok(Workers { workers })
    }

    /// A worker ended before it was asked to (its error is on standard error).
    pub(crate) fn any_ended(&self) -> bool {
        self.workers.iter().any(|w| w.reader.is_finished())
    }

    /// Their counters, for the progress bars.
    pub(crate) fn counts(&self) -> Counts {
        Counts(self.workers.iter().map(|w| w.said.clone()).collect())
    }

    /// The workers' processes, whose memory is the load generator's own.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(|w| w.child.id()).collect()
    }

    /// Starts the churn in every worker.
    pub(crate) async fn churn(&mut self) {
        for w in &mut self.workers {
            if let Some(stdin) = w.stdin.as_mut() {
                if stdin.write_all(b"churn\n").await.is_ok() {
                    let _ = stdin.flush().await;
                }
            }
        }
    }

    /// Ends the run: each worker waits up to `drain` for the deliveries still due (none when
    /// `drain` is `None`), then reports; adds every report to `tally`.
    pub(crate) async fn finish(mut self, drain: Option<Duration>, tally: &Tally) {
        for w in &mut self.workers {
            if let (Some(drain), Some(stdin)) = (drain, w.stdin.as_mut()) {
                let line = format!("drain {}\n", drain.as_secs_f64());
                if stdin.write_all(line.as_bytes()).await.is_ok() {
                    let _ = stdin.flush().await;
                    continue;
                }
            }
            w.stdin = None; // closed: report now
        }
        // One deadline for all: each worker drains at once, so a later one in the list gets
        // no more time than the first.
        let bound = drain.unwrap_or_default() + REPORT_GRACE;
        let until = tokio::time::Instant::now() + bound;
        for (index, w) in self.workers.into_iter().enumerate() {
            match tokio::time::timeout_at(until, w.reader).await {
                Ok(Ok(Ok(part))) => tally.absorb(&part),
                Ok(Ok(Err(e))) => tally.error(e),
                Ok(Err(e)) => tally.error(format!("worker {index}: {e}")),
                Err(_) => tally.error(format!("worker {index} did not report within {bound:?}")),
            }
        }
    }
}

/// Reads worker `index`'s lines until its part, keeping its progress in `counters`.
async fn read(
    index: usize,
    stdout: tokio::process::ChildStdout,
    counters: [Arc<AtomicU64>; 4],
) -> Result<Part, String> {
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| format!("worker {index}: cannot read its output: {e}"))?
    {
        match serde_json::from_str::<Said>(&line) {
            Ok(Said::Progress(p)) => {
                for (counter, n) in
                    counters
                        .iter()
                        .zip([p.opened, p.failed, p.unique, p.rss_before])
                {
                    counter.store(n, Relaxed);
                }
            }
            Ok(Said::Part(part)) => return Ok(*part),
            Err(e) => return Err(format!("worker {index} said {line:?}: {e}")),
        }
    }
    Err(format!(
        "worker {index} ended without reporting (see its error above)"
    ))
}

/// The worker's side: says its progress until told to drain (or its input closes), starting
/// the `churn` when told, then waits for what `expected` says is still due, up to the drain,
/// and says its part.
pub(crate) async fn serve(
    tally: Arc<Tally>,
    expected: u64,
    rss_before: u64,
    churn: Option<&Churn>,
) -> Result<(), String> {
    let said = |what: &Said| -> Result<(), String> {
        let line = serde_json::to_string(what).map_err(|e| format!("cannot encode: {e}"))?;
        say(&line)
    };
    let progress = || {
        Said::Progress(Progress {
            opened: tally.opened.load(Relaxed),
            failed: tally.open_failed.load(Relaxed),
            unique: tally.unique.load(Relaxed),
            rss_before,
        })
    };
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    let mut every = tokio::time::interval(Duration::from_millis(200));
    let drain = loop {
        tokio::select! {
            _ = every.tick() => said(&progress())?,
            line = commands.next_line() => match line {
                Ok(Some(line)) if line == "churn" => if let Some(churn) = churn {
                    churn.began.cancel();
                },
                Ok(Some(line)) => match line.strip_prefix("drain ").map(str::parse::<f64>) {
                    Some(Ok(secs)) if secs >= 0.0 && secs.is_finite() => break Duration::from_secs_f64(secs),
                    _ => return Err(format!("the coordinator said {line:?}")),
                },
                // The coordinator is gone, or wants the part now.
                _ => break Duration::ZERO,
            },
        }
    };
    if let Some(churn) = churn {
        churn.ended.cancel();
    }
    let until = tokio::time::Instant::now() + drain;
    while tally.unique.load(Relaxed) + tally.given_up.load(Relaxed) < expected
        && tokio::time::Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    said(&progress())?;
    said(&Said::Part(Box::new(tally.part())))
}

/// Writes one line to standard output (the coordinator reads it).
#[allow(clippy::print_stdout)]
fn say(line: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to the coordinator: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::Update;

    #[test]
    fn slices_cover_every_stream_once() {
        for (streams, workers) in [(10, 3), (40_000, 3), (7, 7), (1_000_000, 52)] {
            let slices: Vec<_> = (0..workers).map(|i| slice(streams, workers, i)).collect();
            assert_eq!(slices[0].start, 0);
            assert_eq!(slices[workers - 1].end, streams);
            for pair in slices.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            let biggest = slices.iter().map(|s| s.end - s.start).max().unwrap();
            assert!(
                biggest <= streams.div_ceil(workers as u64),
                "{streams} {workers}"
            );
        }
    }

    #[test]
    fn a_worker_s_part_survives_the_line() {
        let tally = Tally::new(4, 2);
        tally.stream_opened(Duration::from_millis(3));
        tally.delivered(0, true, false, Update::Topic(3));
        tally.delivered(10, true, false, Update::Broadcast(1));
        tally.error("boom".into());
        let line = serde_json::to_string(&Said::Part(Box::new(tally.part()))).unwrap();
        let Said::Part(part) = serde_json::from_str(&line).unwrap() else {
            panic!("{line}")
        };
        let total = Tally::new(4, 2);
        total.absorb(&part);
        total.absorb(&part);
        assert_eq!(total.opened.load(Relaxed), 2);
        assert_eq!(total.unique.load(Relaxed), 4);
        assert_eq!(total.broadcast_reached(), vec![0, 2]);
        assert_eq!(total.broadcast_latency_ms().samples, 2);
        assert_eq!(total.connect_ms().samples, 2);
        assert_eq!(total.errors()["boom"], 2);
    }
}
