#!/usr/bin/env python3
"""Walks the docs as a newcomer does: runs every shell block, checks what they say it prints.

    python3 scripts/walk-docs.py --bin target/debug README.md docs/deployment.md docs/clustering.md

Each ```sh block of each file runs in order, in bash (`set -e`), from a scratch directory that
looks like the repository (its top-level entries linked in, `target/release` pointing at
`--bin`), with the environment a terminal would keep (what a block exports, the next one
has). What a person would leave running in a terminal of its own — `tidings serve`,
`curl -N`, `tidings subscribe` — starts in the background, as do the commands a block itself
ends with `&`; the walk waits until each has started (a hub: "listening on"; a stream: its
first bytes). A block that starts a hub closes every terminal before it runs, as a person
stops the last recipe's hubs before the next; each file starts afresh (no terminal, the
walk's own environment). A `curl` that gets an HTTP error fails the block
(`--fail-with-body` is added), so does any other command that fails.

A ```text block shows what something prints; it is checked, and says what, with a comment
right before it. The comments the walk reads (invisible where the Markdown is rendered):

    <!-- walk: prints: terminal "PATTERN" -->        the output of the background command
                                                     whose line holds PATTERN, in full
    <!-- walk: prints: the block above -->           the previous block's standard output
    <!-- walk: prints: …, numbers vary -->           any number matches any number
    <!-- walk: skip: REASON -->                      the next block is not run (or checked)
    <!-- walk: skip "PATTERN": REASON -->            its commands holding PATTERN are not run
    <!-- walk: with "TEXT" as the last output -->    TEXT stands for the last output printed

In expected output, `…` matches anything on its line. A text block without a comment fails
the walk: say whose output it is, or why it is not checked.

The walk uses the binaries in `--bin` (CI's fresh debug build) instead of building a release:
`cargo build --release…` is skipped and `cargo run --release --` runs `target/release/tidings`,
which points at `--bin`. Everything is bounded: a block has 120 s, a wait 15 s; every process
a block started is killed when its terminals are closed or the walk stops.
"""
import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

BLOCK_SECONDS = 120
WAIT_SECONDS = 15

FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
# Commands a person leaves running in a terminal of their own.
LONG_RUNNING = re.compile(r"(^|/)tidings serve\b|^curl\b.* -N\b|(^|/)tidings subscribe\b")

PRELUDE = r"""
set -e
# _walk_bg INDEX KIND: records the job just started (pid $!) and its output files, and waits
# until it has started: a hub until it listens, a stream until it prints something.
_walk_bg() {
  echo "$! $1 $_walk_out" >> "$WALK_DIR/jobs"
  local deadline=$((SECONDS + WAIT_SECONDS))
  until case "$2" in
          serve) grep -q 'listening on' "$_walk_out.err" 2>/dev/null ;;
          stream) [ -s "$_walk_out" ] || [ -s "$_walk_out.err" ] ;;
          *) true ;;
        esac; do
    kill -0 "$!" 2>/dev/null || { echo "walk: it exited: $(cat "$_walk_out.err")" >&2; return 1; }
    [ $SECONDS -lt $deadline ] || { echo "walk: it did not start in ${WAIT_SECONDS} s" >&2; return 1; }
    sleep 0.1
  done
}
"""


@dataclass
class Block:
    path: str
    line: int
    lang: str
    text: str
    directives: list = field(default_factory=list)

    def where(self):
        return f"{self.path}:{self.line}"


def blocks_of(path, shown):
    """The fenced blocks of a Markdown file (named `shown` in messages), with the walk
    comments right before each."""
    source = open(path, encoding="utf-8").read()
    out = []
    last_end = 0
    for m in FENCE.finditer(source):
        between = source[last_end:m.start()]
        # The comments directly before the fence: only blank lines may separate them.
        tail = between.rstrip()
        directives = []
        while True:
            found = re.search(r"<!--\s*walk:((?:(?!-->).)*)-->\s*$", tail, re.S)
            if not found:
                break
            directives.insert(0, found.group(1).strip())
            tail = tail[:found.start()].rstrip()
        line = source.count("\n", 0, m.start()) + 1
        out.append(Block(shown, line, m.group(1), m.group(2), directives))
        last_end = m.end()
    return out


def quoted(directive, key):
    m = re.match(rf'{key}\s+"(.*?)"\s*(?::\s*(.*))?$', directive, re.S)
    return (m.group(1), m.group(2)) if m else (None, None)


def logical_lines(text):
    """Lines with their `\\` continuations joined."""
    lines, current = [], ""
    for raw in text.split("\n"):
        if raw.endswith("\\"):
            current += raw[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    if current:
        lines.append(current)
    return lines


class Walk:
    def __init__(self, bin_dir, repo):
        self.repo = repo
        self.scratch = tempfile.mkdtemp(prefix="tidings-walk-")
        self.state = os.path.join(self.scratch, ".walk")
        os.makedirs(self.state)
        os.makedirs(os.path.join(self.scratch, "tmp"))
        for entry in os.listdir(repo):
            if entry not in ("target", ".git"):
                os.symlink(os.path.join(repo, entry), os.path.join(self.scratch, entry))
        os.makedirs(os.path.join(self.scratch, "target"))
        os.symlink(os.path.abspath(bin_dir), os.path.join(self.scratch, "target", "release"))
        self.env_file = os.path.join(self.state, "env")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(
            PATH=os.path.abspath(bin_dir) + os.pathsep + env.get("PATH", ""),
            TMPDIR=os.path.join(self.scratch, "tmp"),
            WALK_DIR=self.state,
            WAIT_SECONDS=str(WAIT_SECONDS),
        )
        self.env = env
        self.groups = []  # process groups of the blocks since the terminals were last closed
        self.commands = []  # index -> command text, for "terminal" lookups
        self.last_output = ""
        self.block_output = ""

    def new_terminal(self):
        """Every terminal closed, and the next block starts with the environment the walk had."""
        self.close_terminals()
        open(self.env_file, "w").close()

    def close_terminals(self):
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.groups = []
        open(os.path.join(self.state, "jobs"), "a").close()
        os.replace(os.path.join(self.state, "jobs"), os.path.join(self.state, "jobs.closed"))

    def cleanup(self):
        self.close_terminals()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def script(self, block, skip, with_text):
        """The block as bash: long-running commands in the background, curl failing on errors."""
        out = []
        for line in logical_lines(block.text):
            stripped = line.strip()
            if any(p in stripped for p in skip):
                out.append(f"# (skipped) {stripped}")
                continue
            if with_text:
                line = line.replace(with_text, self.last_output)
                stripped = line.strip()
            line = built(line)
            stripped = line.strip()
            code = re.sub(r"\s+#.*$", "", stripped) if not stripped.startswith("#") else ""
            background = code.endswith("&") and not code.endswith("&&")
            if code and (background or LONG_RUNNING.search(code)):
                command = code[:-1].rstrip() if background else code
                index = len(self.commands)
                self.commands.append(command)
                kind = "serve" if re.search(r"\bserve\b", command) else (
                    "stream" if LONG_RUNNING.search(command) else "none")
                indent = line[: len(line) - len(line.lstrip())]
                out.append(f'{indent}_walk_out=$(mktemp "$WALK_DIR/out.XXXXXX"); {as_typed(command)}'
                           f' > "$_walk_out" 2> "$_walk_out.err" & _walk_bg {index} {kind}')
                continue
            out.append(as_typed(line))
        return (PRELUDE + f"set -a; . {shlex.quote(self.env_file)}; set +a\n" + "\n".join(out)
                + f"\nexport -p > {shlex.quote(self.env_file)}.new"
                + f" && mv {shlex.quote(self.env_file)}.new {shlex.quote(self.env_file)}\n")

    def run(self, block, skip, with_text):
        script = self.script(block, skip, with_text)
        started = time.monotonic()
        proc = subprocess.Popen(["bash", "-c", script], cwd=self.scratch, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        self.groups.append(proc.pid)
        try:
            stdout, stderr = proc.communicate(timeout=BLOCK_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise Failure(block, f"still running after {BLOCK_SECONDS} s", stdout, stderr, script)
        if proc.returncode != 0:
            raise Failure(block, f"exit status {proc.returncode}", stdout, stderr, script)
        self.block_output = stdout
        if stdout.strip():
            self.last_output = stdout.strip()
        return time.monotonic() - started

    def terminal_output(self, pattern):
        """The output file of the newest background command whose line holds `pattern`."""
        jobs = os.path.join(self.state, "jobs")
        if not os.path.exists(jobs):
            return None
        found = None
        for entry in open(jobs).read().split("\n"):
            if not entry:
                continue
            _pid, index, path = entry.split(" ", 2)
            if pattern in self.commands[int(index)]:
                found = path
        return found


def built(line):
    """The line with the release build it asks for replaced by the one given (`--bin`)."""
    line = re.sub(r"\bcargo run --release --", "./target/release/tidings", line)
    return re.sub(r"^(\s*)cargo build --release( --workspace)?\b", r"\1:", line)


def as_typed(line):
    """The line with each curl as in a terminal (no progress meter, which curl shows only when
    its output is not a terminal) and failing on an HTTP error (unless it says how already)."""
    def flags(m):
        rest = line[m.end():]
        fails = re.match(r"(?:[^|;&]*\s)?(?:-[a-zA-Z]*f[a-zA-Z]*|--fail\S*)(?:\s|$)", rest)
        return m.group(1) + "curl --no-progress-meter " + ("" if fails else "--fail-with-body ")
    return re.sub(r"(^|\s|\()curl ", flags, line)


def starts_a_hub(block, skip):
    return any(re.search(r"(^|/)tidings serve\b", built(line).strip())
               for line in logical_lines(block.text) if not any(p in line for p in skip))


class Failure(Exception):
    def __init__(self, block, why, stdout="", stderr="", script=""):
        super().__init__(why)
        self.block, self.why, self.stdout, self.stderr, self.script = block, why, stdout, stderr, script


def expected_pattern(text, numbers_vary):
    """A regex of the expected output: `…` matches anything on its line; with
    `numbers_vary`, any number matches any number."""
    # A rate's unit moves with its size ("7020/s", "10.6 k/s"): the prefix goes with the number.
    number = r"\d+(?:\.\d+)?(?: [kMG](?=/))?"
    parts = []
    for piece in re.split(f"(…|{number})", text):
        if piece == "…":
            parts.append(r"[^\n]*")
        elif numbers_vary and re.fullmatch(r"\d+(?:\.\d+)?(?: [kMG])?", piece):
            parts.append(number)
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def normalized(text):
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n")).strip("\n")


def check_output(walk, block, directive):
    what = directive[len("prints:"):].strip()
    numbers_vary = what.endswith(", numbers vary")
    if numbers_vary:
        what = what[: -len(", numbers vary")].strip()
    pattern = expected_pattern(normalized(block.text), numbers_vary)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        if what == "the block above":
            actual, source = walk.block_output, "the block above"
        else:
            m = re.fullmatch(r'terminal "(.*)"', what)
            if not m:
                raise Failure(block, f'cannot read "walk: {directive}": say terminal "PATTERN" or the block above')
            path = walk.terminal_output(m.group(1))
            if path is None:
                raise Failure(block, f'no command still running holds "{m.group(1)}"')
            actual, source = (open(path, errors="replace").read() if os.path.exists(path) else ""), m.group(1)
        if pattern.fullmatch(normalized(actual)):
            return
        if what == "the block above" or time.monotonic() > deadline:
            raise Failure(block, f"{source} printed something else", normalized(actual),
                          "expected:\n" + normalized(block.text))
        time.sleep(0.2)


def walk_file(walk, path, shown, log):
    walk.new_terminal()
    for block in blocks_of(path, shown):
        skip, with_text, skipped_why, prints = [], None, None, None
        for d in block.directives:
            if d.startswith("skip:"):
                skipped_why = d[len("skip:"):].strip()
            elif d.startswith("skip "):
                pattern, why = quoted(d, "skip")
                if pattern is None or not why:
                    raise Failure(block, f'cannot read "walk: {d}": say skip "PATTERN": why')
                skip.append(pattern)
            elif d.startswith("with "):
                m = re.fullmatch(r'with "(.*)" as the last output', d)
                if not m:
                    raise Failure(block, f'cannot read "walk: {d}"')
                with_text = m.group(1)
            elif d.startswith("prints:"):
                prints = d
            else:
                raise Failure(block, f'cannot read "walk: {d}"')
        if skipped_why is not None:
            log(f"  skip   {block.where():24} {skipped_why}")
            continue
        if block.lang == "text":
            if prints is None:
                raise Failure(block, "a text block without a walk comment: say whose output it is "
                              "(<!-- walk: prints: terminal \"…\" -->) or why it is not checked (<!-- walk: skip: … -->)")
            check_output(walk, block, prints)
            log(f"  check  {block.where():24} {prints[len('prints:'):].strip()}")
        elif block.lang == "sh":
            if starts_a_hub(block, skip):
                walk.close_terminals()
            took = walk.run(block, skip, with_text)
            first = block.text.strip().split("\n")[0]
            log(f"  run    {block.where():24} {took:5.1f} s  {first[:70]}")
    walk.close_terminals()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="Markdown files, walked in order")
    parser.add_argument("--bin", default="target/debug",
                        help="the directory holding tidings and tidings-bench (default: target/debug)")
    args = parser.parse_args()
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    for name in ("tidings", "tidings-bench"):
        if not os.access(os.path.join(args.bin, name), os.X_OK):
            sys.exit(f"walk-docs: no {name} in {args.bin}: build it first (cargo build --workspace)")
    walk = Walk(args.bin, repo)
    started = time.monotonic()
    try:
        for path in args.files:
            print(f"== {path}", flush=True)
            walk_file(walk, os.path.join(repo, path), path, lambda s: print(s, flush=True))
    except Failure as f:
        print(f"walk-docs: {f.block.where()}: {f.why}", file=sys.stderr)
        for name, text in (("stdout", f.stdout), ("stderr", f.stderr)):
            if text and text.strip():
                print(f"--- {name}:\n{text.rstrip()[-3000:]}", file=sys.stderr)
        if f.script:
            print(f"--- what ran (in {walk.scratch}):\n{f.script.split(PRELUDE, 1)[-1]}", file=sys.stderr)
        walk.cleanup()
        sys.exit(1)
    walk.cleanup()
    print(f"== walked in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
