#!/usr/bin/python3
"""Turns mycel run folders into PNG plots (Debian python3-matplotlib).

  scripts/plot.py RUN_DIR [RUN_DIR ...] [--out DIR]

For each run: accuracy against time (mean and min-max band across peers), accuracy against
bytes sent (mean over peers, bytes summed over peers), bytes sent per second by each peer
against time (bytes_per_s.png), and the spread across peers at the end.
Several run folders are overlaid, labelled by their summary.json (protocol, codec, partition),
so gossip learning, FedAvg and other settings compare on one plot. A change of the live
parameters (a new params_version or codec in a peer's CSV: `mycel ctl RUN set ...`) is a dotted
line on the accuracy and bytes per second against time plots where the first peer's CSV shows
it, with a band back to that peer's previous row (the change happened in between), labelled with
the codec then in force, and printed ("change at T s (after T0 s): params version V, codec C").
"""
import argparse
import csv
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_run(d):
    peers = []
    for path in sorted(glob.glob(os.path.join(d, "peer-*.csv"))):
        with open(path) as f:
            rows = [r for r in csv.DictReader(f)]
        if rows:
            peers.append(rows)
    if not peers:
        raise SystemExit(f"plot.py: no peer-*.csv in {d}")
    label = os.path.basename(os.path.normpath(d))
    summary = os.path.join(d, "summary.json")
    if os.path.exists(summary):
        with open(summary) as f:
            s = json.load(f)
        label = f"{s.get('protocol')} {s.get('codec')} {s.get('partition')} ({s.get('peers')} peers)"
    return label, peers


def param_changes(peers):
    """Times at which the live parameters changed (a new params_version, or a new codec, in a
    peer's CSV rows): the first peer to show each change, with what it changed to."""
    seen = {}
    for p in peers:
        prev, t_prev = None, 0.0
        for r in p:
            cur = (r.get("params_version", ""), r.get("codec", ""))
            t = float(r["time_s"])
            if prev is not None and cur != prev:
                if cur not in seen or t < seen[cur][0]:
                    seen[cur] = (t, t_prev)
            prev, t_prev = cur, t
    return sorted((t, t_prev, version, codec) for (version, codec), (t, t_prev) in seen.items())


def rates(rows, key):
    """(time, per-second rate of counter `key`) between consecutive CSV rows, at the later row."""
    out = []
    for a, b in zip(rows, rows[1:]):
        dt = float(b["time_s"]) - float(a["time_s"])
        if dt > 0:
            out.append((float(b["time_s"]), (float(b[key]) - float(a[key])) / dt))
    return out


def mark_changes(ax, changes):
    for t, t_prev, _, codec in changes:
        # The change happened after the peer's previous row and by this one: the band.
        ax.axvspan(t_prev, t, color="grey", alpha=0.12, linewidth=0)
        ax.axvline(t, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"params: {codec}", (t, ax.get_ylim()[0]), rotation=90, fontsize=7, color="grey",
                    va="bottom", ha="right")


def binned(peers, key, bins=60):
    """Mean, min and max of test accuracy per time bin; total of `key` per bin."""
    t_end = max(float(r["time_s"]) for p in peers for r in p)
    width = max(t_end / bins, 1e-9)
    out = []
    for b in range(bins + 1):
        t = b * width
        accs, tot = [], 0.0
        for p in peers:
            last = None
            for r in p:
                if float(r["time_s"]) <= t:
                    last = r
            if last is not None:
                accs.append(float(last["test_accuracy"]))
                tot += float(last[key])
        if accs:
            out.append((t, sum(accs) / len(accs), min(accs), max(accs), tot))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=None, help="folder for the PNGs (default: the first run folder)")
    a = ap.parse_args()
    out = a.out or a.runs[0]
    os.makedirs(out, exist_ok=True)
    runs = [load_run(d) for d in a.runs]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, peers in runs:
        s = binned(peers, "bytes_sent")
        ax.plot([x[0] for x in s], [x[1] for x in s], label=label)
        ax.fill_between([x[0] for x in s], [x[2] for x in s], [x[3] for x in s], alpha=0.2)
        # Parameter changes (mycel ctl set, a scheduler): a dotted line where they first show.
        changes = param_changes(peers)
        mark_changes(ax, changes)
        for t, t_prev, version, codec in changes:
            print(f"plot.py: {label}: change at {t:g} s (after {t_prev:g} s): params version {version}, codec {codec}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("test accuracy (mean, min-max band)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy_vs_time.png"), dpi=120)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, peers in runs:
        s = binned(peers, "bytes_sent")
        ax.plot([x[4] / 1e6 for x in s], [x[1] for x in s], label=label)
    ax.set_xlabel("bytes sent by all peers (MB)")
    ax.set_ylabel("mean test accuracy")
    ax.set_xscale("symlog")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy_vs_bytes.png"), dpi=120)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, peers) in enumerate(runs):
        for j, p in enumerate(peers):
            r = rates(p, "bytes_sent")
            ax.step([x[0] for x in r], [x[1] / 1e3 for x in r], where="pre", color=colors[i % len(colors)],
                    linewidth=1, alpha=0.7, label=label if j == 0 else None)
    for label, peers in runs:
        mark_changes(ax, param_changes(peers))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("bytes sent per second, each peer (kB/s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bytes_per_s.png"), dpi=120)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, peers) in enumerate(runs):
        final = [float(p[-1]["test_accuracy"]) for p in peers]
        ax.scatter([i] * len(final), final, alpha=0.6, label=label)
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([str(i) for i in range(len(runs))])
    ax.set_xlabel("run")
    ax.set_ylabel("final test accuracy per peer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "spread.png"), dpi=120)
    print(f"plot.py: wrote accuracy_vs_time.png, accuracy_vs_bytes.png, bytes_per_s.png, spread.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
