"""E2Clab user-defined service for mycel peers (`e2clab services add scripts/e2clab/GossipPeer.py`).

E2Clab requires the file stem, the class name and the service name in layers_services.yaml to be
the same: GossipPeer. `mycel deploy e2clab` writes one GossipPeer service per layer, with an
`env` mapping that says which peers the layer's nodes run:

    env: {first_id: 0, peers: 48, peers_per_node: 4, base_port: 13000}

deploy() registers two sub-services:

- `peer` on every node of the layer (hosts `LAYER.gossippeer.N.peer.M`), the node's
  `service_port` being its first peer's UCX port;
- `seed` on the layer's first node (`LAYER.gossippeer.N.seed.1`): the node that holds the
  layer's first peer, which every peer uses to join.

Nodes are taken in the order of their host names, as launch-peers.sh does, so node k of a layer
runs peers first_id + k * peers_per_node + 0, 1, ... Each host's `_self` (in workflow.yaml) gets
`node`, `peer_ids`, `ports` (its peers' UCX ports, comma separated), and `metrics_ports`: the
same ports, listed for E2Clab's monitoring. mycel serves no metrics endpoint of its own: what
E2Clab's monitoring (dstat, on the hosts with the `monitoring` role) records is per host, the
ports let a traffic filter (tcpdump, tc) pick out mycel's flows, and each peer's own figures are
in its peer-ID.csv / .json, brought back by the workflow's finalize step.

E2Clab is not installed in mycel's CI: tests/e2clab/test_gossip_peer.py checks deploy() against
a stand-in for E2Clab's Service base class that mirrors register_service (E2Clab 3.6).
"""

try:  # E2Clab >= 3.x exports Service at the top; older releases only from e2clab.services
    from e2clab import Service
except ImportError:  # pragma: no cover - depends on the E2Clab version
    from e2clab.services import Service


def plan_nodes(addresses, first_id, peers, peers_per_node, base_port):
    """Which peers each node runs: a list (in host-name order) of dicts with the node's index,
    peer ids and ports; raises ValueError when the nodes cannot hold the peers or one gets none."""
    if peers_per_node < 1:
        raise ValueError("GossipPeer: env.peers_per_node must be >= 1, got %d" % peers_per_node)
    order = sorted(addresses)
    if peers > len(order) * peers_per_node:
        raise ValueError("GossipPeer: %d peers do not fit on %d nodes x %d"
                         % (peers, len(order), peers_per_node))
    plan = []
    for k, address in enumerate(order):
        ids = [first_id + k * peers_per_node + s for s in range(peers_per_node)
               if k * peers_per_node + s < peers]
        if not ids:
            raise ValueError("GossipPeer: node %s would run no peer (%d peers, %d nodes x %d)"
                             % (address, peers, len(order), peers_per_node))
        ports = [base_port + s for s in range(len(ids))]
        plan.append({"address": address, "node": k, "peer_ids": ids, "ports": ports})
    return plan


class GossipPeer(Service):
    def deploy(self):
        env = self.env or {}
        ppn = int(env.get("peers_per_node", 1))
        first_id = int(env.get("first_id", 0))
        base_port = int(env.get("base_port", 13000))
        peers = int(env.get("peers", len(self.hosts) * ppn))
        hosts = sorted(self.hosts, key=lambda h: h.address)
        plan = plan_nodes([h.address for h in hosts], first_id, peers, ppn, base_port)
        extra = []
        for p in plan:
            ports = ",".join(str(x) for x in p["ports"])
            extra.append({
                "node": p["node"],
                "first_id": p["peer_ids"][0],
                "peer_ids": ",".join(str(i) for i in p["peer_ids"]),
                "ports": ports,
                "metrics_ports": ports,
            })
        self.register_service(hosts=hosts[:1], service_port=str(base_port), sub_service="seed",
                              extra=extra[:1])
        self.register_service(hosts=hosts, service_port=str(base_port), sub_service="peer",
                              extra=extra)
        return self.service_extra_info, self.service_roles
