//! The end of a run: its figures as JSON (for scripts and plots) and as a table (for people).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::profile::Profile;
use super::tally::Percentiles;
use super::usage::Kernel;

/// Everything a run measured.
#[derive(Debug, Serialize)]
pub(super) struct Summary {
    pub(super) tool: &'static str,
    pub(super) version: &'static str,
    pub(super) label: Option<String>,
    pub(super) profile: Profile,
    pub(super) urls: Vec<String>,
    pub(super) publish_urls: Vec<String>,
    pub(super) subscribers: u64,
    pub(super) topics: u64,
    pub(super) updates: u64,
    pub(super) publishers: usize,
    /// Updates per second asked for; `None`: as fast as possible.
    pub(super) rate: Option<f64>,
    pub(super) payload_bytes: usize,
    pub(super) streams: Streams,
    pub(super) memory: Option<Memory>,
    pub(super) server_cpu: Option<ServerCpu>,
    /// What the rest of the machine spent on the streams: the load generator, the kernel.
    pub(super) machine: Option<Machine>,
    pub(super) publish: Publish,
    pub(super) deliveries: Deliveries,
    /// Publish to first arrival, broadcasts left out.
    pub(super) latency_ms: Percentiles,
    /// With `--broadcasts`: when they reached the streams.
    pub(super) broadcasts: Option<Broadcasts>,
    /// With `--churn`: the streams closed and reopened.
    pub(super) churn: Option<Churn>,
    /// With `--reconnect`: streams coming back, and the figures around the kill.
    pub(super) failover: Option<Failover>,
    /// Each distinct error message, with how often it occurred.
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) elapsed_seconds: f64,
    /// Every stream opened and stayed open, every publish was accepted, and every expected
    /// delivery arrived exactly once and in its topic's order.
    pub(super) ok: bool,
}

/// Opening the streams.
#[derive(Debug, Serialize)]
pub(super) struct Streams {
    pub(super) opened: u64,
    pub(super) failed: u64,
    /// Streams the server ended before the run did.
    pub(super) dropped: u64,
    /// From the first connect to the last stream open.
    pub(super) open_seconds: f64,
    pub(super) opened_per_second: f64,
    /// TCP connect to response head, per stream.
    pub(super) connect_ms: Percentiles,
}

/// The server's resident memory (`--pid`).
#[derive(Debug, Serialize)]
pub(super) struct Memory {
    pub(super) pids: Vec<u32>,
    pub(super) rss_before_bytes: u64,
    /// With every stream open and idle.
    pub(super) rss_idle_bytes: u64,
    /// After the deliveries, streams still open.
    pub(super) rss_after_bytes: u64,
    /// `(idle - before) / streams opened`.
    pub(super) per_idle_stream_bytes: f64,
}

/// The server's CPU time (`--pid`, user and system) from the first publish to the last
/// delivery: what publishing and delivering cost it, the opening of the streams left out.
#[derive(Debug, Serialize)]
pub(super) struct ServerCpu {
    pub(super) publishing_seconds: f64,
    /// `publishing_seconds` over the deliveries (each counted once), in microseconds.
    pub(super) per_delivery_us: f64,
}

/// The memory the streams cost outside the hub, with every stream open and idle: the load
/// generator's processes (this one, or its `--workers`) and the kernel, machine-wide (both ends
/// of each loopback connection are sockets of this machine).
#[derive(Debug, Serialize)]
pub(super) struct Machine {
    pub(super) workers: usize,
    /// Before its streams were opened, and with them open and idle.
    pub(super) client_rss_before_bytes: u64,
    pub(super) client_rss_idle_bytes: u64,
    /// `(idle - before) / streams opened`.
    pub(super) client_per_stream_bytes: f64,
    pub(super) kernel_before: Kernel,
    pub(super) kernel_idle: Kernel,
    /// The kernel's growth (slab and TCP buffers) over the growth in TCP sockets.
    pub(super) kernel_per_socket_bytes: f64,
}

impl Machine {
    pub(super) fn new(
        workers: usize,
        client_rss: [u64; 2],
        before: Kernel,
        idle: Kernel,
    ) -> Machine {
        let sockets = idle.tcp_sockets.saturating_sub(before.tcp_sockets);
        Machine {
            workers,
            client_rss_before_bytes: client_rss[0],
            client_rss_idle_bytes: client_rss[1],
            client_per_stream_bytes: 0.0,
            kernel_before: before,
            kernel_idle: idle,
            kernel_per_socket_bytes: idle.bytes().saturating_sub(before.bytes()) as f64
                / sockets.max(1) as f64,
        }
    }

    /// With the count of streams open, for the per-stream figure.
    pub(super) fn per_stream(mut self, streams: u64) -> Machine {
        self.client_per_stream_bytes =
            self.client_rss_idle_bytes
                .saturating_sub(self.client_rss_before_bytes) as f64
                / streams.max(1) as f64;
        self
    }
}

/// The publishers' side.
#[derive(Debug, Serialize)]
pub(super) struct Publish {
    pub(super) published: u64,
    pub(super) failed: u64,
    pub(super) seconds: f64,
    pub(super) updates_per_second: f64,
    /// Request to answer, per publish.
    pub(super) ack_ms: Percentiles,
}

/// Streams coming back after their connection ended (`--reconnect`), around a kill
/// (`--kill`).
#[derive(Debug, Serialize)]
pub(super) struct Failover {
    pub(super) killed_pid: Option<u32>,
    pub(super) kill_after_seconds: Option<f64>,
    /// Streams whose connection ended before the run did.
    pub(super) streams_moved: u64,
    /// Of those, the streams open again at the end.
    pub(super) streams_resumed: u64,
    pub(super) reconnect_attempts: u64,
    /// Attempts an instance answered with an error status.
    pub(super) refused: u64,
    /// Attempts that reached no instance (the killed one, among others).
    pub(super) unreachable: u64,
    /// Attempts answered with a `retry:` hint and no event (turned away for a passing
    /// reason, to come back).
    pub(super) deferred: u64,
    /// Publishes sent to another instance (same id) after a failure.
    pub(super) publish_retries: u64,
    /// Why attempts and publishes were retried, with how often.
    pub(super) why: BTreeMap<String, u64>,
    /// Publish to first arrival, for updates published after the kill.
    pub(super) after_kill_latency_ms: Split,
    pub(super) ack_before_kill_ms: Percentiles,
    pub(super) ack_after_kill_ms: Percentiles,
}

/// The broadcasts (`--broadcasts`): updates every stream holds.
#[derive(Debug, Serialize)]
pub(super) struct Broadcasts {
    pub(super) count: u64,
    /// Publish to arrival, over every stream's every broadcast.
    pub(super) latency_ms: Percentiles,
    /// Per broadcast: publish to the arrival at the last stream that had it.
    pub(super) last_arrival_ms: Vec<f64>,
    /// The median and the largest of `last_arrival_ms`.
    pub(super) last_arrival_p50_ms: f64,
    pub(super) last_arrival_max_ms: f64,
    /// Per broadcast: how many streams had it.
    pub(super) reached: Vec<u64>,
    /// How many broadcasts every stream had.
    pub(super) reached_every_stream: u64,
}

impl Broadcasts {
    pub(super) fn new(
        streams: u64,
        latency_ms: Percentiles,
        last_arrival_ms: Vec<f64>,
        reached: Vec<u64>,
    ) -> Broadcasts {
        let mut sorted = last_arrival_ms.clone();
        sorted.sort_by(f64::total_cmp);
        Broadcasts {
            count: reached.len() as u64,
            latency_ms,
            last_arrival_p50_ms: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
            last_arrival_max_ms: sorted.last().copied().unwrap_or(0.0),
            last_arrival_ms,
            reached_every_stream: reached.iter().filter(|n| **n >= streams).count() as u64,
            reached,
        }
    }
}

/// The churn (`--churn`): streams closed at random and reopened with their last event id.
#[derive(Debug, Serialize)]
pub(super) struct Churn {
    pub(super) asked_per_minute: f64,
    /// Streams closed by the churn (each reopened: its attempts count under `failover`).
    pub(super) churned: u64,
    /// From its start to the end of the hold.
    pub(super) seconds: f64,
    pub(super) per_minute: f64,
}

/// A figure on the streams that moved, and on the others.
#[derive(Debug, Serialize)]
pub(super) struct Split {
    pub(super) moved: Percentiles,
    pub(super) stayed: Percentiles,
}

/// The subscribers' side.
#[derive(Debug, Serialize)]
pub(super) struct Deliveries {
    pub(super) expected: u64,
    /// Update events received, repeats included.
    pub(super) received: u64,
    /// Due (their update was published, their stream open) and not received.
    pub(super) lost: u64,
    /// Of updates the run never sent (it was cut short): not lost, not received.
    pub(super) never_sent: u64,
    /// Of failed publishes, and of streams that failed or dropped.
    pub(super) forfeited: u64,
    pub(super) duplicated: u64,
    /// Received after a later update of the same topic.
    pub(super) out_of_order: u64,
    /// Events that were not the bench's updates for the stream's topic.
    pub(super) stray: u64,
    /// From the first publish to the last delivery.
    pub(super) seconds: f64,
    pub(super) per_second: f64,
}

impl Summary {
    /// The summary as a table.
    pub(super) fn table(&self) -> String {
        let mut t = String::new();
        let s = &self.streams;
        let topics = if self.topics == self.subscribers && self.topics > 1 {
            "a topic each".to_owned()
        } else {
            format!("{} topic{}", self.topics, plural(self.topics))
        };
        let _ = writeln!(
            t,
            "tidings-bench · {} · {} stream{} on {topics} · {} update{} of {} B · {} publisher{}{}",
            self.profile.name(),
            self.subscribers,
            plural(self.subscribers),
            self.updates,
            plural(self.updates),
            self.payload_bytes,
            self.publishers,
            plural(self.publishers as u64),
            self.rate.map(|r| format!(" at {r}/s")).unwrap_or_default()
        );
        let _ = writeln!(
            t,
            "  streams     {}/{} open in {:.2} s ({}/s){}{}   connect {}",
            s.opened,
            self.subscribers,
            s.open_seconds,
            si(s.opened_per_second),
            counted(s.failed, "failed"),
            counted(s.dropped, "dropped"),
            ms(&s.connect_ms),
        );
        if let Some(m) = &self.memory {
            let _ = writeln!(
                t,
                "  memory      RSS {} before, {} idle, {} after: {} per idle stream",
                bytes(m.rss_before_bytes as f64),
                bytes(m.rss_idle_bytes as f64),
                bytes(m.rss_after_bytes as f64),
                bytes(m.per_idle_stream_bytes)
            );
        }
        if let Some(c) = &self.server_cpu {
            let _ = writeln!(
                t,
                "  server cpu  {:.2} s from the first publish to the last delivery: {:.1} µs per delivery",
                c.publishing_seconds, c.per_delivery_us
            );
        }
        if let Some(m) = &self.machine {
            let sockets = m
                .kernel_idle
                .tcp_sockets
                .saturating_sub(m.kernel_before.tcp_sockets);
            let _ = writeln!(
                t,
                "  machine     load generator {} ({} per stream{}); kernel +{} for {} sockets: {} per socket",
                bytes(m.client_rss_idle_bytes as f64),
                bytes(m.client_per_stream_bytes),
                match m.workers {
                    1 => String::new(),
                    n => format!(", {n} workers"),
                },
                bytes(m.kernel_idle.bytes().saturating_sub(m.kernel_before.bytes()) as f64),
                sockets,
                bytes(m.kernel_per_socket_bytes),
            );
        }
        let p = &self.publish;
        let planned = self.updates + self.broadcasts.as_ref().map_or(0, |b| b.count);
        let _ = writeln!(
            t,
            "  publish     {}{} in {:.3} s ({} updates/s){}   ack {}",
            p.published,
            // (The broadcasts are the plan's: a run cut short says how much of it was sent.)
            match (&self.broadcasts, p.published == planned) {
                (Some(b), true) => format!(" ({} of them broadcasts)", b.count),
                (Some(b), false) => format!(" of {planned} planned ({} broadcasts)", b.count),
                (None, true) => String::new(),
                (None, false) => format!(" of {planned} planned"),
            },
            p.seconds,
            si(p.updates_per_second),
            counted(p.failed, "failed"),
            ms(&p.ack_ms),
        );
        let d = &self.deliveries;
        let _ = writeln!(
            t,
            "  deliveries  {}/{} in {:.3} s ({}/s): {} lost{}{}, {} duplicated, {} out of order{}",
            d.received - d.duplicated,
            d.expected,
            d.seconds,
            si(d.per_second),
            d.lost,
            counted(d.never_sent, "of updates never sent"),
            counted(d.forfeited, "of failed publishes or streams"),
            d.duplicated,
            d.out_of_order,
            counted(d.stray, "stray"),
        );
        let l = &self.latency_ms;
        let _ = writeln!(
            t,
            "  latency     p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        if let Some(b) = &self.broadcasts {
            let _ = writeln!(
                t,
                "  broadcasts  {} to {} streams, {} reached every one; last stream had each after p50 {:.2} ms, max {:.2} ms",
                b.count,
                self.subscribers,
                b.reached_every_stream,
                b.last_arrival_p50_ms,
                b.last_arrival_max_ms,
            );
            let _ = writeln!(t, "              every arrival   {}", ms(&b.latency_ms));
        }
        if let Some(c) = &self.churn {
            let _ = writeln!(
                t,
                "  churn       {} streams closed and reopened in {:.1} s ({}/min, {}/min asked)",
                c.churned,
                c.seconds,
                si(c.per_minute),
                si(c.asked_per_minute),
            );
        }
        if let Some(f) = &self.failover {
            let killed = match (f.killed_pid, f.kill_after_seconds) {
                (Some(pid), Some(after)) => {
                    format!("pid {pid} killed {after:.1} s into publishing; ")
                }
                _ => String::new(),
            };
            let _ = writeln!(
                t,
                "  failover    {killed}{}/{} moved streams came back; {} attempts: {} refused, {} unreachable, {} deferred; {} publishes retried",
                f.streams_resumed,
                f.streams_moved,
                f.reconnect_attempts,
                f.refused,
                f.unreachable,
                f.deferred,
                f.publish_retries,
            );
            if f.killed_pid.is_some() {
                let l = &f.after_kill_latency_ms;
                let _ = writeln!(t, "  after kill  moved streams   {}", ms(&l.moved));
                let _ = writeln!(t, "              other streams   {}", ms(&l.stayed));
                let _ = writeln!(
                    t,
                    "  ack         before kill     {}",
                    ms(&f.ack_before_kill_ms)
                );
                let _ = writeln!(
                    t,
                    "              after kill      {}",
                    ms(&f.ack_after_kill_ms)
                );
            }
            for (message, count) in &f.why {
                let _ = writeln!(t, "  retried     {count} × {message}");
            }
        }
        for (message, count) in &self.errors {
            let _ = writeln!(t, "  error       {count} × {message}");
        }
        let _ = writeln!(
            t,
            "  result      {} in {:.1} s",
            if self.ok { "ok" } else { "FAILED" },
            self.elapsed_seconds
        );
        t
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn counted(n: u64, what: &str) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(", {n} {what}")
    }
}

fn ms(p: &Percentiles) -> String {
    format!(
        "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        p.p50, p.p99, p.max
    )
}

/// `1234567.0` as `1.23 M`.
fn si(x: f64) -> String {
    match x {
        x if x >= 1e6 => format!("{:.2} M", x / 1e6),
        x if x >= 1e4 => format!("{:.1} k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

fn bytes(x: f64) -> String {
    match x {
        x if x >= 1024.0 * 1024.0 => format!("{:.1} MiB", x / (1024.0 * 1024.0)),
        x if x >= 1024.0 => format!("{:.1} KiB", x / 1024.0),
        x => format!("{x:.0} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_naturally() {
        assert_eq!(si(2_500_000.0), "2.50 M");
        assert_eq!(si(25_000.0), "25.0 k");
        assert_eq!(si(250.4), "250");
        assert_eq!(bytes(3.5 * 1024.0), "3.5 KiB");
        assert_eq!(bytes(900.0), "900 B");
        assert_eq!(counted(0, "failed"), "");
        assert_eq!(counted(2, "failed"), ", 2 failed");
    }
}
