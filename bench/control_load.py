#!/usr/bin/env python3
"""Does a busy control endpoint slow a peer's gossip cycle? (issue 13: 1,000 requests per second
against one peer for 30 s must not slow its gossip cycle by more than 5%.)

  bench/control_load.py [--mycel build/cpu/bin/mycel] [--config examples/spambase.yaml]
                        [--peers 3] [--period-s 0.05] [--rate 1000] [--phase-s 30]

Starts a real swarm with `mycel run` (control endpoints on), then, on peer 0, runs three phases
of --phase-s seconds each in the same run: no load, load, no load. The load is a paced stream
of --rate requests per second, GET /metrics and GET /status alternating, over keep-alive HTTP/1.1
connections (the server closes one every 100 requests; the client reopens it), from this
process. Each phase's cycle rate is read from peer 0's own /status at the phase's start and end
(wakeups, merges and train steps over the peer's own clock, `seconds`): one request per
boundary. The figure is the loaded phase's wakeups per second over the mean of the two unloaded
phases (a drift of the machine's load during the run shows as a difference between those two,
printed). Also printed: the requests actually made and their latency, the CPU seconds used in
each phase by peer 0 (its /proc/PID/stat: loop, worker and control threads together) and by
this load generator (os.times), and the machine's load average, since on a 2-core machine the
load generator competes with the peers for the same cores.
The run is stopped (`mycel ctl RUN stop`) after the last phase. Exit status: 0 when the ratio
is at least 0.95, 1 when below, 2 on an error.
"""
import argparse
import glob
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse


def status(url):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request("GET", "/status")
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"GET /status: HTTP {r.status}")
    return json.loads(body)


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime


class Phase:
    def __init__(self, name, url, pid):
        self.name, self.url, self.pid = name, url, pid

    def begin(self):
        self.s0 = status(self.url)
        self.cpu0 = proc_cpu_s(self.pid)
        self.me0 = os.times()
        self.w0 = time.monotonic()

    def end(self):
        self.s1 = status(self.url)
        self.cpu1 = proc_cpu_s(self.pid)
        self.me1 = os.times()
        self.w1 = time.monotonic()
        self.load = os.getloadavg()[0]
        dt = self.s1["seconds"] - self.s0["seconds"]
        self.dt = dt
        self.rates = {k: (self.s1[k] - self.s0[k]) / dt for k in ("wakeups", "merges", "train_steps", "frames_sent")}
        self.peer_cpu = self.cpu1 - self.cpu0
        self.gen_cpu = (self.me1.user - self.me0.user) + (self.me1.system - self.me0.system)


def load(url, rate, seconds):
    """Paced requests: request i is due at start + i/rate; when behind, the next goes at once
    (no burst beyond that). Returns (requests, errors, latencies)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    paths = ("/metrics", "/status")
    lat, errors, i = [], 0, 0
    start = time.monotonic()
    end = start + seconds
    while True:
        due = start + i / rate
        now = time.monotonic()
        if due >= end:
            break
        if due > now:
            time.sleep(due - now)
        t = time.monotonic()
        try:
            conn.request("GET", paths[i % 2])
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                errors += 1
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
        lat.append(time.monotonic() - t)
        i += 1
    conn.close()
    return i, errors, lat, time.monotonic() - start


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mycel", default=os.path.join(root, "build/cpu/bin/mycel"))
    ap.add_argument("--config", default=os.path.join(root, "examples/spambase.yaml"))
    ap.add_argument("--peers", type=int, default=3)
    ap.add_argument("--period-s", type=float, default=0.05, help="protocol.period_s of the swarm")
    ap.add_argument("--rate", type=float, default=1000, help="requests per second during the load phase")
    ap.add_argument("--phase-s", type=float, default=30)
    ap.add_argument("--warmup-s", type=float, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the run folder")
    a = ap.parse_args()

    out = tempfile.mkdtemp(prefix="mycel-control-load-")
    duration = a.warmup_s + 3 * a.phase_s + 60  # stopped before that by `mycel ctl stop`
    cmd = [a.mycel, "run", a.config, "--set", f"peers.count={a.peers}", "--set", f"protocol.period_s={a.period_s}",
           "--set", f"run.duration_s={duration:g}", "--set", f"output={out}", "--set", "eval.every_s=5"]
    print("$ " + " ".join(cmd), flush=True)
    swarm = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.time() + 60
        ep = None
        while time.time() < end and swarm.poll() is None:
            found = glob.glob(os.path.join(out, "*", "control-0.json"))
            if found:
                ep = json.load(open(found[0]))
                break
            time.sleep(0.1)
        if not ep:
            print("control_load: peer 0 never wrote control-0.json", file=sys.stderr)
            return 2
        run_dir = os.path.dirname(found[0])
        url, pid = ep["url"], ep["pid"]
        print(f"run folder {run_dir}; peer 0 at {url} (pid {pid}); warm-up {a.warmup_s:g} s", flush=True)
        time.sleep(a.warmup_s)

        phases = []
        for name in ("idle-1", "load", "idle-2"):
            ph = Phase(name, url, pid)
            ph.begin()
            if name == "load":
                ph.req, ph.err, lat, ph.req_s = load(url, a.rate, a.phase_s)
                lat.sort()
                ph.p50 = lat[len(lat) // 2] * 1e3 if lat else 0
                ph.p99 = lat[int(len(lat) * 0.99)] * 1e3 if lat else 0
                ph.pmax = lat[-1] * 1e3 if lat else 0
            else:
                time.sleep(a.phase_s)
            ph.end()
            phases.append(ph)
            extra = ""
            if name == "load":
                extra = (f"; {ph.req} requests in {ph.req_s:.1f} s = {ph.req / ph.req_s:.0f}/s, {ph.err} errors, "
                         f"latency p50 {ph.p50:.2f} ms p99 {ph.p99:.2f} ms max {ph.pmax:.1f} ms")
            print(f"{name:7s} {ph.dt:5.1f} s: wakeups {ph.rates['wakeups']:.2f}/s merges {ph.rates['merges']:.2f}/s "
                  f"train steps {ph.rates['train_steps']:.1f}/s frames sent {ph.rates['frames_sent']:.1f}/s | "
                  f"CPU s: peer 0 {ph.peer_cpu:.2f}, load generator {ph.gen_cpu:.2f} | load avg {ph.load:.2f}{extra}",
                  flush=True)
        subprocess.run([a.mycel, "ctl", run_dir, "stop"], capture_output=True, timeout=30)
        try:
            swarm.wait(timeout=60)
        except subprocess.TimeoutExpired:
            swarm.terminate()
            swarm.wait(timeout=30)

        restarts = sum(open(f).read().count("listening socket failed") for f in glob.glob(os.path.join(run_dir, "peer-*.log")))
        idle = [p for p in phases if p.name != "load"]
        loaded = phases[1]
        print()
        ok = True
        for k in ("wakeups", "merges", "train_steps"):
            base = sum(p.rates[k] for p in idle) / len(idle)
            ratio = loaded.rates[k] / base if base else float("nan")
            drift = idle[1].rates[k] / idle[0].rates[k] if idle[0].rates[k] else float("nan")
            print(f"{k:12s} loaded/unloaded = {ratio:.3f} (unloaded {base:.2f}/s; idle-2/idle-1 = {drift:.3f})")
            if k == "wakeups":
                ok = ratio >= 0.95
                wake_ratio = ratio
        print(f"\nrequests: {loaded.req} in {loaded.req_s:.1f} s ({loaded.req / loaded.req_s:.0f}/s asked {a.rate:g}/s), "
              f"{loaded.err} errors; control listener restarts logged by the peers: {restarts}")
        print(f"peer 0 CPU: {loaded.peer_cpu / loaded.dt * 100:.0f}% of a core loaded, "
              f"{sum(p.peer_cpu / p.dt for p in idle) / 2 * 100:.0f}% unloaded; "
              f"load generator: {loaded.gen_cpu / loaded.dt * 100:.0f}% of a core ({os.cpu_count()} cores)")
        print(f"control_load: gossip cycle rate under {a.rate:g} req/s = {wake_ratio:.3f} of unloaded "
              f"({'within' if ok else 'OUTSIDE'} the 5% bound)")
        if a.keep:
            print(f"run folder kept: {run_dir}")
        return 0 if ok else 1
    finally:
        if swarm.poll() is None:
            swarm.terminate()
            try:
                swarm.wait(timeout=30)
            except subprocess.TimeoutExpired:
                swarm.kill()
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
