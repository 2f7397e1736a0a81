#!/usr/bin/env python3
"""mycel's kernels against PyTorch eager doing the same work, on the same machine, in one run.

  compare_torch.py merge [--sizes 64M] [--devices cpu,cuda] [--reps 5] [--json]
      fp32 2-way merge      ours: bench merge  mix          torch: x.lerp_(y, a) and
                                                                   x.mul_(1-a).add_(y, alpha=a)
      int8 decode+merge     ours: bench codec  decode_merge torch: dequantise an int8 tensor with
                                                                   per-block fp32 scales, then lerp_
      fp16 decode+merge     ours: bench codec  decode_merge torch: x.lerp_(h.float(), a)
      bf16 decode+merge     ours: bench codec  decode_merge torch: x.lerp_(b.float(), a)
    Both sides are rated in the same useful bytes per call (docs/benchmarks.md), so the speed-up
    is the ratio of times; torch gets the better of its variants and the same thread count as
    ours. Ours comes from running `mycel ... --json` (--mycel PATH), or from JSON files saved
    earlier (--ours-json FILE, repeatable).

  compare_torch.py train ...
      the training benchmark: hands the remaining arguments to bench/torch_train.py's
      main(argv) -> exit status.

Needs PyTorch: on Debian 12, python3-torch (run with /usr/bin/python3 where another python3
comes first on PATH). Exit status: 0, 1 when a run failed or reported wrong results, 2 on a
usage or environment error.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse_size(text):
    text = text.strip()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1].upper() in mult:
        return int(text[:-1]) * mult[text[-1].upper()]
    return int(text)


def format_size(n):
    for suffix, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= (1 << shift) and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


def import_torch():
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        print("compare_torch.py: PyTorch is not importable by " + sys.executable +
              " (on Debian 12: apt-get install python3-torch, and run /usr/bin/python3 "
              "bench/compare_torch.py ...)", file=sys.stderr)
        sys.exit(2)
    return torch


# ---- the workloads: (name, ours selector, bytes per call, torch setup) ----

def useful_bytes(work, n, block):
    """Bytes read plus written per call, counted as mycel counts them (docs/benchmarks.md)."""
    nb = (n + block - 1) // block
    if work == "fp32_merge":
        return 12 * n                # read x, y; write x
    if work == "int8_decode_merge":
        return n + 4 * nb + 8 * n    # read q and scales, read and write x
    if work in ("fp16_decode_merge", "bf16_decode_merge"):
        return 2 * n + 8 * n         # read the 16-bit body, read and write x
    raise ValueError(work)


WORKS = ["fp32_merge", "int8_decode_merge", "fp16_decode_merge", "bf16_decode_merge"]


def ours_key(work, block):
    """(op, codec, spec or None) of mycel's row for a workload."""
    return {
        "fp32_merge": ("mix", "fp32", None),
        "int8_decode_merge": ("decode_merge", "int8", f"int8:block={block}"),
        "fp16_decode_merge": ("decode_merge", "fp16", None),
        "bf16_decode_merge": ("decode_merge", "bf16", None),
    }[work]


def time_torch(torch, device, fn, warmup, reps):
    """Median milliseconds per call of fn (cuda events on a GPU)."""
    for _ in range(warmup):
        fn()
    ms = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(reps):
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            ms.append(start.elapsed_time(stop))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ms), min(ms)


def torch_variants(torch, work, n, block, device, a=0.25):
    """{variant name: callable} doing the workload's work once per call, in place on x."""
    gen = torch.Generator(device="cpu").manual_seed(1234)
    x = (torch.rand(n, generator=gen) * 2 - 1).to(device)
    if work == "fp32_merge":
        y = (torch.rand(n, generator=gen) * 2 - 1).to(device)
        return {
            "lerp_": lambda: x.lerp_(y, a),
            "mul_add_": lambda: x.mul_(1 - a).add_(y, alpha=a),
        }
    if work == "int8_decode_merge":
        nb = (n + block - 1) // block
        q = torch.randint(-127, 128, (nb * block,), dtype=torch.int8, generator=gen).to(device)
        scales = (torch.rand(nb, generator=gen) / 127).to(device)

        def dequant_lerp():
            deq = (q.view(nb, block).float() * scales.view(nb, 1)).view(-1)
            x.lerp_(deq[:n], a)

        return {"dequant_lerp_": dequant_lerp}
    dt = torch.float16 if work == "fp16_decode_merge" else torch.bfloat16
    h = (torch.rand(n, generator=gen) * 2 - 1).to(dt).to(device)
    return {
        "float_lerp_": lambda: x.lerp_(h.float(), a),
        "add_": lambda: x.mul_(1 - a).add_(h, alpha=a),
    }


def run_mycel(args, device, sizes):
    """Runs mycel's merge and codec benches for one device; returns their JSON rows."""
    exe = args.mycel
    if not os.path.isfile(exe):
        print(f"compare_torch.py: no mycel binary at {exe} (build it, or pass --mycel PATH or "
              "--ours-json FILE)", file=sys.stderr)
        sys.exit(2)
    common = [exe, "--device", device, "--threads", str(args.threads), "bench"]
    flags = ["--json", "--sizes", ",".join(format_size(n) for n in sizes),
             "--reps", str(args.reps), "--warmup", str(args.warmup), "--stat", args.stat]
    cmds = [common + ["merge", "--ops", "mix"] + flags,
            common + ["codec", "--ops", "decode_merge", "--codecs",
                      f"fp16,bf16,int8:block={args.block}"] + flags]
    rows = []
    for cmd in cmds:
        print("running: " + " ".join(cmd), file=sys.stderr)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        try:
            out = json.loads(p.stdout)
        except json.JSONDecodeError:
            print(f"compare_torch.py: mycel exited {p.returncode} without JSON output",
                  file=sys.stderr)
            sys.exit(1)
        if p.returncode != 0:
            print(f"compare_torch.py: mycel exited {p.returncode} (wrong results or errors "
                  "in its rows)", file=sys.stderr)
            args.failed = True
        rows += out
    return rows


def find_ours(rows, work, n, device, block):
    op, codec, spec = ours_key(work, block)
    for r in rows:
        if r.get("op") != op or r.get("codec") != codec or r.get("params") != n:
            continue
        if spec is not None and r.get("spec") != spec:
            continue
        dev = r.get("device", "")
        if dev == device or dev.split(":")[0] == device:
            return r
    return None


def cmd_merge(args):
    torch = import_torch()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    devices = [d for d in args.devices.split(",") if d]
    if "cuda" in devices and not torch.cuda.is_available():
        print("compare_torch.py: torch sees no gpu, comparing on the cpu only", file=sys.stderr)
        devices = [d for d in devices if d != "cuda"]
    args.failed = False

    ours_rows = []
    if args.ours_json:
        for path in args.ours_json:
            with open(path, encoding="utf-8") as f:
                ours_rows += json.load(f)
    else:
        for dev in devices:
            ours_rows += run_mycel(args, dev, sizes)

    results = []
    for dev in devices:
        for n in sizes:
            for work in WORKS:
                ours = find_ours(ours_rows, work, n, dev, args.block)
                if ours is not None and dev == "cpu":
                    torch.set_num_threads(int(ours.get("threads", 1)))
                elif dev == "cpu" and args.threads > 0:
                    torch.set_num_threads(args.threads)
                nbytes = useful_bytes(work, n, args.block)
                best = None
                for name, fn in torch_variants(torch, work, n, args.block, dev).items():
                    med, lo = time_torch(torch, dev, fn, args.warmup, args.reps)
                    t = lo if args.stat == "min" else med
                    if best is None or t < best[1]:
                        best = (name, t)
                torch_gbps = nbytes / (best[1] * 1e-3) / 1e9
                row = {
                    "work": work, "device": dev, "params": n, "bytes": nbytes,
                    "torch": torch.__version__, "torch_threads":
                        torch.get_num_threads() if dev == "cpu" else None,
                    "torch_variant": best[0], "torch_ms": best[1], "torch_gbps": torch_gbps,
                }
                if ours is not None and not ours.get("error"):
                    ours_gbps = float(ours.get("gbps", 0))
                    row.update({
                        "ours_op": ours.get("op"), "ours_ms": ours.get("ms"),
                        "ours_gbps": ours_gbps, "ours_peak_gbps": ours.get("peak_gbps"),
                        "ours_ratio_to_peak": ours.get("ratio"), "ours_wrong": ours.get("wrong"),
                        "device_name": ours.get("device_name"), "threads": ours.get("threads"),
                        "speedup": ours_gbps / torch_gbps if torch_gbps > 0 else None,
                    })
                    if ours.get("wrong"):
                        args.failed = True
                else:
                    row["ours_error"] = ours.get("error") if ours else "no matching mycel row"
                    args.failed = True
                results.append(row)

    if args.json:
        print(json.dumps(results, indent=1))
    else:
        hdr = (f"{'work':18} {'device':6} {'params':>7} {'ours GB/s':>10} {'of peak':>8} "
               f"{'torch GB/s':>10} {'speed-up':>8}  torch variant")
        print(hdr)
        for r in results:
            ours = f"{r['ours_gbps']:10.2f}" if "ours_gbps" in r else f"{'-':>10}"
            ratio = (f"{r['ours_ratio_to_peak']:8.3f}"
                     if r.get("ours_ratio_to_peak") is not None else f"{'-':>8}")
            speed = f"{r['speedup']:8.2f}" if r.get("speedup") else f"{'-':>8}"
            print(f"{r['work']:18} {r['device']:6} {format_size(r['params']):>7} {ours} {ratio} "
                  f"{r['torch_gbps']:10.2f} {speed}  {r['torch_variant']}")
        names = {r.get("device_name") for r in results if r.get("device_name")}
        print(f"torch {torch.__version__}; mycel devices: {', '.join(sorted(names)) or '-'}")
    return 1 if args.failed else 0


def cmd_train(rest):
    sys.path.insert(0, HERE)
    try:
        import torch_train  # noqa: PLC0415  (bench/torch_train.py)
    except ImportError as e:
        print(f"compare_torch.py train: cannot import bench/torch_train.py ({e}); the training "
              "comparison is not available in this checkout", file=sys.stderr)
        return 2
    if not hasattr(torch_train, "main"):
        print("compare_torch.py train: bench/torch_train.py has no main(argv)", file=sys.stderr)
        return 2
    return int(torch_train.main(rest) or 0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("merge", help="merge and fused decode+merge against torch eager")
    m.add_argument("--sizes", default="64M", help="parameter counts (K, M, G = 2^10, 2^20, 2^30)")
    m.add_argument("--devices", default="cpu,cuda", help="cpu and/or cuda (cuda when present)")
    m.add_argument("--reps", type=int, default=5)
    m.add_argument("--warmup", type=int, default=1)
    m.add_argument("--stat", choices=["median", "min"], default="median",
                   help="torch's statistic over repetitions (give ours the same --stat)")
    m.add_argument("--threads", type=int, default=0, help="cpu threads for both (0: all cores)")
    m.add_argument("--block", type=int, default=256, help="int8 quantisation block")
    m.add_argument("--mycel", default=os.path.join(ROOT, "build", "bin", "mycel"))
    m.add_argument("--ours-json", action="append",
                   help="mycel bench --json output to use instead of running mycel (repeatable)")
    m.add_argument("--json", action="store_true", help="print a JSON array of rows")
    m.set_defaults(func=cmd_merge)

    # train's arguments belong to bench/torch_train.py: they are handed over untouched.
    sub.add_parser("train", help="training step time against torch (bench/torch_train.py); "
                                 "the arguments that follow go to torch_train.main(argv)",
                   add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train":
        return cmd_train(argv[1:])

    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:
        print(f"compare_torch.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
