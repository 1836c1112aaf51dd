#!/usr/bin/env python3
"""Checks deploy/kubernetes: every manifest validates against the API schemas of the oldest and
the newest Kubernetes this kit is for (kubernetes-validate, strict: an unknown field is an
error), the kustomization names files that exist and the image its Deployment runs, and the
numbers agree with the hub they run:

- the drain the pods get (configmap.yaml's TIDINGS_DRAIN_SECS, else the image's, else the
  hub's own default, read from `tidings serve --help`) fits the termination grace with the
  preStop sleep and the second the hub gives requests in flight;
- readiness asks /readyz and liveness /healthz (never /readyz: a bus outage must not restart
  every pod), on the port the image listens on;
- a hub started with the ConfigMap's settings accepts them, answers both probes' paths with
  200, and exports the metric the streams autoscaler scales on.

    python3 scripts/kubernetes-check.py --binary target/debug/tidings

Needs kubernetes-validate and PyYAML (installed with pip when missing).
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "deploy" / "kubernetes"
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"
# The oldest Kubernetes the kit is for (the preStop sleep action is on by default from 1.30;
# 1.34 is the oldest version still maintained upstream) and the newest.
VERSIONS = ["1.34.0", "1.37.0"]
VALIDATOR = "kubernetes-validate==1.37.0"

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def ok(message):
    print(f"ok   {message}")


def ensure_tools():
    try:
        import yaml  # noqa: F401
        subprocess.run(["kubernetes-validate", "--version"], check=True, capture_output=True)
    except (ImportError, FileNotFoundError, subprocess.CalledProcessError):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        VALIDATOR, "PyYAML"], check=True)


def validate(manifests):
    for version in VERSIONS:
        result = subprocess.run(["kubernetes-validate", "--strict", "--quiet", "-k", version,
                                 *map(str, manifests)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
        if result.returncode != 0 or errors:
            fail(f"manifests do not validate against Kubernetes {version}:\n" + (result.stdout + result.stderr))
        else:
            ok(f"{len(manifests)} manifests validate against Kubernetes {version} (strict)")


def image_env():
    """The ENV of the Containerfile's runtime stage, as a dict."""
    text = CONTAINERFILE.read_text().split(" AS runtime", 1)[1]
    env = {}
    for block in re.findall(r"^ENV ((?:.*\\\n)*.*)$", text, re.M):
        for key, value in re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " ")):
            env[key] = value
    return env


def hub_default(binary, flag):
    """The default `tidings serve --help` shows for `flag`."""
    help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    match = re.search(rf"{re.escape(flag)}[^\n]*(?:\n(?!\s*-)[^\n]*)*?\[default: ([^\]]+)\]", help_text)
    if not match:
        raise SystemExit(f"`tidings serve --help` shows no default for {flag}")
    return match.group(1)


def check_numbers(binary, docs):
    import yaml  # noqa: F401
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config = docs["ConfigMap"]["data"]
    image = image_env()

    if "TIDINGS_DRAIN_SECS" in config:
        drain, source = int(config["TIDINGS_DRAIN_SECS"]), "configmap.yaml"
    elif "TIDINGS_DRAIN_SECS" in image:
        drain, source = int(image["TIDINGS_DRAIN_SECS"]), "the image"
    else:
        drain, source = int(hub_default(binary, "--drain-secs")), "the hub's default"
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    # The hub's drain: `drain` seconds for streams, then one more for requests in flight, and
    # half a second for the last spans when tracing is on (telemetry::FLUSH_AT_EXIT).
    needed = pre_stop + drain + 1 + 0.5
    if grace > needed:
        ok(f"grace {grace} s > preStop {pre_stop} s + drain {drain} s ({source}) + 1 s + 0.5 s")
    else:
        fail(f"terminationGracePeriodSeconds {grace} does not exceed preStop {pre_stop} + drain {drain} ({source}) + 1 + 0.5")

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen = config.get("TIDINGS_LISTEN", image.get("TIDINGS_LISTEN", ""))
    listen_port = int(listen.rsplit(":", 1)[1]) if listen else None
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet")
        if not get:
            fail(f"the container has no {probe} with httpGet")
            continue
        port = ports.get(get["port"], get["port"])
        if get["path"] != path:
            fail(f"{probe} asks {get['path']}, not {path}")
        elif port != listen_port:
            fail(f"{probe} asks port {port}, the image listens on {listen_port}")
        else:
            ok(f"{probe} asks {path} on {port}, where the image listens")
    return config, container


def check_hub(binary, config, container, streams_hpa):
    """Starts the hub with the ConfigMap's settings and asks it what the manifests rely on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(config)
    env.update({"TIDINGS_LISTEN": "127.0.0.1:0", "TIDINGS_AUTH": "none", "TIDINGS_INSTANCE_ID": "tidings-pod-0"})
    hub = subprocess.Popen([binary, "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        base = None
        deadline = time.time() + 15
        seen = []
        while time.time() < deadline and base is None:
            line = hub.stderr.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(r"listening on (http://[0-9.:]+)", line)
            if match:
                base = match.group(1)
        if base is None:
            fail("the hub did not start with configmap.yaml's settings:\n" + "".join(seen))
            return
        ok("the hub starts with configmap.yaml's settings")
        for probe in ("readinessProbe", "livenessProbe"):
            path = container[probe]["httpGet"]["path"]
            status = urllib.request.urlopen(base + path, timeout=5).status
            (ok if status == 200 else fail)(f"{path} answers {status}")
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        name = streams_hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
        if re.search(rf"^{re.escape(name)} ", metrics, re.M):
            ok(f"the streams autoscaler's metric {name} is exported")
        else:
            fail(f"the hub exports no {name} (horizontalpodautoscaler-streams.yaml)")
    finally:
        hub.send_signal(signal.SIGKILL)
        hub.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=str(ROOT / "target" / "debug" / "tidings"))
    args = parser.parse_args()
    ensure_tools()
    import yaml

    kustomization = yaml.safe_load((KIT / "kustomization.yaml").read_text())
    manifests = sorted(p for p in KIT.glob("*.yaml") if p.name != "kustomization.yaml")
    validate(manifests)

    docs = {}
    by_file = {}
    for path in manifests:
        doc = yaml.safe_load(path.read_text())
        by_file[path.name] = doc
        if path.name in kustomization["resources"]:
            docs[doc["kind"]] = doc
    kit_text = (KIT / "kustomization.yaml").read_text()
    for path in manifests:
        if path.name not in kustomization["resources"] and f"- {path.name}" not in kit_text:
            fail(f"{path.name} is neither a resource of kustomization.yaml nor one of its examples")
    for resource in kustomization["resources"]:
        if not (KIT / resource).exists():
            fail(f"kustomization.yaml names {resource}, which does not exist")
    images = {i["name"] for i in kustomization.get("images", [])}
    container_image = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
    if container_image in images:
        ok(f"kustomization.yaml sets the image the Deployment runs ({container_image})")
    else:
        fail(f"kustomization.yaml's images {sorted(images)} miss the Deployment's {container_image}")

    config, container = check_numbers(args.binary, docs)
    check_hub(args.binary, config, container, by_file["horizontalpodautoscaler-streams.yaml"])
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("deploy/kubernetes: valid, and in agreement with the hub")


if __name__ == "__main__":
    main()
