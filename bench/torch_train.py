#!/usr/bin/env python3
"""PyTorch eager training throughput for the models of `mycel bench train`, and the ratio.

The same models (logreg 784->10, the 2NN MLP 784-200-200-10, the FedAvg CNN 32,64,512 with
'same' 5x5 convolutions), the same batch, synthetic MNIST-shaped data resident on the device,
a batch gathered by index each step, cross-entropy, SGD with momentum 0.9: the loop
`mycel train` runs. For each device and CPU thread count it times PyTorch, then runs
`mycel bench train --json` with the same settings right after (so both see the same machine
load) and prints samples/s side by side with ratio = mycel / pytorch.

Used standalone (python3 bench/torch_train.py --mycel build/bin/mycel) or through
bench/compare_torch.py's `train` subcommand, which calls main(argv) (main also takes a
Namespace built with add_arguments(); run(argv) parses and calls it).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = ("logreg", "2nn", "cnn")


def build_model(torch, name, classes=10):
    nn = torch.nn
    if name == "logreg":
        return nn.Linear(784, classes)
    if name in ("2nn", "mlp", "mlp:200,200"):
        return nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                             nn.Linear(200, classes))
    if name in ("cnn", "cnn:32,64,512"):
        return nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(7 * 7 * 64, 512), nn.ReLU(), nn.Linear(512, classes))
    raise ValueError(f"unknown model {name!r} (expected one of {', '.join(MODELS)})")


def default_steps(name):
    return 40 if name.startswith("cnn") else (3000 if name == "logreg" else 600)


def time_torch(torch, name, batch, device, steps, reps, warmup, lr=0.01, momentum=0.9):
    """Samples/s of `reps` runs of `steps` training steps: (median, best)."""
    torch.manual_seed(1)
    dev = torch.device(device)
    model = build_model(torch, name).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    n = 4096
    x_all = torch.rand(n, 784, device=dev)
    if name.startswith("cnn"):
        x_all = x_all.view(n, 1, 28, 28)
    y_all = torch.randint(0, 10, (n,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    cursor = [n]
    order = [None]

    def step():
        if cursor[0] + batch > n:
            order[0] = torch.randperm(n, device=dev)
            cursor[0] = 0
        idx = order[0][cursor[0]:cursor[0] + batch]
        cursor[0] += batch
        xb, yb = x_all.index_select(0, idx), y_all.index_select(0, idx)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    sync()
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        sync()
        secs = time.perf_counter() - t0
        rates.append(steps * batch / secs)
    if not torch.isfinite(loss).item():
        raise RuntimeError(f"pytorch {name}: non-finite loss")
    return statistics.median(rates), max(rates)


def run_mycel(mycel, name, batch, device, threads, steps, reps, warmup):
    cmd = [mycel, "--device", device]
    if threads:
        cmd += ["--threads", str(threads)]
    cmd += ["bench", "train", "--json", "--models", name, "--batch", str(batch),
            "--steps", str(steps), "--reps", str(reps), "--warmup", str(warmup)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    if not rows or rows[0].get("wrong", 1) != 0 or "samples_per_s" not in rows[0]:
        raise RuntimeError(f"mycel bench train {name} on {device} failed: {out.strip()}")
    return rows[0]


def add_arguments(p):
    p.add_argument("--mycel", default=os.environ.get("MYCEL_BIN", "build/bin/mycel"),
                   help="the mycel binary (default: $MYCEL_BIN or build/bin/mycel)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: logreg,2nn,cnn")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--devices", default="auto",
                   help="cpu, cuda, or auto (the CPU, then CUDA when torch sees a GPU)")
    p.add_argument("--threads", default="0",
                   help="CPU thread counts, comma-separated (0: all cores)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per repetition (0: per model)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--stat", choices=("best", "median"), default="best",
                   help="statistic over the repetitions, for both sides (default best: on a "
                        "shared machine the fastest repetition is the least disturbed)")
    p.add_argument("--json", action="store_true", help="print a JSON array of rows")
    p.add_argument("--no-mycel", action="store_true", help="time PyTorch only")
    return p


def main(args=None):
    """Entry point: args is an argparse.Namespace from add_arguments(), or an argv list
    (compare_torch.py train hands over its remaining arguments), or None for sys.argv."""
    if args is None or isinstance(args, (list, tuple)):
        return run(list(sys.argv[1:] if args is None else args))
    import torch  # imported here so --help works without it

    models = [m for m in args.models.split(",") if m]
    devices = ["cpu", "cuda"] if args.devices == "auto" else args.devices.split(",")
    if "cuda" in devices and not torch.cuda.is_available():
        if args.devices != "auto":
            print("torch_train: cuda requested but torch sees no gpu", file=sys.stderr)
            return 2
        devices.remove("cuda")
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    if not args.json:
        print(f"# pytorch {torch.__version__}, batch {args.batch}, {args.stat} of {args.reps} "
              f"repetitions; ratio = mycel / pytorch")
        print(f"{'device':7} {'thr':>3} {'model':8} {'pytorch/s':>10} {'mycel/s':>10} {'ratio':>6}")
    for device in devices:
        for t in (threads if device == "cpu" else [0]):
            if device == "cpu":
                torch.set_num_threads(t if t > 0 else (os.cpu_count() or 1))
            for name in models:
                steps = args.steps or default_steps(name)
                thr = torch.get_num_threads() if device == "cpu" else 0
                row = {"device": device, "threads": thr, "model": name, "batch": args.batch,
                       "steps": steps, "torch_version": torch.__version__}
                med, best = time_torch(torch, name, args.batch, device, steps, args.reps,
                                       args.warmup)
                row["torch_samples_per_s_median"] = med
                row["torch_samples_per_s"] = best if args.stat == "best" else med
                if not args.no_mycel:
                    m = run_mycel(args.mycel, name, args.batch, device, t, steps, args.reps,
                                  args.warmup)
                    row["mycel_samples_per_s_median"] = m["samples_per_s"]
                    row["mycel_samples_per_s"] = (m.get("samples_per_s_best", m["samples_per_s"])
                                                  if args.stat == "best" else m["samples_per_s"])
                    row["ratio"] = row["mycel_samples_per_s"] / row["torch_samples_per_s"]
                    row["mycel_device_name"] = m.get("device_name", "")
                rows.append(row)
                if not args.json:
                    ours = row.get("mycel_samples_per_s", float("nan"))
                    print(f"{device:7} {row['threads']:>3} {name:8} "
                          f"{row['torch_samples_per_s']:>10.0f} {ours:>10.0f} "
                          f"{row.get('ratio', float('nan')):>6.2f}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


def run(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    return main(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
