#!/usr/bin/env python3
"""`mycel ctl` against two fake peers (control_fake_peer: the real control endpoint): status,
get, set (valid, refused, without a token), events, stop of one peer, and what ctl says once
that peer is gone."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mycel", required=True)
    ap.add_argument("--fake-peer", required=True)
    a = ap.parse_args()
    run = tempfile.mkdtemp(prefix="mycel-ctl-")
    peers = []

    def ctl(*args, env=None):
        r = subprocess.run([a.mycel, "ctl", run, *args], capture_output=True, text=True, timeout=30, env=env)
        print(f"$ mycel ctl RUN {' '.join(args)}  -> {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    try:
        for i in range(2):
            peers.append(subprocess.Popen([a.fake_peer, "--dir", run, "--id", str(i), "--duration", "60"],
                                          stdout=subprocess.DEVNULL))
        end = time.time() + 10
        while time.time() < end and not all(os.path.exists(os.path.join(run, f"control-{i}.json")) for i in range(2)):
            time.sleep(0.05)
        time.sleep(0.3)

        r = ctl("status")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert set(st) == {"0", "1"} and st["1"]["peer"] == 1 and st["0"]["merges"] > 0, st

        r = ctl("get", "codec.spec", "--peer", "1")
        assert r.returncode == 0 and r.stdout.splitlines() == ["version 1", "codec.spec=int8"], r.stdout

        r = ctl("set", "codec.spec=fp16", "protocol.period_s=2")
        assert r.returncode == 0 and "peer 0: parameters version 2" in r.stdout and "peer 1: parameters version 2" in r.stdout
        r = ctl("get", "protocol.period_s", "--peer", "0")
        assert "protocol.period_s=2" in r.stdout, r.stdout

        r = ctl("set", "protocol.period_s=-1")
        assert r.returncode == 1 and "peer 0 refused: HTTP 400" in r.stderr and "protocol.period_s" in r.stderr
        r = ctl("set", "peers.count=4")
        assert r.returncode == 1 and "not a live parameter" in r.stderr, r.stderr

        # A wrong token: refused with 403, named.
        r = ctl("set", "codec.spec=fp32", "--token", "wrong-token-wrong-token")
        assert r.returncode == 1 and "HTTP 403" in r.stderr, r.stderr
        r = ctl("get", "codec.spec", "--peer", "0")
        assert "codec.spec=fp16" in r.stdout, r.stdout

        r = ctl("events", "--peer", "0")
        assert r.returncode == 0 and "peer_up" in r.stdout and "params: version 2: codec.spec=fp16" in r.stdout, r.stdout

        r = ctl("checkpoint", "--peer", "0")
        assert r.returncode == 1 and "HTTP 501" in r.stderr, r.stderr

        r = ctl("stop", "--peer", "0")
        assert r.returncode == 0 and "stopping" in r.stdout, r.stdout
        peers[0].wait(timeout=10)
        assert peers[0].returncode == 0

        r = ctl("status")
        assert r.returncode == 1 and "peer 0 refused: cannot reach" in r.stderr, r.stderr
        assert '"peer": 1' in r.stdout, r.stdout

        r = ctl("status", "--peer", "7")
        assert r.returncode == 2 and "peer 7 has no control endpoint" in r.stderr, r.stderr
        r = subprocess.run([a.mycel, "ctl", os.path.join(run, "nothing-here"), "status"], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        print("PASS")
        return 0
    finally:
        for p in peers:
            if p.poll() is None:
                p.terminate()
                p.wait()
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
