#!/usr/bin/env python3
"""End to end on real peers: `mycel run` (3 peers gossiping a logistic regression on the digits
CSV, control endpoints on), then `mycel ctl RUN set codec.spec=topk:0.01` mid-run. Checked:
- a refused change (codec.spec=topk:7) names each peer and the key, exits 1, changes no
  version, and is counted in each peer's mycel_control_refused_total;
- ctl set answers for every peer with the new version, and exits 0;
- each peer's GET /params shows the new codec, and its GET /metrics shows
  mycel_codec_info{codec="topk:0.01"} and model bytes sent under codec="topk:0.01";
- `mycel top --once` shows the new codec on every row;
- in each peer's CSV, params_version and codec change, and the model bytes sent per second after
  the change are under half of those before (int8 of 650 parameters against 1% of them);
- `mycel ctl stop` ends the run cleanly (exit 0, every peer-ID.json written);
- scripts/plot.py (when matplotlib is there) writes its plots of the run, the change marked.
With --capture DIR (not used by ctest; for a transcript), it also runs `mycel top RUN` in tmux
and a real Prometheus scraping the run's file_sd list, and writes into DIR the pane before and
after the change (top-before.txt, top-after.txt) and the Prometheus query results
(prometheus.txt; each query of scripts/grafana/mycel-dashboard.json, $run as .*).
Exit 77 (skipped, reason printed) when the digits data or UCX loopback is absent.
  live_codec_test.py --mycel BIN --source DIR [--keep DIR] [--capture DIR]"""
import argparse
import csv
import glob
import json
import os
import socket
import urllib.parse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request


def get(url, path):
    with urllib.request.urlopen(url + path, timeout=10) as r:
        return r.read().decode()


class Capture:
    """`mycel top` in tmux and a Prometheus server on the run (--capture)."""

    def __init__(self, out, mycel, run, source):
        self.out, self.procs = out, []
        os.makedirs(out, exist_ok=True)
        self.tmux = ["tmux", "-L", f"mycel-live-{os.getpid()}", "-f", "/dev/null"]
        subprocess.run(self.tmux + ["new-session", "-d", "-s", "top", "-x", "132", "-y", "16",
                                    f"{mycel} top {run}"], check=True)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        work = os.path.join(out, "prometheus")
        os.makedirs(work, exist_ok=True)
        cfg = os.path.join(work, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: mycel
    scrape_interval: 1s
    file_sd_configs:
      - files: ['{run}/prometheus-targets.json']
        refresh_interval: 1s
""")
        log = open(os.path.join(work, "prometheus.log"), "w")
        self.procs.append(subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={work}/data",
                                            f"--web.listen-address=127.0.0.1:{self.port}"], stdout=log, stderr=log))
        with open(os.path.join(source, "scripts/grafana/mycel-dashboard.json")) as f:
            self.dashboard = json.load(f)

    def pane(self, name):
        text = subprocess.run(self.tmux + ["capture-pane", "-p", "-t", "top"], capture_output=True, text=True).stdout
        with open(os.path.join(self.out, name), "w") as f:
            f.write(text)
        print(f"--- {name}\n{text}")

    def query(self, q):
        u = f"http://127.0.0.1:{self.port}/api/v1/query?query=" + urllib.parse.quote(q)
        with urllib.request.urlopen(u, timeout=5) as r:
            return json.load(r)["data"]["result"]

    def prometheus(self):
        lines = []
        exprs = [(p["title"], t["expr"]) for p in self.dashboard["panels"] for t in p["targets"]]
        exprs += [("annotation", an["expr"]) for an in self.dashboard["annotations"]["list"]]
        exprs.append(("raw", "mycel_model_sent_bytes_by_codec_total"))
        for title, e in exprs:
            q = e.replace("$__rate_interval", "5s").replace('=~"$run"', '=~".*"')
            try:
                res = self.query(q)
            except OSError as err:
                res = f"error {err}"
            lines.append(f"# {title}\n{q}")
            for s in res if isinstance(res, list) else []:
                m = {k: v for k, v in s["metric"].items() if k in ("peer", "codec", "link")}
                lines.append(f"  {m} {s['value'][1]}")
            if not isinstance(res, list) or not res:
                lines.append(f"  (no series) {res if not isinstance(res, list) else ''}")
        text = "\n".join(lines) + "\n"
        with open(os.path.join(self.out, "prometheus.txt"), "w") as f:
            f.write(text)
        print("--- prometheus.txt\n" + text)

    def close(self):
        subprocess.run(self.tmux + ["send-keys", "-t", "top", "q"], capture_output=True)
        time.sleep(0.5)
        subprocess.run(self.tmux + ["kill-server"], capture_output=True)
        for p in self.procs:
            p.terminate()
            p.wait(timeout=20)


def rate_before_after(rows, key):
    """Bytes per second of counter `key` over the rows before the codec changed and over those
    from the first changed row on (the change happened between two rows)."""
    first = next((i for i, r in enumerate(rows) if r["codec"] != rows[0]["codec"]), None)
    if first is None or first < 2 or len(rows) - first < 2:
        return None
    t = [float(r["time_s"]) for r in rows]
    v = [float(r[key]) for r in rows]
    before = (v[first - 1] - v[0]) / (t[first - 1] - t[0])
    after = (v[-1] - v[first]) / (t[-1] - t[first])
    return before, after, t[first]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mycel", required=True)
    ap.add_argument("--source", required=True, help="the source tree (data/, examples/, scripts/)")
    ap.add_argument("--keep", help="copy the run folder here (the plots included)")
    ap.add_argument("--capture", help="also capture `mycel top` (tmux) and Prometheus query results here")
    a = ap.parse_args()
    data = os.path.join(a.source, "data/digits/digits.csv.gz")
    if not os.path.exists(data):
        print(f"SKIP: {data} is absent (scripts/fetch-data.sh digits)")
        return 77
    work = tempfile.mkdtemp(prefix="mycel-live-codec-")
    swarm = None
    cap = None
    try:
        cmd = [a.mycel, "run", os.path.join(a.source, "examples/digits-csv.yaml"),
               "--set", f"data.dataset=csv:{data}", "--set", "peers.count=3", "--set", "protocol.period_s=0.2",
               "--set", "eval.every_s=1", "--set", "run.duration_s=50", "--set", f"output={work}",
               "--set", "device=cpu", "--peer-threads", "1"]
        print("$ " + " ".join(cmd), flush=True)
        log = open(os.path.join(work, "mycel-run.log"), "w")
        swarm = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        end = time.time() + 30
        run = None
        while time.time() < end and swarm.poll() is None:
            eps = glob.glob(os.path.join(work, "*", "control-*.json"))
            if len(eps) == 3:
                run = os.path.dirname(eps[0])
                break
            time.sleep(0.1)
        if run is None:
            text = open(os.path.join(work, "mycel-run.log")).read()
            if "ucx" in text.lower() and swarm.poll() is not None:
                print("SKIP: mycel run could not start its UCX peers:\n" + text[-2000:])
                return 77
            raise AssertionError("the 3 peers never wrote control-ID.json:\n" + text[-3000:])
        urls = {json.load(open(p))["peer"]: json.load(open(p))["url"] for p in glob.glob(os.path.join(run, "control-*.json"))}
        # A baseline under int8: a few evaluation rows (one a second) with models sent.
        end = time.time() + 20
        while time.time() < end:
            sent = [json.loads(get(u, "/status"))["model_bytes_sent"] for u in urls.values()]
            rows = [len(open(p).readlines()) for p in glob.glob(os.path.join(run, "peer-*.csv"))]
            if all(s > 0 for s in sent) and len(rows) == 3 and min(rows) >= 6:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("no baseline: models sent or CSV rows missing")
        v0 = {p: json.loads(get(u, "/params"))["version"] for p, u in urls.items()}
        if a.capture:
            cap = Capture(a.capture, a.mycel, run, a.source)
            time.sleep(6)  # Prometheus scrapes the int8 baseline; top has two samples
            cap.pane("top-before.txt")

        # A refused change: each peer named with the key, nothing changed, the refusal counted.
        r = subprocess.run([a.mycel, "ctl", run, "set", "codec.spec=topk:7"], capture_output=True, text=True,
                           timeout=30)
        print("$ mycel ctl RUN set codec.spec=topk:7\n" + r.stdout + r.stderr, flush=True)
        assert r.returncode == 1, r
        for p in urls:
            assert f"peer {p} refused: HTTP 400" in r.stderr and "codec.spec" in r.stderr, (p, r.stderr)
            assert json.loads(get(urls[p], "/params"))["version"] == v0[p]
        end = time.time() + 10
        while not all(f'mycel_control_refused_total{{peer="{p}"}} 1\n' in get(u, "/metrics") for p, u in urls.items()):
            assert time.time() < end, "the refusal is not counted in /metrics"
            time.sleep(0.2)

        r = subprocess.run([a.mycel, "ctl", run, "set", "codec.spec=topk:0.01"], capture_output=True, text=True,
                           timeout=30)
        print("$ mycel ctl RUN set codec.spec=topk:0.01\n" + r.stdout + r.stderr, flush=True)
        assert r.returncode == 0, r
        for p, u in urls.items():
            j = json.loads(get(u, "/params"))
            assert j["params"]["codec.spec"] == "topk:0.01" and j["version"] == v0[p] + 1, (p, j, v0)

        # The next cycles send topk:0.01: the codec's bytes show in /metrics.
        end = time.time() + 20
        while True:
            texts = {p: get(u, "/metrics") for p, u in urls.items()}
            ok = all('mycel_codec_info{peer="%d",codec="topk:0.01"} 1' % p in t for p, t in texts.items())
            by_codec = {p: [l for l in t.splitlines() if 'codec="topk:0.01"' in l and not l.startswith("mycel_codec_info")]
                        for p, t in texts.items()}
            if ok and all(by_codec[p] and float(by_codec[p][0].split()[-1]) > 0 for p in by_codec):
                break
            assert time.time() < end, f"/metrics never showed topk:0.01 bytes: {by_codec}"
            time.sleep(0.5)
        for p in sorted(by_codec):
            print(f"peer {p} /metrics: {by_codec[p][0]}")
        top = subprocess.run([a.mycel, "top", run, "--once"], capture_output=True, text=True, timeout=30)
        print("$ mycel top RUN --once\n" + top.stdout, flush=True)
        assert top.returncode == 0, top
        assert top.stdout.count("topk:0.01") >= 3, top.stdout

        time.sleep(6)  # after rows under the new codec
        if cap:
            cap.pane("top-after.txt")
            cap.prometheus()
            cap.close()
            cap = None
        r = subprocess.run([a.mycel, "ctl", run, "stop"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r
        rc = swarm.wait(timeout=40)
        assert rc == 0, f"mycel run exited {rc}:\n" + open(os.path.join(work, "mycel-run.log")).read()[-3000:]
        for p in urls:
            json.load(open(os.path.join(run, f"peer-{p}.json")))

        for p in sorted(urls):
            with open(os.path.join(run, f"peer-{p}.csv")) as f:
                rows = list(csv.DictReader(f))
            assert rows[0]["codec"] == "int8", rows[0]
            assert rows[-1]["codec"] == "topk:0.01" and int(rows[-1]["params_version"]) == v0[p] + 1, rows[-1]
            ba = rate_before_after(rows, "model_bytes_sent")
            assert ba, f"peer {p}: too few rows around the change ({len(rows)} rows)"
            before, after, t = ba
            print(f"peer {p}: model bytes/s {before:.0f} under int8, {after:.0f} under topk:0.01 (changed at {t:.1f} s)")
            assert after < 0.5 * before, (p, before, after)

        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("note: python3-matplotlib absent, plot.py not run")
        else:
            r = subprocess.run([sys.executable, os.path.join(a.source, "scripts/plot.py"), run], capture_output=True,
                               text=True, timeout=120)
            print(r.stdout + r.stderr)
            assert r.returncode == 0, r
            assert "change at" in r.stdout and "topk:0.01" in r.stdout, r.stdout
            for png in ("accuracy_vs_time.png", "bytes_per_s.png"):
                assert os.path.getsize(os.path.join(run, png)) > 0, png
        if a.keep:
            shutil.copytree(run, a.keep, dirs_exist_ok=True)
            print(f"run folder copied to {a.keep}")
        print("PASS")
        return 0
    finally:
        if cap:
            cap.close()
        if swarm and swarm.poll() is None:
            swarm.terminate()
            try:
                swarm.wait(timeout=20)
            except subprocess.TimeoutExpired:
                swarm.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
