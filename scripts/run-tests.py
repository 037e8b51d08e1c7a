#!/usr/bin/env python3
"""scripts/run-tests.py — builds the workspace's tests and runs the test binaries a few at a time.

    scripts/run-tests.py [CARGO_TEST_ARGS...] [-- TEST_BINARY_ARGS...]

Why not plain `cargo test`: cargo runs test binaries one after another, and most of the
integration binaries spend their time waiting on real-time media (ffmpeg publishing at 1x,
a segment filling up), not on the CPU. Running three at once halves the test command's wall
time on the 2-core CI machine. Binaries that measure the machine (latency in the browser,
300-reader fan-out without loss) run alone, after the others.

Each binary runs as `cargo test` would run it: from its package's directory, with the
CARGO_* variables set, its output printed as one block when it ends. Concurrent binaries get
distinct SLUICE_TEST_PORT_BLOCK values, so the integration tests' port picker
(crates/sluice/tests/common/ports.rs) never hands two of them the same ports.

SLUICE_TEST_JOBS sets how many binaries run at once (default 3; 1 runs them in sequence).
Doc tests run last with `cargo test --doc`. The exit status is non-zero when any binary
fails; the last line counts the tests over all binaries.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

# Binaries that measure latency or loss under load: run with nothing else beside them.
ALONE = {"browser", "fanout"}
# Rough wall times in seconds on the 2-core machine: the longest start first, so the
# pool does not end waiting on one long binary.
EXPECTED = {
    "client_cli": 63, "pull": 73, "vod": 59, "record": 60, "webrtc": 44, "abuse": 43,
    "http": 42, "security": 29, "lifecycle": 26, "hls": 25, "publish_read": 22,
    "replay": 20, "http_paths": 15, "codecs": 14, "multicast": 13, "recordings_http": 12,
    "sluice_bench": 10, "rtcp": 9, "sessions": 8, "reload": 7,
}


def split_args(argv):
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def scope(cargo_args):
    """`--workspace` unless the arguments name packages."""
    named = any(a in ("-p", "--package") or a.startswith("--package=") for a in cargo_args)
    return [] if named else ["--workspace"]


def build(cargo_args):
    """`cargo test --no-run`; returns the test executables cargo built."""
    cmd = ["cargo", "test", *scope(cargo_args), "--no-run",
           "--message-format=json-render-diagnostics", *cargo_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    found = []
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg.get("profile", {}).get("test"):
            continue
        target = msg["target"]
        kind = target["kind"][0]
        name = target["name"]
        pkg_id = msg.get("package_id", "")
        # "path+file:///…/crates/rtp#sluice-rtp@0.1.0", "path+file:///…/crates/sluice#0.1.0"
        # (the name left out when it is the directory's) or "sluice-rtp 0.1.0 (path+file://…)"
        m = re.search(r"#([^@#]+)@", pkg_id) or re.match(r"(\S+) \d", pkg_id)
        if m:
            package = m.group(1)
        else:
            package = os.path.basename(pkg_id.split("#")[0]) or name
        manifest = msg["manifest_path"]
        found.append({
            "name": name,
            "kind": kind,
            "package": package,
            "exe": msg["executable"],
            "dir": os.path.dirname(manifest),
            "label": f"{package} {'unittests' if kind in ('lib', 'bin') else 'tests/' + name}",
        })
    if proc.wait() != 0:
        sys.exit(proc.returncode)
    return found


class Pool:
    def __init__(self, jobs, test_args):
        self.jobs = jobs
        self.test_args = test_args
        self.lock = threading.Lock()
        self.results = []  # (label, status, passed, failed, secs)
        self.block = 0

    def run_one(self, b):
        with self.lock:
            block = self.block
            self.block += 1
        env = dict(os.environ)
        env["CARGO_MANIFEST_DIR"] = b["dir"]
        env["CARGO_PKG_NAME"] = b["package"]
        env["SLUICE_TEST_PORT_BLOCK"] = str(block % 30)
        start = time.monotonic()
        with tempfile.TemporaryFile(mode="w+") as out:
            status = subprocess.call([b["exe"], *self.test_args], cwd=b["dir"], env=env,
                                     stdout=out, stderr=subprocess.STDOUT)
            out.seek(0)
            text = out.read()
        secs = time.monotonic() - start
        passed = failed = 0
        for m in re.finditer(r"^test result: .*?(\d+) passed; (\d+) failed", text, re.M):
            passed += int(m.group(1))
            failed += int(m.group(2))
        with self.lock:
            print(f"\n──── {b['label']} ({os.path.basename(b['exe'])}): "
                  f"{'ok' if status == 0 else 'FAILED'} in {secs:.1f} s", flush=True)
            sys.stdout.write(text)
            sys.stdout.flush()
            self.results.append((b["label"], status, passed, failed, secs))

    def run(self, binaries):
        queue = list(binaries)
        threads = []

        def worker():
            while True:
                with self.lock:
                    if not queue:
                        return
                    b = queue.pop(0)
                self.run_one(b)

        for _ in range(max(1, self.jobs)):
            t = threading.Thread(target=worker)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()


def main():
    cargo_args, test_args = split_args(sys.argv[1:])
    jobs = int(os.environ.get("SLUICE_TEST_JOBS", "3"))
    binaries = build(cargo_args)
    shared = [b for b in binaries if b["name"] not in ALONE]
    alone = [b for b in binaries if b["name"] in ALONE]
    shared.sort(key=lambda b: -EXPECTED.get(b["name"], 1))
    print(f"==> {len(binaries)} test binaries: {len(shared)} {jobs} at a time, "
          f"then {len(alone)} alone ({', '.join(b['name'] for b in alone)})", flush=True)
    pool = Pool(jobs, test_args)
    started = time.monotonic()
    pool.run(shared)
    alone_pool = Pool(1, test_args)
    alone_pool.run(alone)
    results = pool.results + alone_pool.results

    print("\n==> doc tests", flush=True)
    doc = subprocess.run(["cargo", "test", *scope(cargo_args), "--doc", *cargo_args, "--", *test_args],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(doc.stdout)
    doc_passed = sum(int(m) for m in re.findall(r"^test result: .*?(\d+) passed", doc.stdout, re.M))
    doc_failed = sum(int(m) for m in re.findall(r"^test result: .*?(\d+) failed", doc.stdout, re.M))

    print(f"\n==> test binaries took {time.monotonic() - started:.0f} s; slowest:")
    for label, status, p, f, secs in sorted(results, key=lambda r: -r[4])[:8]:
        print(f"    {secs:6.1f} s  {label}")
    failed_bins = [r[0] for r in results if r[1] != 0]
    if doc.returncode != 0:
        failed_bins.append("doc tests")
    passed = sum(r[2] for r in results) + doc_passed
    failed = sum(r[3] for r in results) + doc_failed
    if failed_bins:
        print("FAILED binaries: " + ", ".join(failed_bins))
    print(f"all tests: {passed} passed, {failed} failed")
    sys.exit(1 if failed_bins else 0)


if __name__ == "__main__":
    main()
