#!/usr/bin/python3
"""Fault injection on a real swarm: N `mycel peer` processes gossiping over UCX on loopback,
30% of them killed with SIGKILL at random (seeded) moments in several rounds, each restarted with
`--resume` on its own address after a random delay. Some kills are timed on a checkpoint write:
the peer is killed as soon as inotify shows its `peer-ID-SEQ.ckpt.tmp.PID` file created.

Checked (exit 1 if any fails):
- every kill is followed by a resume that says which checkpoint it used ("resuming from ...");
- a resumed peer never starts from the initial model: the checkpoint's age is > 0 and the first
  evaluation after the restart has age >= the checkpoint's age;
- every checkpoint file left on disk loads: each one alone in a folder, read by
  `mycel peer --resume` itself (its "resuming from" line, no second parser here);
- every peer's last process exits 0 and leaves a non-empty peer-ID.json;
- the swarm recovers: the mean accuracy of the last seconds is within --recover-tol of the level
  before the first kill.
Reported: kills, resumes, per resume the checkpoint used and age/accuracy at the checkpoint and at
the first evaluation after the restart, the swarm's mean accuracy over time (1 s bins on the
script's wall clock), the worst dip during the kills and the time to recover.
Optional: --slow K stops and continues K peers (SIGSTOP/SIGCONT cycles) the whole run, and checks
they and the swarm keep learning.

Exit 77 (skipped, reason printed) when the data set or UCX is missing.
  scripts/faults.py [--mycel build/cpu/bin/mycel] [--peers 8] [--duration 60] [--seed 1] ...
"""
import argparse
import ctypes
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

IN_CREATE = 0x100
RESUME_RE = re.compile(r"resuming from (\S+) \(checkpoint (\d+), age (\d+), ([0-9.]+) s into the run\)")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Inotify:
    """IN_CREATE events of one folder, through libc (no package needed); None if unavailable."""

    def __init__(self, path):
        self.fd = -1
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK)
            if fd < 0 or libc.inotify_add_watch(fd, path.encode(), IN_CREATE) < 0:
                return
            self.fd = fd
        except OSError:
            pass

    def names(self):
        out = []
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return out
        i = 0
        while i + 16 <= len(buf):
            _, _, _, n = struct.unpack_from("iIII", buf, i)
            out.append(buf[i + 16:i + 16 + n].rstrip(b"\0").decode(errors="replace"))
            i += 16 + n
        return out


def read_csv(path):
    """Rows of peer-ID.csv as dicts (a row cut by a kill, with the wrong field count, is skipped)."""
    rows = []
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except OSError:
        return rows, 0
    if not lines:
        return rows, 0
    names = lines[0].split(",")
    for line in lines[1:]:
        v = line.split(",")
        if len(v) != len(names):
            rows.append(None)
            continue
        r = {}
        for k, x in zip(names, v):
            try:
                r[k] = float(x)
            except ValueError:
                r[k] = x
        ok = all(isinstance(r.get(k), float) for k in ("time_s", "age", "test_accuracy"))
        rows.append(r if ok else None)
    return rows, len(lines)


class Swarm:
    def __init__(self, a, work):
        self.a, self.work = a, work
        self.out = os.path.join(work, "out")
        os.makedirs(self.out)
        self.cfg = os.path.join(work, "c.yaml")
        self.addr = [f"ucx://127.0.0.1:{free_port()}" for _ in range(a.peers)]
        with open(self.cfg, "w") as f:
            f.write(f"""name: faults
data:
  dataset: {a.dataset}
  partition: iid
model: logreg
train:
  lr: 0.1
  local_steps: 2
  momentum: 0.5
protocol:
  period_s: {a.period}
  peer_timeout_s: 2
peers:
  count: {a.peers}
run:
  duration_s: {a.duration}
eval:
  every_s: 1
checkpoint:
  every_s: 1
  keep: 2
output: {self.out}
""")
        self.outs = [self.out] * a.peers  # one peer may have its own (full) folder
        self.proc = [None] * a.peers
        self.logs = [[] for _ in range(a.peers)]     # one log file per process of each peer
        self.segments = [[] for _ in range(a.peers)]  # (first csv line, wall start, run-clock start)

    def csv_lines(self, i):
        try:
            with open(os.path.join(self.outs[i], f"peer-{i}.csv")) as f:
                return f.read().count("\n")
        except OSError:
            return 0

    def start(self, i, resume, t0):
        n = len(self.logs[i])
        log = os.path.join(self.work, f"p{i}.{n}.log")
        self.logs[i].append(log)
        args = [self.a.mycel, "--log-level", "warn", "--threads", "1", "peer", "--config", self.cfg, "--id", str(i),
                "--listen", self.addr[i], "--seeds", ",".join(self.addr), "--out", self.outs[i]]
        if resume:
            args += ["--resume", self.out]
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", MYCEL_DATA=self.a.data)
        with open(log, "w") as f:
            self.proc[i] = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env)
        self.segments[i].append([max(self.csv_lines(i), 1), time.time() - t0, None])


def check_checkpoint(a, cfg, path, work):
    """Loads one checkpoint with `mycel peer --resume` (the file alone in a folder); returns
    (ok, message)."""
    name = os.path.basename(path)
    m = re.match(r"peer-(\d+)-(\d+)\.ckpt$", name)
    d = tempfile.mkdtemp(dir=work, prefix="ck-")
    shutil.copy(path, os.path.join(d, name))
    args = [a.mycel, "--log-level", "warn", "--threads", "1", "peer", "--config", cfg, "--id", m.group(1),
            "--listen", f"ucx://127.0.0.1:{free_port()}", "--seeds", "", "--out", os.path.join(d, "o"),
            "--resume", d, "--set", "checkpoint.every_s=0"]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", MYCEL_DATA=a.data)
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    text, ok = "", False
    deadline = time.time() + 30
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        text += line
        if "resuming from" in line:
            ok = os.path.join(d, name) in line
            break
    p.send_signal(signal.SIGTERM)
    try:
        rest, _ = p.communicate(timeout=20)
        text += rest
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
    msg = RESUME_RE.search(text)
    shutil.rmtree(d, ignore_errors=True)
    return ok, (msg.group(0) if msg else text.strip().splitlines()[-1:] or ["(no output)"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--mycel", default=os.path.join(here, "..", "build", "cpu", "bin", "mycel"))
    ap.add_argument("--data", default=os.environ.get("MYCEL_DATA") or os.path.join(here, "..", "data"))
    ap.add_argument("--dataset", default="spambase", help="spambase, or csv:PATH (e.g. the digits CSV)")
    ap.add_argument("--peers", type=int, default=8)
    ap.add_argument("--duration", type=float, default=60, help="run.duration_s of the swarm")
    ap.add_argument("--period", type=float, default=0.3, help="protocol.period_s")
    ap.add_argument("--fraction", type=float, default=0.3, help="share of the peers killed in each round")
    ap.add_argument("--warmup", type=float, default=8, help="seconds before the first kill round")
    ap.add_argument("--every", type=float, default=6, help="seconds between kill rounds")
    ap.add_argument("--quiet-tail", type=float, default=None,
                    help="seconds without kills at the end (default: 30%% of the duration, >= 8)")
    ap.add_argument("--delay", default="0.5,3", help="restart delay range in seconds, MIN,MAX")
    ap.add_argument("--ckpt-share", type=float, default=0.5, help="share of the kills timed on a checkpoint write")
    ap.add_argument("--slow", type=int, default=0, help="peers CPU-starved with SIGSTOP/SIGCONT cycles")
    ap.add_argument("--full-disk", action="store_true",
                    help="the last peer's run folder on a 1 MB tmpfs (needs root), filled mid-run")
    ap.add_argument("--recover-tol", type=float, default=0.03)
    ap.add_argument("--ucx", default="", help="ON/OFF from CMake (MYCEL_HAVE_UCX); OFF skips")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", help="keep the work folder here")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    a.mycel = os.path.abspath(a.mycel)
    a.data = os.path.abspath(a.data)
    if a.ucx and a.ucx.upper() in ("OFF", "0", "FALSE", "NO"):
        print("skipped: mycel was built without UCX (peer processes need it)")
        return 77
    if a.dataset == "spambase" and not os.path.exists(os.path.join(a.data, "spambase")):
        print(f"skipped: spambase missing in {a.data}: run scripts/fetch-data.sh spambase")
        return 77
    if not os.access(a.mycel, os.X_OK):
        print(f"skipped: mycel not built at {a.mycel}")
        return 77
    lo, hi = (float(x) for x in a.delay.split(","))
    tail = a.quiet_tail if a.quiet_tail is not None else max(8.0, 0.3 * a.duration)
    rng = random.Random(a.seed)
    work = a.keep or tempfile.mkdtemp(prefix="mycel-faults-")
    if a.keep:
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
    sw = Swarm(a, work)
    ino = Inotify(sw.out)
    failures = []

    def fail(msg):
        failures.append(msg)
        print("FAIL: " + msg, flush=True)

    # The plan: rounds of kills, each on round(fraction * N) peers at random moments of the round.
    per_round = max(1, round(a.fraction * a.peers))
    slow = list(range(a.peers - a.slow, a.peers)) if a.slow else []
    full_peer, full_dir, fill_at = None, None, None
    if a.full_disk:
        full_peer = a.peers - a.slow - 1
        full_dir = os.path.join(work, "full")
        os.makedirs(full_dir)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", full_dir], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"full-disk case not run: cannot mount a tmpfs: {r.stderr.strip()}")
            full_peer = None
        else:
            sw.outs[full_peer] = full_dir
            fill_at = a.warmup / 2
    kill_pool = [i for i in range(a.peers) if i not in slow and i != full_peer]
    rounds = []
    t = a.warmup
    while t < a.duration - tail:
        rounds.append(t)
        t += a.every
    events = []  # (time, kind, peer, mode)
    for r in rounds:
        for p in rng.sample(kill_pool, min(per_round, len(kill_pool))):
            mode = "ckpt" if rng.random() < a.ckpt_share else "random"
            events.append((r + rng.uniform(0, a.every * 0.5), "kill", p, mode))
    events.sort()
    print(f"faults: {a.peers} peers, {a.dataset}, {a.duration:.0f} s, {len(rounds)} kill rounds of {per_round} "
          f"peer(s) (every {a.every:.0f} s from {a.warmup:.0f} s), restart after {lo}-{hi} s, seed {a.seed}, "
          f"work folder {work}" + (f", slow peers {slow}" if slow else ""), flush=True)

    t0 = time.time()
    for i in range(a.peers):
        sw.start(i, False, t0)
    kills, restarts = [], []  # restarts: (peer, wall time)
    armed = {}  # peer -> (deadline, kill record) for checkpoint-timed kills
    pending = []  # (time, peer) restarts due
    down = set()
    slow_state, next_slow = False, 0.0
    skipped = 0  # planned kills of a peer down or restarted less than 2 s before

    def do_kill(p, mode, note, writing=None):
        pr = sw.proc[p]
        pr.send_signal(signal.SIGKILL)
        pr.wait()
        now = time.time() - t0
        down.add(p)
        seg = sw.segments[p][-1]
        seg[2] = sw.csv_lines(p)  # the last line of this process
        kills.append({"peer": p, "t": round(now, 2), "mode": mode, "note": note, "rc": pr.returncode,
                      "instance": len(sw.logs[p]) - 1, "writing": writing})
        pending.append((now + rng.uniform(lo, hi), p))
        print(f"  {now:6.2f} s  kill -9 peer {p} ({mode}{': ' + note if note else ''})", flush=True)

    while True:
        now = time.time() - t0
        # Kills that are due; a peer already down or just restarted (< 2 s) is left out.
        while events and events[0][0] <= now:
            _, _, p, mode = events.pop(0)
            if p in down or p in armed or (sw.segments[p] and now - sw.segments[p][-1][1] < 2.0):
                skipped += 1
                continue
            if mode == "ckpt" and ino.fd >= 0:
                armed[p] = now + 3.0
            else:
                do_kill(p, "random", "")
        # Checkpoint-timed kills: the writer's temporary file just appeared.
        if ino.fd >= 0:
            r, _, _ = select.select([ino.fd], [], [], 0.005)
            if r:
                for name in ino.names():
                    m = re.match(r"peer-(\d+)-(\d+)\.ckpt\.tmp\.\d+$", name)
                    if m and int(m.group(1)) in armed:
                        p = int(m.group(1))
                        del armed[p]
                        do_kill(p, "ckpt", f"at the creation of {name}", int(m.group(2)))
        else:
            time.sleep(0.005)
        now = time.time() - t0
        for p in [p for p, d in armed.items() if d <= now]:
            del armed[p]
            do_kill(p, "random", "no checkpoint write seen in 3 s")
        for item in [x for x in pending if x[0] <= now]:
            pending.remove(item)
            _, p = item
            sw.start(p, True, t0)
            down.discard(p)
            restarts.append((p, now))
            print(f"  {now:6.2f} s  restart peer {p} --resume", flush=True)
        # Slow peers: stopped 0.8 s out of every second.
        if slow and now >= next_slow:
            for p in slow:
                if sw.proc[p].poll() is None:
                    sw.proc[p].send_signal(signal.SIGCONT if slow_state else signal.SIGSTOP)
            slow_state = not slow_state
            next_slow = now + (0.2 if not slow_state else 0.8)
        if fill_at is not None and now >= fill_at:
            fill_at = None
            try:
                with open(os.path.join(full_dir, "filler"), "wb") as f:
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()
            except OSError as e:
                print(f"  {now:6.2f} s  peer {full_peer}'s folder filled ({e.strerror})", flush=True)
        # A peer that exits on its own: the end of its run (or a failure, seen below).
        if not events and not armed and not pending and \
                not any(sw.proc[p].poll() is None for p in slow):
            break
        if now > a.duration + 60:
            fail("the kill plan did not finish in time")
            break
    for p in slow:
        if sw.proc[p].poll() is None:
            sw.proc[p].send_signal(signal.SIGCONT)
    # Every peer's last process ends on its own at run.duration_s of its run clock.
    deadline = time.time() + a.duration + 60
    for i in range(a.peers):
        try:
            rc = sw.proc[i].wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            sw.proc[i].kill()
            rc = sw.proc[i].wait()
            fail(f"peer {i} did not stop by itself (killed)")
        sw.segments[i][-1][2] = None
        if i == full_peer:
            full_rc = rc
            continue
        if rc != 0:
            with open(sw.logs[i][-1]) as f:
                fail(f"peer {i}'s last process exited {rc}: {f.read()[-500:]}")
        try:
            with open(os.path.join(sw.out, f"peer-{i}.json")) as f:
                json.load(f)
        except (OSError, ValueError) as e:
            fail(f"peer-{i}.json missing or not JSON: {e}")
    t_end = time.time() - t0
    full_report = None
    if full_peer is not None:
        # Exit non-zero naming the failure, or 0 with whole results; never an empty result file.
        with open(sw.logs[full_peer][-1]) as f:
            log = f.read()
        files = {n: os.path.getsize(os.path.join(full_dir, n)) for n in os.listdir(full_dir) if n != "filler"}
        empty = [n for n, z in files.items() if z == 0 and not n.endswith(".log")]
        if empty:
            fail(f"full disk: empty result file(s) {empty}")
        named = [l for l in log.splitlines() if "space" in l.lower() or "cannot" in l.lower()]
        if full_rc != 0 and not named:
            fail(f"full disk: peer {full_peer} exited {full_rc} without naming the failure: {log[-400:]}")
        jp = os.path.join(full_dir, f"peer-{full_peer}.json")
        if os.path.exists(jp):
            try:
                with open(jp) as f:
                    json.load(f)
            except ValueError as e:
                fail(f"full disk: peer-{full_peer}.json is not whole JSON: {e}")
        csvp = os.path.join(full_dir, f"peer-{full_peer}.csv")
        csv_tail = ""
        if os.path.exists(csvp):
            with open(csvp, "rb") as f:
                data = f.read()
            csv_tail = "whole rows" if data.endswith(b"\n") else "ends in the middle of a row"
        ck_fail = sum("checkpoint failed" in l for l in log.splitlines())
        shutil.copytree(full_dir, os.path.join(work, "full-left"), ignore=shutil.ignore_patterns("filler"))
        full_report = (full_rc, named[-1] if named else "", files, csv_tail, ck_fail)
        subprocess.run(["umount", full_dir])
    if ino.fd < 0:
        print("note: inotify unavailable: every kill was at a random moment")

    # ---- Resumes: each restart's log says which checkpoint it used.
    csv = [read_csv(os.path.join(sw.outs[i], f"peer-{i}.csv"))[0] if i != full_peer else [] for i in range(a.peers)]
    resumes = []
    for k in kills:
        p, inst = k["peer"], k["instance"]
        if inst + 1 >= len(sw.logs[p]):
            fail(f"peer {p} killed at {k['t']} s was not restarted")
            continue
        with open(sw.logs[p][inst + 1]) as f:
            text = f.read()
        m = RESUME_RE.search(text)
        row = {"peer": p, "killed_s": k["t"], "mode": k["mode"]}
        if not m:
            fail(f"peer {p}'s restart after the kill at {k['t']} s did not resume: {text[-400:]}")
            resumes.append(row)
            continue
        ck_path, ck_seq, ck_age, ck_t = m.group(1), int(m.group(2)), int(m.group(3)), float(m.group(4))
        row.update(checkpoint=os.path.basename(ck_path), ckpt_age=ck_age, ckpt_t=ck_t)
        if k["writing"] is not None:
            # Killed at the creation of checkpoint N's temporary file: N never completed when the
            # resume used N-1 (the kill landed in the write), or the write finished first.
            row["mid_write"] = ck_seq < k["writing"]
            if ck_seq > k["writing"]:
                fail(f"peer {p} resumed from {row['checkpoint']}, newer than the one being written at the kill")
        # Rows of the killed process (up to the kill) and of the restarted one (after it).
        first_line, _, end_line = sw.segments[p][inst]
        before = [r for r in csv[p][first_line - 1:end_line - 1] if r]
        nxt = sw.segments[p][inst + 1]
        after = [r for r in csv[p][nxt[0] - 1:(nxt[2] - 1) if nxt[2] else None] if r]
        at = [r for r in before if r["time_s"] <= ck_t + 1e-6]
        if at:
            row.update(acc_at_ckpt=at[-1]["test_accuracy"], age_at_ckpt_row=at[-1]["age"])
        if after:
            row.update(first_after_age=after[0]["age"], first_after_acc=after[0]["test_accuracy"],
                       first_after_t=after[0]["time_s"])
            if after[0]["age"] < ck_age:
                fail(f"peer {p}: first evaluation after the resume has age {after[0]['age']:.0f} < {ck_age} "
                     f"in {row['checkpoint']}")
        elif nxt[2] is not None and nxt[2] <= nxt[0]:
            row["note"] = "killed again before its first evaluation"
        else:
            fail(f"peer {p}: no evaluation after the resume from {row['checkpoint']}")
        if ck_age == 0:
            fail(f"peer {p} resumed from {row['checkpoint']} with age 0 (the initial model)")
        resumes.append(row)

    # ---- Temporary files left by writers killed mid-write, and every checkpoint loads.
    left = sorted(os.listdir(sw.out))
    tmps = [n for n in left if ".ckpt.tmp." in n]
    ckpts = [n for n in left if re.match(r"peer-\d+-\d+\.ckpt$", n)]
    loaded = 0
    for n in ckpts:
        ok, msg = check_checkpoint(a, sw.cfg, os.path.join(sw.out, n), work)
        loaded += ok
        if not ok:
            fail(f"checkpoint {n} does not load: {msg}")
    # Checkpoints that a resume used were loaded by mycel then too.

    # ---- The swarm's mean accuracy over time, on the script's wall clock (1 s bins). A row's
    # wall time: its process's start + (time_s - the run clock at that start).
    bins = {}
    for p in range(a.peers):
        for si, (first, wall0, end) in enumerate(sw.segments[p]):
            rows = [r for r in csv[p][first - 1:(end - 1) if end else None] if r]
            if not rows:
                continue
            clock0 = 0.0
            if si > 0:
                m = None
                with open(sw.logs[p][si]) as f:
                    m = RESUME_RE.search(f.read())
                clock0 = float(m.group(4)) if m else rows[0]["time_s"]
            for r in rows:
                b = int(wall0 + (r["time_s"] - clock0))
                bins.setdefault(b, []).append(r["test_accuracy"])
    series = sorted((b, sum(v) / len(v), len(v)) for b, v in bins.items())
    first_kill = min((k["t"] for k in kills), default=a.warmup)
    last_restart = max((t for _, t in restarts), default=first_kill)
    pre = [m for b, m, _ in series if first_kill - 4 <= b < first_kill]
    pre_level = sum(pre) / len(pre) if pre else float("nan")
    during = [(b, m) for b, m, _ in series if first_kill <= b <= last_restart + 3]
    worst = min(during, key=lambda x: x[1]) if during else (None, float("nan"))
    recovered_at = None
    for b, m, _ in series:
        if worst[0] is not None and b >= worst[0] and m >= pre_level - 0.01:
            recovered_at = b
            break
    full = [m for b, m, n in series if n == a.peers - (full_peer is not None)]  # bins where every peer reported
    final = full[-5:]
    final_level = sum(final) / len(final) if final else float("nan")
    if not final or final_level < pre_level - a.recover_tol:
        fail(f"the swarm did not recover: {final_level:.4f} at the end against {pre_level:.4f} before the kills")
    slow_report = []
    for p in slow:
        rows = [r for r in csv[p] if r]
        if len(rows) < 2 or rows[-1]["age"] <= rows[0]["age"]:
            fail(f"slow peer {p} did not learn (age {rows[0]['age'] if rows else '-'} -> "
                 f"{rows[-1]['age'] if rows else '-'})")
        else:
            slow_report.append((p, rows[0]["test_accuracy"], rows[-1]["test_accuracy"], rows[-1]["age"]))

    # ---- Report.
    print(f"\nkills: {len(kills)} ({sum(k['mode'] == 'ckpt' for k in kills)} at the creation of a checkpoint's "
          f"temporary file, {sum(1 for r in resumes if r.get('mid_write'))} of them before that checkpoint "
          f"was complete; {skipped} planned kill(s) left out: the peer was down or restarted < 2 s before), "
          f"resumes: {sum(1 for r in resumes if 'checkpoint' in r)}, temporary files left by killed writers: "
          f"{len(tmps)}, checkpoints on disk: {len(ckpts)}, loaded by mycel: {loaded}/{len(ckpts)}")
    print("\n| peer | killed at s | mode | checkpoint used | ckpt age | ckpt s | acc at ckpt | first eval after: age | acc |"
          " mid-write |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in resumes:
        def f(k, fmt="{:.4f}"):
            return fmt.format(r[k]) if k in r else "-"
        print(f"| {r['peer']} | {r['killed_s']:.2f} | {r['mode']} | {r.get('checkpoint', 'NONE')} | {f('ckpt_age', '{}')} "
              f"| {f('ckpt_t', '{:.1f}')} | {f('acc_at_ckpt')} | {f('first_after_age', '{:.0f}')} | "
              f"{f('first_after_acc')} | {'-' if 'mid_write' not in r else ('yes' if r['mid_write'] else 'no')} |"
              + (f" {r['note']}" if "note" in r else ""))
    print("\nswarm mean accuracy (1 s bins, wall clock; peers reporting):")
    line = []
    for b, m, n in series:
        mark = "K" if any(int(k["t"]) == b for k in kills) else " "
        line.append(f"{b:3d}s {m:.3f}({n}){mark}")
    for i in range(0, len(line), 6):
        print("  " + "  ".join(line[i:i + 6]))
    if worst[0] is not None and worst[1] >= pre_level - 0.01:
        rec = "never below pre - 0.01"
    elif recovered_at is not None:
        rec = f"{recovered_at - worst[0]:.0f} s after the worst bin ({recovered_at - first_kill:.1f} s after the first kill)"
    else:
        rec = "not within the run"
    print(f"\nbefore the first kill ({first_kill:.1f} s): {pre_level:.4f}; worst dip during the kills: "
          f"{worst[1]:.4f} at {worst[0]} s ({worst[1] - pre_level:+.4f}); back to >= pre - 0.01: {rec}; "
          f"last 5 bins with every peer: {final_level:.4f}; run {t_end:.0f} s")
    for p, a0, a1, age in slow_report:
        print(f"slow peer {p} (SIGSTOP 0.8 s of every 1 s): accuracy {a0:.4f} -> {a1:.4f}, age {age:.0f}")
    if full_report:
        rc, msg, files, csv_tail, ck_fail = full_report
        print(f"full disk (peer {full_peer}, 1 MB tmpfs filled at {a.warmup / 2:.0f} s): exit {rc}; "
              f"last message naming it: {msg.strip() or '-'}; checkpoint failures logged: {ck_fail}; files left: "
              + ", ".join(f"{n} {z} B" for n, z in sorted(files.items()))
              + (f"; peer-{full_peer}.csv: {csv_tail}" if csv_tail else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"kills": kills, "resumes": resumes, "tmp_left": tmps, "checkpoints": len(ckpts),
                       "loaded": loaded, "pre": pre_level, "worst": worst, "recovered_at": recovered_at,
                       "final": final_level, "series": series, "failures": failures}, f, indent=1)
    if failures:
        print(f"\n{len(failures)} failure(s); work folder kept: {work}")
        return 1
    print("\nall properties hold")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
