#!/usr/bin/env python3
"""A real Prometheus server (Debian's prometheus) scrapes fake peers' control endpoints
found through the run folder's file_sd list (`mycel ctl RUN targets`), on loopback, with its
own config and data folder; its HTTP API must show the series with the right labels, and the
counters must increase. `promtool check metrics` must pass on the exposition.
Exit 77 (skipped, reason printed) when prometheus is absent."""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mycel", required=True)
    ap.add_argument("--fake-peer", required=True)
    ap.add_argument("--dashboard", required=True, help="scripts/grafana/mycel-dashboard.json")
    a = ap.parse_args()
    with open(a.dashboard) as f:
        dashboard = json.load(f)
    prom = shutil.which("prometheus")
    if not prom:
        print("SKIP: prometheus is not installed (Debian package prometheus)")
        return 77
    work = tempfile.mkdtemp(prefix="mycel-prom-")
    run = os.path.join(work, "run-1")
    os.makedirs(run)
    procs = []
    try:
        # promtool on the exposition format.
        promtool = shutil.which("promtool")
        if promtool:
            text = subprocess.run([a.fake_peer, "--metrics"], check=True, capture_output=True).stdout
            chk = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
            print("promtool check metrics:", chk.returncode, chk.stdout.decode(), chk.stderr.decode())
            assert chk.returncode == 0, chk.stderr.decode() + chk.stdout.decode()
        else:
            print("note: promtool absent, exposition not linted")

        for i in range(2):
            procs.append(subprocess.Popen([a.fake_peer, "--dir", run, "--id", str(i), "--duration", "100"],
                                          stdout=subprocess.DEVNULL))
        end = time.time() + 10
        while time.time() < end and not all(os.path.exists(os.path.join(run, f"control-{i}.json")) for i in range(2)):
            time.sleep(0.05)
        targets = subprocess.run([a.mycel, "ctl", run, "targets"], check=True, capture_output=True, text=True).stdout
        print("file_sd targets:\n" + targets)
        assert len(json.loads(targets)) == 2, targets
        with open(os.path.join(run, "prometheus-targets.json"), "w") as f:
            f.write(targets)
        # The live exposition passes promtool too.
        if promtool:
            url = json.load(open(os.path.join(run, "control-0.json")))["url"]
            live = urllib.request.urlopen(url + "/metrics", timeout=5).read()
            chk = subprocess.run([promtool, "check", "metrics"], input=live, capture_output=True)
            assert chk.returncode == 0, chk.stderr.decode() + chk.stdout.decode()

        port = free_port()
        cfg = os.path.join(work, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: mycel
    scrape_interval: 1s
    file_sd_configs:
      - files: ['{run}/prometheus-targets.json']
        refresh_interval: 1s
""")
        log = open(os.path.join(work, "prometheus.log"), "w")
        procs.append(subprocess.Popen([prom, f"--config.file={cfg}", f"--storage.tsdb.path={work}/data",
                                       f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log))
        api = f"http://127.0.0.1:{port}/api/v1/query?query="

        def query(q):
            with urllib.request.urlopen(api + urllib.parse.quote(q), timeout=5) as r:
                j = json.load(r)
            assert j["status"] == "success", j
            return j["data"]["result"]

        first, end = None, time.time() + 60
        while time.time() < end:
            try:
                res = query("mycel_sent_bytes_total")
                if len(res) == 2:
                    first = res
                    break
            except OSError:
                pass
            time.sleep(0.5)
        if first is None:
            print(open(os.path.join(work, "prometheus.log")).read()[-3000:])
            raise AssertionError("prometheus never had mycel_sent_bytes_total for both peers")
        print("query mycel_sent_bytes_total:\n" + json.dumps(first, indent=1))
        for s in first:
            m = s["metric"]
            assert m["job"] == "mycel" and m["mycel_run"] == "run-1", m
            assert m["peer"] == m["mycel_peer"], m
        def eventually(q, ok, what, timeout=30):
            """Polls a query until ok(result) (scrapes are 1 s apart; a loaded machine delays them)."""
            end, res = time.time() + timeout, None
            while time.time() < end:
                res = query(q)
                if ok(res):
                    return res
                time.sleep(0.5)
            raise AssertionError(f"{what}: {q} gave {res}")

        before = {s["metric"]["peer"]: float(s["value"][1]) for s in first}
        later = eventually("mycel_sent_bytes_total",
                           lambda r: len(r) == 2 and all(float(s["value"][1]) > before[s["metric"]["peer"]] for s in r),
                           "the counters increase")
        after = {s["metric"]["peer"]: float(s["value"][1]) for s in later}
        print("before", before, "after", after)
        rate = eventually("rate(mycel_sent_bytes_total[5s])",
                          lambda r: len(r) == 2 and all(float(s["value"][1]) > 0 for s in r), "a positive rate")
        print("query rate(mycel_sent_bytes_total[5s]):", [(s["metric"]["peer"], s["value"][1]) for s in rate])
        eventually("mycel_link_bandwidth_bytes_per_second", lambda r: len(r) == 2 and all("link" in s["metric"] for s in r),
                   "link bandwidth with its link label")
        eventually("mycel_codec_info", lambda r: len(r) == 2 and all(s["metric"].get("codec") == "int8" for s in r),
                   "the codec info")
        eventually("mycel_eval_seconds_count", lambda r: len(r) == 2, "the histogram's count")

        # A codec change through mycel ctl shows in Prometheus.
        r = subprocess.run([a.mycel, "ctl", run, "set", "codec.spec=topk:0.01"], capture_output=True, text=True)
        print("$ mycel ctl RUN set codec.spec=topk:0.01\n" + r.stdout + r.stderr)
        assert r.returncode == 0, r
        by_codec = "sum by (codec) (rate(mycel_model_sent_bytes_by_codec_total[5s]))"
        res = eventually(by_codec, lambda r: any(s["metric"].get("codec") == "topk:0.01" and float(s["value"][1]) > 0
                                                 for s in r), "topk:0.01 bytes after the change")
        print(f"query {by_codec}:", [(s["metric"]["codec"], s["value"][1]) for s in res])
        eventually("mycel_codec_info", lambda r: len(r) == 2 and all(s["metric"]["codec"] == "topk:0.01" for s in r),
                   "the new codec's info")

        # Every query of the Grafana dashboard returns series.
        exprs = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
        exprs += [("annotation: " + an["name"], an["expr"]) for an in dashboard["annotations"]["list"]]
        assert len(exprs) >= 10, exprs
        for title, e in exprs:
            q = e.replace("$__rate_interval", "5s").replace('=~"$run"', '=~".*"')
            assert "$" not in q, f"an unsubstituted variable in {q}"
            res = eventually(q, lambda r: len(r) > 0, f"dashboard panel '{title}'")
            print(f"dashboard {title!r}: {q} -> " +
                  ", ".join(f"{{{','.join(f'{k}={v}' for k, v in sorted(s['metric'].items()) if k in ('peer', 'codec', 'link'))}}} "
                            f"{s['value'][1]}" for s in res[:4]) + (f" (+{len(res) - 4})" if len(res) > 4 else ""))
        var = dashboard["templating"]["list"][0]["query"]["query"]
        assert var == "label_values(mycel_uptime_seconds, mycel_run)", var
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/label/mycel_run/values", timeout=5) as r:
            values = json.load(r)["data"]
        print("dashboard variable run:", values)
        assert "run-1" in values, values
        print("PASS")
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
