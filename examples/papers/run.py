#!/usr/bin/python3
"""Reproduces Hegedűs, Danner, Jelasity, "Gossip learning as a decentralized alternative to
federated learning" (DAIS 2019) with `mycel sim`, and writes docs/papers.md with its plots.

  /usr/bin/python3 examples/papers/run.py [--mycel build/bin/mycel] [--out runs/papers] [--only spambase]

Every variant is examples/papers/hegedus2019.yaml with --set overrides: data set (Spambase,
Pendigits), protocol (gossip, gossip with subsampling, FedAvg), label distribution (uniform,
one class per peer), churn (none, the smartphone trace).
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DELTA = 172.0  # the paper's gossip cycle for a whole model (s)
DATASETS = {"spambase": 10, "pendigits": 4}  # partitions: 10% and 25% of the model per message


def variants(only):
    for ds, parts in DATASETS.items():
        if only and ds != only:
            continue
        f = 1.0 / parts
        for labels in ("iid", "one-class"):
            for churn in ("none", "trace"):
                common = [f"data.dataset={ds}", f"data.partition={labels}", f"churn.model={churn}"]
                yield (ds, labels, churn, "gossip", common + [
                    "protocol.name=gossip", "protocol.partitions=1", f"protocol.period_s={DELTA}",
                    f"network.latency={DELTA}s"])
                yield (ds, labels, churn, "gossip-subsampled", common + [
                    "protocol.name=gossip", f"protocol.partitions={parts}", f"protocol.period_s={DELTA * f:g}",
                    f"network.latency={DELTA * f:g}s"])
                # FedAvg: the server sends the whole model (one cycle down), every online client
                # trains one local epoch and sends it back (one cycle up): a round is 2 Delta.
                yield (ds, labels, churn, "fedavg", common + [
                    "protocol.name=fedavg", "protocol.client_fraction=1", "protocol.local_epochs=1",
                    f"protocol.peer_timeout_s={3 * DELTA:g}", f"network.latency={DELTA}s", "peers.count=101"])


def read_curve(path):
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mycel", default=os.path.join(ROOT, "build", "bin", "mycel"))
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "papers"))
    ap.add_argument("--only", default="")
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--plot-only", action="store_true", help="reuse the run folders under --out")
    args = ap.parse_args()
    cfg = os.path.join(ROOT, "examples", "papers", "hegedus2019.yaml")
    results = []
    t0 = time.time()
    for ds, labels, churn, proto, sets in variants(args.only):
        name = f"{ds}-{labels}-{churn}-{proto}"
        out = os.path.join(args.out, name)
        cmd = [args.mycel, "sim", cfg, "--quiet", "--out", out]
        for s in sets:
            cmd += ["--set", s]
        t = time.time()
        if not args.plot_only:
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"{name}: mycel sim failed ({r.returncode}):\n{r.stderr}")
        summary = json.load(open(os.path.join(out, "summary.json")))
        results.append(dict(ds=ds, labels=labels, churn=churn, proto=proto, out=out,
                            curve=read_curve(os.path.join(out, "curve.csv")), summary=summary,
                            wall=time.time() - t))
        print(f"{name:45s} final error {summary['final']['mean_error']:.4f}  wall {time.time() - t:6.1f} s", flush=True)
    print(f"all runs: {time.time() - t0:.0f} s")
    write_docs(results, args.docs, " ".join(a for a in sys.argv[1:] if a != "--plot-only"))


def write_docs(results, docs, argv):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img_dir = os.path.join(docs, "papers")
    os.makedirs(img_dir, exist_ok=True)
    colors = {"gossip": "tab:blue", "gossip-subsampled": "tab:green", "fedavg": "tab:red"}
    sections = []
    for ds in DATASETS:
        for labels in ("iid", "one-class"):
            rs = [r for r in results if r["ds"] == ds and r["labels"] == labels]
            if not rs:
                continue
            fig, axes = plt.subplots(1, 2, figsize=(11, 4))
            for r in rs:
                xs = [c["time_s"] / 3600 for c in r["curve"] if c["evaluated"] > 0]
                ys = [c["mean_error"] for c in r["curve"] if c["evaluated"] > 0]
                bs = [c["model_bytes_sent"] / 100 for c in r["curve"] if c["evaluated"] > 0]
                style = "-" if r["churn"] == "none" else "--"
                label = f"{r['proto']}{' + churn' if r['churn'] != 'none' else ''}"
                axes[0].plot(xs, ys, style, color=colors[r["proto"]], label=label)
                axes[1].plot(bs, ys, style, color=colors[r["proto"]], label=label)
            axes[0].set_xlabel("simulated hours")
            axes[1].set_xlabel("model bytes sent per peer")
            axes[1].set_xscale("log")
            for a in axes:
                a.set_ylabel("mean 0-1 error over online peers")
                a.grid(alpha=0.3)
                a.set_ylim(0, 0.6)
            axes[0].legend(fontsize=8)
            fig.suptitle(f"{ds}, {'uniform labels' if labels == 'iid' else 'one class per peer'}")
            fig.tight_layout()
            png = f"hegedus2019-{ds}-{labels}.png"
            fig.savefig(os.path.join(img_dir, png), dpi=90)
            plt.close(fig)
            rows = []
            for r in rs:
                c = [x for x in r["curve"] if x["evaluated"] > 0]
                def at(h):
                    best = min(c, key=lambda x: abs(x["time_s"] - h * 3600))
                    return best["mean_error"]
                rows.append(f"| {r['proto']} | {r['churn']} | {at(1):.3f} | {at(8):.3f} | {at(24):.3f} | {at(48):.3f} | "
                            f"{c[-1]['model_bytes_sent'] / 100 / 1e3:.0f} | {r['summary']['wall_s']:.1f} |")
            sections.append(f"### {ds}, {'uniform labels' if labels == 'iid' else 'one class per peer'}\n\n"
                            f"![{ds} {labels}](papers/{png})\n\n"
                            "| protocol | churn | error 1 h | 8 h | 24 h | 48 h | model kB sent per peer | wall s |\n"
                            "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    md = os.path.join(docs, "papers.md")
    head = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "papers_head.md")).read()
    with open(md, "w") as f:
        f.write(head.replace("@ARGS@", argv))
        f.write("\n## Results\n\n" + "\n".join(sections))
        f.write(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "papers_tail.md")).read())
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
