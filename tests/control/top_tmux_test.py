#!/usr/bin/env python3
"""`mycel top` in a real terminal: tmux (own server socket) runs it against a fake run folder
whose peers are control_fake_peer processes serving the real control endpoint. Checks: one
row per peer, reverse sort (key r), a codec changed with `mycel ctl set` shows, a peer killed
with SIGKILL shows as down while top goes on, q quits with status 0, Ctrl-C too.
Exit 77 (skipped) when tmux is absent."""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mycel", required=True)
    ap.add_argument("--fake-peer", required=True)
    a = ap.parse_args()
    if not shutil.which("tmux"):
        print("SKIP: tmux is not installed (Debian package tmux)")
        return 77
    run = tempfile.mkdtemp(prefix="mycel-top-")
    sock = f"mycel-top-test-{os.getpid()}"
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    peers = []
    try:
        for i in range(3):
            peers.append(subprocess.Popen([a.fake_peer, "--dir", run, "--id", str(i), "--duration", "100"],
                                          stdout=subprocess.DEVNULL))
        deadline = time.time() + 10
        while time.time() < deadline and not all(
                os.path.exists(os.path.join(run, f"control-{i}.json")) for i in range(3)):
            time.sleep(0.05)
        for i in range(3):
            assert os.path.exists(os.path.join(run, f"control-{i}.json")), f"peer {i} wrote no control-{i}.json"

        def start(name, extra=""):
            cmd = f"'{a.mycel}' top '{run}' --interval 0.5 {extra}; echo \"TOP EXITED rc=$?\"; sleep 60"
            subprocess.run(tmux + ["new-session", "-d", "-s", name, "-x", "150", "-y", "40", cmd], check=True,
                           env=dict(os.environ, TERM="xterm"))

        def capture(name):
            return subprocess.run(tmux + ["capture-pane", "-p", "-t", name], check=True, capture_output=True,
                                  text=True).stdout

        def wait_for(name, pred, what, timeout=10):
            end = time.time() + timeout
            text = ""
            while time.time() < end:
                text = capture(name)
                if pred(text):
                    return text
                time.sleep(0.2)
            raise AssertionError(f"{what}: not seen in the pane within {timeout} s:\n{text}")

        def rows(text):
            out = []
            for line in text.splitlines():
                f = line.split()
                if len(f) >= 3 and f[0].isdigit():
                    out.append(f)
            return out

        start("top")
        t = wait_for("top", lambda t: "3/3 peers up" in t and len(rows(t)) == 3 and "B/s" in t, "three peers up")
        print("--- mycel top, three peers:\n" + t)
        assert [r[0] for r in rows(t)] == ["0", "1", "2"], rows(t)
        assert all(r[1] == "running" for r in rows(t)), rows(t)

        subprocess.run(tmux + ["send-keys", "-t", "top", "r"], check=True)
        t = wait_for("top", lambda t: [r[0] for r in rows(t)] == ["2", "1", "0"], "reverse sort by peer")

        ctl = subprocess.run([a.mycel, "ctl", run, "set", "codec.spec=topk:0.01"], capture_output=True, text=True)
        print("--- mycel ctl set:\n" + ctl.stdout + ctl.stderr)
        assert ctl.returncode == 0, ctl.stderr
        t = wait_for("top", lambda t: len(rows(t)) == 3 and all(r[4] == "topk:0.01" for r in rows(t)),
                     "the new codec on every row")
        print("--- after mycel ctl set codec.spec=topk:0.01:\n" + t)
        bad = subprocess.run([a.mycel, "ctl", run, "set", "codec.spec=int9"], capture_output=True, text=True)
        assert bad.returncode == 1 and "refused" in bad.stderr and "codec.spec" in bad.stderr, bad.stderr
        print("--- a refused change:\n" + bad.stderr)

        peers[1].send_signal(signal.SIGKILL)
        peers[1].wait()
        t = wait_for("top", lambda t: "2/3 peers up" in t and any(r[0] == "1" and r[1] == "down" for r in rows(t)),
                     "peer 1 down")
        print("--- peer 1 killed:\n" + t)
        assert "TOP EXITED" not in t

        subprocess.run(tmux + ["send-keys", "-t", "top", "q"], check=True)
        t = wait_for("top", lambda t: "TOP EXITED rc=0" in t, "q quits with status 0")

        start("top2", "--sort acc")
        wait_for("top2", lambda t: "2/3 peers up" in t, "second top up")
        subprocess.run(tmux + ["send-keys", "-t", "top2", "C-c"], check=True)
        wait_for("top2", lambda t: "TOP EXITED rc=0" in t, "Ctrl-C quits with status 0")

        once = subprocess.run([a.mycel, "top", run, "--once", "--interval", "0.3"], capture_output=True, text=True,
                              timeout=30)
        assert once.returncode == 0 and "2/3 peers up" in once.stdout, once.stdout + once.stderr
        print("PASS")
        return 0
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)
        for p in peers:
            if p.poll() is None:
                p.terminate()
                p.wait()
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
