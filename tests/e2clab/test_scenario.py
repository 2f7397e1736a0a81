#!/usr/bin/python3
"""`mycel deploy e2clab` end to end: generates the scenario of tests/e2clab/two-layer.yaml
(12 estats boards + 4 chifflot nodes, 64 peers), validates every file against E2Clab's schemas
(../shared/e2clab-schema, Draft 7, as E2Clab does) and the run-time rules of that folder's
README, checks that the workflow's host patterns address the hosts GossipPeer.py registers, runs
the generated launch-peers.sh in dry-run mode for every host (ids, ports, seeds, --peers), and
that bad deploy sections fail with an error naming the key and a non-zero exit.

Needs Debian's python3-jsonschema and python3-yaml (run with /usr/bin/python3). Exit 77 (ctest:
skipped, with the reason printed) when they or the schema folder are missing."""
import argparse
import copy
import fnmatch
import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

try:
    import jsonschema
    import yaml
except ImportError as e:
    print("SKIP: %s (install python3-jsonschema and python3-yaml, run with /usr/bin/python3)" % e)
    sys.exit(77)

import e2clab_standin  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--mycel", required=True)
ap.add_argument("--emulator", default="", help="command prefix to run mycel (cross builds: qemu)")
ap.add_argument("--schemas", default=os.path.join(SOURCE, "..", "shared", "e2clab-schema"))
args = ap.parse_args()
if not os.path.isfile(os.path.join(args.schemas, "layers_services.schema.json")):
    print("SKIP: E2Clab schemas not found in %s (CI puts a copy of shared/ beside the clone)" % args.schemas)
    sys.exit(77)

MYCEL = shlex.split(args.emulator) + [args.mycel]
CONFIG = os.path.join(HERE, "two-layer.yaml")
failures = []


def check(cond, what):
    print(("ok:   " if cond else "FAIL: ") + what)
    if not cond:
        failures.append(what)


def schema(name):
    with open(os.path.join(args.schemas, name)) as f:
        return json.load(f)


def validate(doc, schema_name, file_name):
    v = jsonschema.Draft7Validator(schema(schema_name))
    errors = sorted(v.iter_errors(doc), key=lambda e: list(e.path))
    for e in errors:
        print("  %s: %s at %s" % (file_name, e.message, "/".join(str(p) for p in e.path)))
    check(not errors, "%s valid against %s" % (file_name, schema_name))


def generate(config_path, out, extra=()):
    return subprocess.run(MYCEL + ["deploy", "e2clab", config_path, "--out", out] + list(extra),
                          capture_output=True, text=True)


tmp = tempfile.mkdtemp(prefix="mycel-e2clab-")
out = os.path.join(tmp, "scenario")
r = generate(CONFIG, out)
print(r.stdout, end="")
check(r.returncode == 0, "mycel deploy e2clab two-layer.yaml exits 0 (stderr: %s)" % r.stderr.strip())
if r.returncode != 0:
    sys.exit(1)


def load(name):
    with open(os.path.join(out, name)) as f:
        return yaml.safe_load(f)


ls, net, wf, wenv = (load(n) for n in ("layers_services.yaml", "network.yaml", "workflow.yaml",
                                          "workflow_env.yaml"))

# ---- schemas ------------------------------------------------------------------------------
validate(ls, "layers_services.schema.json", "layers_services.yaml")
validate(net, "network.schema.json", "network.yaml")
validate(net, "network.schema.older-variant.json", "network.yaml")
validate(wf, "workflow.schema.json", "workflow.yaml")
validate(wenv, "workflow_env.schema.json", "workflow_env.yaml")
validate(wenv, "workflow_env.schema.alt-variant.json", "workflow_env.yaml")

# ---- run-time rules (README) ----------------------------------------------------------------
g5k = ls["environment"]["g5k"]
services = [(layer["name"], s) for layer in ls["layers"] for s in layer["services"]]
for layer, s in services:
    check("cluster" in s or "servers" in s or "cluster" in g5k,
          "service %s/%s has cluster or servers (or a default g5k.cluster)" % (layer, s["name"]))
    check(s["name"] == "GossipPeer", "service %s/%s is the GossipPeer plugin" % (layer, s["name"]))
check("exotic" in g5k.get("job_type", []), "estats (exotic) puts 'exotic' in g5k.job_type")
check(isinstance(ls["environment"]["walltime"], str), "walltime is a string once parsed (quoted)")
check({(l, s["cluster"], s["quantity"]) for l, s in services} == {("edge", "estats", 12), ("cloud", "chifflot", 4)},
      "12 estats nodes in edge, 4 chifflot nodes in cloud")
check(sum(s["env"]["peers"] for _, s in services) == 64, "the layers' env.peers add up to 64")
for n in net["networks"]:
    check(re.fullmatch(r"[0-9]+(\.[0-9]+)?(kbit|mbit|gbit)", n["rate"]) is not None,
          "network %s->%s rate %s ends in kbit|mbit|gbit" % (n["src"], n["dst"], n["rate"]))
    check(re.fullmatch(r"[0-9]+(\.[0-9]+)?ms", n["delay"]) is not None,
          "network %s->%s delay %s ends in ms" % (n["src"], n["dst"], n["delay"]))
    check(n["src"] in ("edge", "cloud") and n["dst"] in ("edge", "cloud"), "network rule between layers")
check(len(net["networks"]) == 2, "two network rules")
plays_text = json.dumps(wf)
check("g5k_ipv6_hostname" not in plays_text, "no array_info: g5k_ipv6_hostname (crashes E2Clab 3.6.0)")

# The hosts GossipPeer.py registers, through the stand-in of E2Clab's Service class.
gp = e2clab_standin.load_gossip_peer(SOURCE)
hosts = {"edge": ["estats-%d.toulouse.grid5000.fr" % i for i in range(1, 13)],
         "cloud": ["chifflot-%d.lille.grid5000.fr" % i for i in range(1, 5)]}
keys, self_info = [], {}
for layer_id, (layer, s) in enumerate(services, start=1):
    shuffled = list(hosts[layer])
    random.Random(layer_id).shuffle(shuffled)
    svc = e2clab_standin.run_service(gp, layer, layer_id, shuffled, s["env"])
    keys += list(svc.service_roles)
    for k, v in svc.service_extra_info.items():
        if ".peer." in k:
            self_info[v["__address__"]] = v
for play in wf:
    pat = play["hosts"]
    check(pat == pat.lower(), "play hosts '%s' is lower case" % pat)
    matched = [k for k in keys if fnmatch.fnmatchcase(k, pat)]
    check(len(matched) > 0 and all(".peer." in k for k in matched),
          "play hosts '%s' addresses %d registered peer hosts" % (pat, len(matched)))
    for dep in play.get("depends_on", []):
        m = [k for k in keys if fnmatch.fnmatchcase(k, dep["service_selector"])]
        check(len(m) in (12, 4), "depends_on %s selects %d hosts" % (dep["service_selector"], len(m)))
steps = {step for play in wf for step in ("prepare", "launch", "finalize") if step in play}
check(steps == {"prepare", "launch", "finalize"}, "workflow has prepare, launch and finalize")
check("fetch" in plays_text and "working_dir" in plays_text, "finalize fetches the run folders to working_dir")

# ---- launch-peers.sh, dry run on every host ---------------------------------------------------
launcher = os.path.join(out, "artifacts", "launch-peers.sh")
check(os.access(launcher, os.X_OK), "artifacts/launch-peers.sh is executable")
lists = []
for layer in ("edge", "cloud"):
    h = list(hosts[layer])
    random.Random(7).shuffle(h)  # as E2Clab's asarray might give them
    lists.append(",".join(h))
env = dict(os.environ, MYCEL_DRY_RUN="1", MYCEL_NO_RESOLVE="1")
cmds = {}
per_host = {}
for layer in ("edge", "cloud"):
    for h in hosts[layer]:
        rr = subprocess.run(["bash", launcher, "start", layer, h] + lists + ["--", "--set", "eval.every_s=5"],
                            capture_output=True, text=True, env=env)
        check(rr.returncode == 0, "launch-peers.sh start %s %s (stderr: %s)" % (layer, h, rr.stderr.strip()))
        for line in rr.stdout.splitlines():
            if " peer --config " not in line:
                continue
            a = line.split()
            opt = {a[i]: a[i + 1] for i in range(len(a) - 1) if a[i].startswith("--")}
            pid = int(opt["--id"])
            check(pid not in cmds, "peer %d started once" % pid) if pid in cmds else None
            cmds[pid] = (h, opt, a)
            per_host.setdefault(h, []).append(pid)
check(sorted(cmds) == list(range(64)), "64 peers, ids 0..63, each once")
peer_lists = {o["--peers"] for _, o, _ in cmds.values()}
check(len(peer_lists) == 1, "every peer gets the same --peers list")
plist = next(iter(peer_lists)).split(",")
check(len(plist) == 64, "--peers lists 64 addresses")
ok_listen = all(plist[pid] == o["--listen"] for pid, (_, o, _) in cmds.items())
check(ok_listen, "each peer's --listen is its entry in --peers (the address the others use)")
ok_place = True
for pid, (h, o, _) in cmds.items():
    layer = "edge" if pid < 48 else "cloud"
    k = pid - (0 if layer == "edge" else 48)
    want_host = sorted(hosts[layer])[k // 4]
    ok_place &= h == want_host and o["--listen"] == "ucx://%s:%d" % (h, 13000 + k % 4)
check(ok_place, "peer k of a layer on node k // 4 (host names sorted), port 13000 + k % 4")
seeds_ok = all(set(o["--seeds"].split(",")) <= {plist[0], plist[48]} and o["--seeds"] and
               o["--listen"] not in o["--seeds"].split(",") for _, o, _ in cmds.values())
check(seeds_ok, "seeds: the first peer of each layer, never the peer itself")
check(all(o["--config"] == "/tmp/mycel/experiment.yaml" and o["--out"] == "/tmp/mycel/run"
          for _, o, _ in cmds.values()), "config and run folder under deploy.remote_dir")
check(all(a[-2:] == ["--set", "eval.every_s=5"] for _, _, a in cmds.values()),
      "options after -- reach every peer")
agree = all([int(x) for x in self_info[h]["peer_ids"].split(",")] == sorted(ids) for h, ids in per_host.items())
check(agree and len(per_host) == 16, "GossipPeer.py's peer_ids per host agree with launch-peers.sh")
rr = subprocess.run(["bash", launcher, "start", "edge", "not-a-host"] + lists, capture_output=True, text=True, env=env)
check(rr.returncode != 0 and "not among" in rr.stderr, "launch-peers.sh refuses a host outside its layer")

# The copied config is the experiment's, and the experiment reader accepts its deploy: section.
rc = subprocess.run(MYCEL + ["config", "--check", os.path.join(out, "artifacts", "experiment.yaml")],
                    capture_output=True, text=True)
check(rc.returncode == 0 and "peers.count: 64" in rc.stdout, "mycel config --check accepts the deploy: section")
r2 = generate(CONFIG, out)
check(r2.returncode != 0 and "--force" in r2.stderr, "an existing scenario is not overwritten without --force")
check(generate(CONFIG, out, ["--force"]).returncode == 0, "--force overwrites it")

# ---- bad deploy sections ----------------------------------------------------------------------
with open(CONFIG) as f:
    base = yaml.safe_load(f)


def case(name, mutate, expect):
    doc = copy.deepcopy(base)
    mutate(doc)
    path = os.path.join(tmp, "bad.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    bad_out = os.path.join(tmp, "bad-" + re.sub(r"\W+", "-", name))
    rr = generate(path, bad_out)
    msg = rr.stderr.strip()
    check(rr.returncode != 0 and all(e in msg for e in expect) and
          not os.path.exists(os.path.join(bad_out, "layers_services.yaml")),
          "%s: exit %d, %s" % (name, rr.returncode, msg))


L = lambda d, i: d["deploy"]["layers"][i]  # noqa: E731
N = lambda d, i: d["deploy"]["network"][i]  # noqa: E731
case("missing cluster", lambda d: L(d, 0).pop("cluster"), ["deploy.layers[0].cluster", "missing"])
case("zero nodes", lambda d: L(d, 1).update(nodes=0), ["deploy.layers[1].nodes", "out of range"])
case("more peers than fit", lambda d: d["peers"].update(count=65), ["more peers than fit", "64"])
case("too many estats nodes", lambda d: L(d, 0).update(nodes=13), ["deploy.layers[0].nodes", "estats has 12"])
case("a node without a peer", lambda d: L(d, 1).update(nodes=6), ["deploy.layers[1].nodes", "only 4 get a peer"])
case("bad rate unit", lambda d: N(d, 0).update(rate="100mbps"), ["deploy.network[0].rate", "kbit, mbit or gbit"])
case("negative delay", lambda d: N(d, 1).update(delay="-5ms"), ["deploy.network[1].delay", "negative"])
case("delay without unit", lambda d: N(d, 0).update(delay=20), ["deploy.network[0].delay", "ms"])
case("bad loss", lambda d: N(d, 0).update(loss="5"), ["deploy.network[0].loss", "percentage"])
case("unknown layer in a link", lambda d: N(d, 0).update(dst="fog"), ["deploy.network[0].dst", "not a layer"])
case("unknown key in a layer", lambda d: L(d, 0).update(gpus=1), ["unknown key 'deploy.layers[0].gpus'"])
case("unknown key in deploy", lambda d: d["deploy"].update(wall_time="01:00:00"), ["unknown key 'deploy.wall_time'"])
case("bad walltime", lambda d: d["deploy"].update(walltime="25:00:00"), ["deploy.walltime", "hh:mm:ss"])
case("walltime shorter than the run", lambda d: d["deploy"].update(walltime="00:10:00"),
     ["deploy.walltime", "run.duration_s"])
case("no layers", lambda d: d["deploy"].pop("layers"), ["deploy.layers", "missing"])
case("no deploy section", lambda d: d.pop("deploy"), ["no 'deploy' section"])
case("deploy is not a mapping", lambda d: d.update(deploy=5), ["deploy"])
case("inproc transport", lambda d: d["peers"].update(transport="inproc"), ["peers.transport"])

print("%d check(s) failed" % len(failures) if failures else "all checks passed")
sys.exit(1 if failures else 0)
