#!/usr/bin/env python3
"""Tidings against Nchan on this machine: the same scenarios, the same load generator
(`tidings-bench`), in one run, alternating the two hubs.

    cargo build --release --workspace
    apt-get install nginx libnginx-mod-nchan      # Debian's packages
    python3 scripts/bench-compare.py --out docs/benchmarks/results.json

On a 2-core machine each server runs pinned to core 0 (`taskset -c 0`: Tidings then has one
runtime thread, like nginx's `worker_processes 1`) and the bench to core 1. Scenarios, each
run `--repeat` times with a fresh server per hub and repeat (medians are reported):

- single instance, `--streams` streams: RSS per idle stream (first run on a fresh process);
  fan-out (one topic, 100 updates, flat out); the same fan-out at a rate both hubs sustain
  (`--fanout-rate`), for latency at equal load; targeted delivery (a topic per stream, one
  update each through 16 publishers);
- cross-instance: streams on instance A, publishers on B, through the machine's Redis (Tidings
  `--bus redis://`, Nchan `nchan_redis_pass`): the same four measures;
- scale: as many idle streams on one instance as `--scale-streams` (capped by the hard
  open-files limit), then one update to all of them.

With `--baseline PATH` (another Tidings build, e.g. the one before a change) it runs as a third
hub in the same run, alternating with the others, and the summary adds each measure's ratio of
Tidings to it: what a change costs, measured side by side on a noisy machine. `--tidings-args`
passes options to the Tidings under test only; `--otlp-sink` starts an OTLP/HTTP endpoint that
takes every batch (answering 200) and points that Tidings at it (`--otlp-endpoint`): the cost
of tracing on.

Writes every run's JSON and a summary of ratios to `--out` and prints the summary as a
Markdown table. Loopback only; every run is bounded by the bench's own `--timeout`; servers
are stopped and their Redis keys deleted at the end.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance, bench_beside  # noqa: E402

NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
REDIS = "redis://127.0.0.1:6379/0"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx with Nchan, one worker, on a free loopback port; on Redis when `namespace` is
    given (channels then live in Redis under that namespace, shared by every such nginx)."""

    def __init__(self, launcher, namespace=None):
        self.dir = tempfile.mkdtemp(prefix="tidings-nchan-")
        self.port = free_port()
        redis_upstream, redis_pass = "", ""
        if namespace:
            redis_upstream = ('  upstream nchan_redis { nchan_redis_server "redis://127.0.0.1:6379"; }\n'
                              f'  nchan_redis_namespace "{namespace}";\n')
            redis_pass = " nchan_redis_pass nchan_redis;"
        d = self.dir
        conf = f"""load_module {NCHAN_MODULE};
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 200000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  nchan_shared_memory_size 1024m;
{redis_upstream}  server {{
    listen 127.0.0.1:{self.port} backlog=65535;
    location ~ ^/sub/(.+)$ {{ nchan_subscriber eventsource; nchan_channel_id $1;{redis_pass} }}
    location ~ ^/pub/(.+)$ {{ nchan_publisher; nchan_channel_id $1;{redis_pass} }}
  }}
}}
"""
        with open(f"{d}/nginx.conf", "w") as f:
            f.write(conf)
        self.process = subprocess.Popen([*launcher, "nginx", "-p", d, "-c", f"{d}/nginx.conf"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"nginx did not start: {open(f'{d}/error.log').read()}")
                time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}"
        # The worker holds the connections and the shared memory it touches.
        self.pid = int(subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                                      text=True, check=True).stdout.split()[0])

    def stop(self):
        self.process.send_signal(signal.SIGTERM)  # fast shutdown: the worker goes too
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Tidings:
    def __init__(self, binary, launcher, bus_prefix=None, extra=()):
        args = ["--auth", "none", "--max-streams", "1000000",
                "--max-streams-per-address", "1000000", *extra]
        if bus_prefix:
            args += ["--bus", REDIS, "--bus-prefix", bus_prefix]
        self.instance = Instance(binary, args, launcher=launcher)
        self.base = self.instance.base
        self.pid = self.instance.process.pid

    def stop(self):
        self.instance.stop()


def cpu_seconds(pid):
    """User and system CPU time of process `pid` so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def delete_redis_keys(pattern):
    keys = subprocess.run(["redis-cli", "--scan", "--pattern", pattern], capture_output=True,
                          text=True).stdout.split()
    for i in range(0, len(keys), 500):
        subprocess.run(["redis-cli", "DEL", *keys[i:i + 500]], capture_output=True)


class Runner:
    def __init__(self, args):
        self.args = args
        self.server_launcher = ["taskset", "-c", args.server_core] if args.server_core else []
        self.bench_launcher = ["taskset", "-c", args.bench_core] if args.bench_core else []
        self.runs = []

    def bench(self, scenario, hub, repeat, urls, publish_url, pid, extra):
        command = [*self.bench_launcher, self.args.bench, "--quiet", "--json", "-",
                   "--profile", "nchan" if hub == "nchan" else "mercure", "--timeout", "600"]
        for url in urls:
            command += ["--url", url]
        command += ["--publish-url", publish_url, "--pid", str(pid), *extra]
        cpu_before = cpu_seconds(pid)
        done = subprocess.run(command, capture_output=True, text=True, timeout=700)
        cpu = cpu_seconds(pid) - cpu_before
        try:
            result = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"{scenario}/{hub}: no JSON from {' '.join(command)}: {done.stderr}")
        self.runs.append({"scenario": scenario, "hub": hub, "repeat": repeat,
                          "command": " ".join(command), "exit_status": done.returncode,
                          "hub_cpu_seconds": cpu, "result": result})
        d = result["deliveries"]
        print(f"  {scenario:<22} {hub:<8} #{repeat}: {d['per_second']:>10.0f} deliveries/s, "
              f"p99 {result['latency_ms']['p99']:8.2f} ms, lost {d['lost']}, "
              f"mem/stream {result['memory']['per_idle_stream_bytes']:8.0f} B, ok {result['ok']}",
              flush=True)
        return result

    def measures(self, prefix, hub, repeat, urls, publish_url, pid):
        """Memory (first, on the fresh server), fan-out flat out and at a rate, targeted."""
        s = str(self.args.streams)
        measures = {
            "memory": ["-c", s, "-n", "0"],
            "fanout": ["-c", s, "-n", "100", "--drain", "60"],
            "fanout-at-rate": ["-c", s, "-n", str(self.args.fanout_updates), "--rate",
                               str(self.args.fanout_rate), "--drain", "60"],
            "targeted": ["-c", s, "--topics", "each", "-n", s, "-p", "16", "--drain", "60"],
        }
        for measure, extra in measures.items():
            if measure in self.args.measures.split(","):
                self.bench(f"{prefix}{measure}", hub, repeat, urls, publish_url, pid, extra)

    def single(self, hub, repeat):
        server = self.start(hub)
        try:
            self.measures("", hub, repeat, [server.base], server.base, server.pid)
        finally:
            server.stop()

    def cross(self, hub, repeat):
        name = f"tidings-bench-{uuid.uuid4().hex[:8]}"
        servers = [self.start(hub, name) for _ in range(2)]
        try:
            a, b = servers
            self.measures("cross-", hub, repeat, [a.base], b.base, a.pid)
        finally:
            for server in servers:
                server.stop()
            delete_redis_keys(f"{name}*")

    def scale(self, hub, repeat, streams):
        server = self.start(hub)
        try:
            self.bench("scale", hub, repeat, [server.base], server.base, server.pid,
                       ["-c", str(streams), "-n", "1", "--drain", "120", "--settle", "3"])
        finally:
            server.stop()

    def start(self, hub, redis_name=None):
        if hub == "tidings":
            return Tidings(self.args.tidings, self.server_launcher, redis_name,
                           self.args.tidings_args.split())
        if hub == "baseline":
            return Tidings(self.args.baseline, self.server_launcher, redis_name)
        return Nginx(self.server_launcher, redis_name)


class OtlpSink:
    """An OTLP/HTTP endpoint on loopback that takes every batch and answers 200 (an empty
    protobuf answer): where the traced Tidings sends its spans."""

    def __init__(self):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the standard library's name)
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def median(runs, scenario, hub, pick, of=lambda run: run["result"]):
    """The median of `pick` over the runs of `scenario` on `hub` (`pick` is given what `of`
    takes from each run: its bench result, or the run itself)."""
    values = [pick(of(r)) for r in runs if r["scenario"] == scenario and r["hub"] == hub]
    return statistics.median(values) if values else None


def summarize(runs, scale_streams):
    """One row per measure: both medians, their ratio (Tidings / Nchan), the target."""
    rows = []

    def row(measure, scenario, pick, target, higher_is_better):
        t, n = median(runs, scenario, "tidings", pick), median(runs, scenario, "nchan", pick)
        if t is None or n is None:
            return
        ratio = t / n if n else float("inf")
        met = ratio >= target if higher_is_better else ratio <= target
        lost = sum(r["result"]["deliveries"]["lost"] for r in runs
                   if r["scenario"] == scenario and r["hub"] == "tidings")
        rows.append({"measure": measure, "scenario": scenario, "tidings": t, "nchan": n,
                     "ratio": ratio, "target": ("≥ " if higher_is_better else "≤ ") + f"{target}×",
                     "met": met, "tidings_lost": lost})

    mem = lambda r: r["memory"]["per_idle_stream_bytes"]  # noqa: E731
    rate = lambda r: r["deliveries"]["per_second"]  # noqa: E731
    p99 = lambda r: r["latency_ms"]["p99"]  # noqa: E731
    cpu_us = lambda r: r["server_cpu"]["per_delivery_us"]  # noqa: E731
    for prefix, where in (("", "one instance"), ("cross-", "across instances")):
        row(f"RSS per idle stream, {where} (bytes)", f"{prefix}memory", mem, 0.5, False)
        row(f"fan-out deliveries/s, {where}", f"{prefix}fanout", rate, 1.5, True)
        row(f"fan-out p99 latency flat out, {where} (ms)", f"{prefix}fanout", p99, 1.0, False)
        row(f"fan-out p99 latency at equal rate, {where} (ms)", f"{prefix}fanout-at-rate", p99,
            1.0, False)
        row(f"targeted updates/s, {where}", f"{prefix}targeted", rate, 1.0, True)
        row(f"targeted p99 latency, {where} (ms)", f"{prefix}targeted", p99, 1.0, False)
        # The hub's CPU from the first publish to the last delivery (the bench reads it from
        # /proc for --pid), over the deliveries: the cost of a publish and its delivery.
        row(f"hub CPU per targeted publish and delivery, {where} (µs)", f"{prefix}targeted",
            cpu_us, 0.5, False)
        row(f"hub CPU per fan-out delivery, {where} (µs)", f"{prefix}fanout", cpu_us, 1.0, False)
    scale = [r for r in runs if r["scenario"] == "scale"]
    return {"ratios": rows, "scale": [{
        "hub": r["hub"], "streams": r["result"]["streams"]["opened"],
        "asked": scale_streams,
        "rss_idle_mib": r["result"]["memory"]["rss_idle_bytes"] / 2**20,
        "per_idle_stream_bytes": r["result"]["memory"]["per_idle_stream_bytes"],
        "broadcast_seconds": r["result"]["deliveries"]["seconds"],
        "lost": r["result"]["deliveries"]["lost"], "ok": r["result"]["ok"]} for r in scale]}


def against_baseline(runs):
    """Each measure's median for Tidings and for the baseline build, and their ratio."""
    rows = []
    picks = {"memory": ("RSS per idle stream (bytes)", lambda r: r["memory"]["per_idle_stream_bytes"]),
             "fanout": ("fan-out deliveries/s", lambda r: r["deliveries"]["per_second"]),
             "fanout-at-rate": ("fan-out p99 latency at a rate (ms)", lambda r: r["latency_ms"]["p99"]),
             "targeted": ("targeted updates/s", lambda r: r["deliveries"]["per_second"])}
    def cpu_us(result):
        return result["server_cpu"]["per_delivery_us"]

    for prefix, where in (("", "one instance"), ("cross-", "across instances")):
        for measure in ("fanout", "targeted"):
            t = median(runs, prefix + measure, "tidings", cpu_us)
            b = median(runs, prefix + measure, "baseline", cpu_us)
            if t is not None and b is not None:
                rows.append({"measure": f"hub CPU per delivery while publishing, {measure}, "
                             f"{where} (µs)", "tidings": t, "baseline": b,
                             "ratio": t / b if b else float("inf")})
        for measure, (name, pick) in picks.items():
            t = median(runs, prefix + measure, "tidings", pick)
            b = median(runs, prefix + measure, "baseline", pick)
            if t is None or b is None:
                continue
            rows.append({"measure": f"{name}, {where}", "tidings": t, "baseline": b,
                         "ratio": t / b if b else float("inf")})
    return rows


def versions(binary):
    def out(*cmd):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (done.stdout + done.stderr).strip()
        except OSError as e:
            return f"unavailable: {e}"
    return {
        "tidings": out(binary, "--version"),
        "tidings_commit": out("git", "rev-parse", "--short", "HEAD"),
        "nginx": out("nginx", "-v"),
        "nchan": out("dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-nchan"),
        "redis": out("redis-server", "--version"),
        "kernel": platform.release(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name")), "unknown"),
        "cores": os.cpu_count(),
    }


def print_table(summary):
    print("\n| Measure | Tidings | Nchan | Ratio | Target | Met |")
    print("|---|---|---|---|---|---|")
    for r in summary["ratios"]:
        print(f"| {r['measure']} | {r['tidings']:,.2f} | {r['nchan']:,.2f} | {r['ratio']:.2f}× | "
              f"{r['target']} | {'yes' if r['met'] else 'no'} |")
    if "against_baseline" in summary:
        print("\n| Measure | Tidings | Baseline | Ratio |")
        print("|---|---|---|---|")
        for r in summary["against_baseline"]:
            print(f"| {r['measure']} | {r['tidings']:,.2f} | {r['baseline']:,.2f} | {r['ratio']:.3f}× |")
    for s in summary["scale"]:
        print(f"\nscale, {s['hub']}: {s['streams']:,} streams (asked {s['asked']:,}), "
              f"RSS {s['rss_idle_mib']:.1f} MiB idle ({s['per_idle_stream_bytes']:.0f} B per stream), "
              f"one update to all in {s['broadcast_seconds']:.3f} s, lost {s['lost']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tidings", default="target/release/tidings")
    parser.add_argument("--bench", help="the tidings-bench binary [default: beside --tidings]")
    parser.add_argument("--streams", type=int, default=10000)
    parser.add_argument("--fanout-rate", type=float, default=5.0,
                        help="updates/s for the latency-at-equal-load fan-out run")
    parser.add_argument("--fanout-updates", type=int, default=50)
    parser.add_argument("--scale-streams", type=int, default=100000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenarios", default="single,cross,scale")
    parser.add_argument("--measures", default="memory,fanout,fanout-at-rate,targeted",
                        help="which measures each single and cross scenario takes")
    parser.add_argument("--server-core", default="0", help="empty: do not pin")
    parser.add_argument("--bench-core", default="1", help="empty: do not pin")
    parser.add_argument("--out", help="write every run and the summary as JSON here")
    parser.add_argument("--baseline", help="another Tidings binary, run beside the first")
    parser.add_argument("--tidings-args", default="", help="options for the Tidings under test")
    parser.add_argument("--otlp-sink", action="store_true",
                        help="trace the Tidings under test, to an endpoint of this script's own")
    args = parser.parse_args()
    if args.otlp_sink:
        sink = OtlpSink()
        args.tidings_args += f" --otlp-endpoint {sink.url}"
    args.bench = args.bench or bench_beside(args.tidings)
    if not os.path.exists(NCHAN_MODULE):
        sys.exit(f"{NCHAN_MODULE} is missing: apt-get install nginx libnginx-mod-nchan")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    scale_streams = min(args.scale_streams, hard - 500) if hard != resource.RLIM_INFINITY \
        else args.scale_streams
    if scale_streams < args.scale_streams:
        print(f"note: the hard open-files limit is {hard}: the scale run opens {scale_streams} "
              f"streams, not {args.scale_streams}", flush=True)
    runner = Runner(args)
    scenarios = args.scenarios.split(",")
    hubs = ("tidings", "baseline", "nchan") if args.baseline else ("tidings", "nchan")
    for repeat in range(1, args.repeat + 1):
        for hub in hubs:
            if "single" in scenarios:
                runner.single(hub, repeat)
            if "cross" in scenarios:
                runner.cross(hub, repeat)
    if "scale" in scenarios:
        for hub in hubs:
            runner.scale(hub, 1, scale_streams)
    summary = summarize(runner.runs, args.scale_streams)
    if args.baseline:
        summary["against_baseline"] = against_baseline(runner.runs)
    print_table(summary)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"versions": versions(args.tidings), "settings": vars(args),
                       "open_files_hard_limit": hard, "summary": summary, "runs": runner.runs},
                      f, indent=1)
            f.write("\n")
    failed = [r for r in runner.runs if r["hub"] != "nchan" and not r["result"]["ok"]]
    if failed:
        sys.exit(f"{len(failed)} Tidings runs did not complete cleanly")


if __name__ == "__main__":
    main()
