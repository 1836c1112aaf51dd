"""What the scripts under scripts/ share: `tidings serve` processes and raw SSE streams.

Import it from a script in this directory (`from hubs import Instance, SseStream`); it needs
only the Python standard library.
"""
import asyncio
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request


def bench_beside(binary):
    """The `tidings-bench` program beside the `tidings` binary, or exit saying how to build it."""
    bench = os.path.join(os.path.dirname(binary) or ".", "tidings-bench")
    if not os.path.exists(bench):
        sys.exit(f"{bench} not found: `cargo build --release --workspace` builds it beside "
                 f"{binary}")
    return bench


def delete_redis_keys(redis_url, prefix):
    """Deletes every key under `prefix:` on the Redis at `redis_url` (a run's own keys)."""
    keys = subprocess.run(["redis-cli", "-u", redis_url, "--scan", "--pattern", f"{prefix}:*"],
                          capture_output=True, text=True, timeout=60).stdout.split()
    for i in range(0, len(keys), 500):
        subprocess.run(["redis-cli", "-u", redis_url, "DEL", *keys[i:i + 500]], capture_output=True)


def free_port():
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_listening(args, port, within=10):
    """Starts `args` (output discarded) and waits until it accepts connections on `port`."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{args[0]} did not start on port {port}")


class Instance:
    """One `tidings serve` on a free loopback port, with `args` after `serve`; `launcher`
    goes before the command (`["taskset", "-c", "0"]` pins it to a core)."""

    def __init__(self, binary, args, log_path=None, launcher=()):
        self.process = subprocess.Popen(
            [*launcher, binary, "serve", "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")} | {"TIDINGS_LOG": "info"},
        )
        # The log is read by a thread (so a silent process cannot block this one), into
        # `log_path` if given, and for as long as the process runs (so it never blocks on a
        # full pipe).
        ready = queue.Queue()

        def drain():
            with open(log_path or os.devnull, "w", buffering=1) as sink:  # (line by line: readable as it goes)
                for line in self.process.stderr:
                    match = re.search(r"listening on http://(\S+)", line)
                    if match:
                        ready.put(match.group(1))
                    sink.write(line)
            ready.put(None)
        threading.Thread(target=drain, daemon=True).start()
        try:
            address = ready.get(timeout=20)
        except queue.Empty:
            address = None
        if address is None:
            self.stop()
            raise RuntimeError(f"tidings did not become ready within 20 s: {' '.join(args)}")
        self.base = f"http://{address}"
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def metrics(self):
        """Every unlabelled sample of `/metrics`, by name."""
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=10) as response:
            samples = {}
            for line in response.read().decode().splitlines():
                parts = line.split()
                if len(parts) == 2 and not line.startswith("#"):
                    samples[parts[0]] = float(parts[1])
            return samples

    def metric(self, name):
        samples = self.metrics()
        if name not in samples:
            raise RuntimeError(f"no metric {name}")
        return samples[name]

    def rss_mib(self):
        """The process's resident set size, in MiB (Linux)."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def publish(self, topic, data):
        body = urllib.parse.urlencode({"topic": topic, "data": data}).encode()
        with urllib.request.urlopen(f"{self.base}/.well-known/mercure", body, timeout=10) as response:
            return response.read().decode()


class SseStream:
    """A stream read over a raw socket: `await SseStream.open(...)`, then `await next_event()`.
    Undoes HTTP/1.1 chunked framing, so events split across chunks parse whole."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.raw, self.body, self.chunked = b"", b"", False

    @classmethod
    async def open(cls, instance, path, headers=(), timeout=10):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(instance.host, instance.port), timeout)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {instance.host}\r\n{extra}\r\n".encode())
        stream = cls(reader, writer)
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in stream.raw:
            await stream._read(deadline)
        head, stream.raw = stream.raw.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            status = head.splitlines()[0].decode(errors="replace")
            raise RuntimeError(f"stream refused: {status} {stream.raw[:300].decode(errors='replace')}")
        stream.chunked = b"transfer-encoding: chunked" in head.lower()
        stream._dechunk()
        return stream

    async def _read(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise asyncio.TimeoutError
        chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
        if not chunk:
            raise ConnectionError("the stream ended")
        self.raw += chunk

    def _dechunk(self):
        if not self.chunked:
            self.body += self.raw
            self.raw = b""
            return
        while b"\r\n" in self.raw:
            size_line, rest = self.raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                raise ConnectionError("the stream ended")
            if len(rest) < size + 2:
                return
            self.body += rest[:size]
            self.raw = rest[size + 2:]

    async def next_event(self, timeout):
        """The next event as a dict of its fields (`data` lines joined by LF), skipping
        comments (heartbeats)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n\n" not in self.body:
                await self._read(deadline)
                self._dechunk()
            block, self.body = self.body.split(b"\n\n", 1)
            fields = {}
            for line in block.split(b"\n"):
                if line.startswith(b":"):
                    continue
                name, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                name = name.decode(errors="replace")
                if name == "data" and "data" in fields:
                    fields["data"] += "\n" + value.decode()
                else:
                    fields[name] = value.decode()
            if fields:
                return fields

    def close(self):
        self.writer.close()


def report(figures, as_json, hidden=()):
    """Prints a soak's figures (JSON, or a table without the `hidden` ones) and its failures,
    then exits: status 1 when there are failures."""
    if as_json:
        print(json.dumps(figures, indent=2))
    else:
        width = max(len(k) for k in figures)
        for name, value in figures.items():
            if name not in ("failures", *hidden):
                print(f"{name:<{width}}  {value}")
        for failure in figures["failures"]:
            print(f"FAILED: {failure}")
    sys.exit(1 if figures["failures"] else 0)
