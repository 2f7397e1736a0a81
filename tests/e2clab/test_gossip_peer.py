"""GossipPeer.py (the E2Clab service) against a stand-in for E2Clab's Service base class
(tests/e2clab/e2clab_standin.py): E2Clab is not installed here."""
import os
import random
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import e2clab_standin  # noqa: E402

SOURCE = os.environ.get("MYCEL_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
GP = e2clab_standin.load_gossip_peer(SOURCE)
EDGE = ["estats-%d.toulouse.grid5000.fr" % i for i in range(1, 13)]


class GossipPeerTest(unittest.TestCase):
    def deploy(self, addresses, env, layer="edge"):
        shuffled = list(addresses)
        random.Random(3).shuffle(shuffled)  # E2Clab's host order is not the sorted one
        return e2clab_standin.run_service(GP, layer, 1, shuffled, env)

    def test_registers_a_seed_and_one_peer_sub_service_per_node(self):
        svc = self.deploy(EDGE, {"first_id": 0, "peers": 48, "peers_per_node": 4, "base_port": 13000})
        keys = sorted(svc.service_roles)
        self.assertIn("edge.gossippeer.1.seed.1", keys)
        peers = [k for k in keys if ".peer." in k]
        self.assertEqual(len(peers), 12)
        self.assertEqual(sorted(peers), sorted("edge.gossippeer.1.peer.%d" % m for m in range(1, 13)))
        self.assertEqual(len(keys), 13)

    def test_nodes_in_host_name_order_get_consecutive_ids_and_ports(self):
        svc = self.deploy(EDGE, {"first_id": 0, "peers": 48, "peers_per_node": 4, "base_port": 13000})
        info = svc.service_extra_info
        by_node = {}
        for k, v in info.items():
            if ".peer." in k:
                by_node[v["node"]] = v
        order = sorted(EDGE)
        seen = []
        for n in range(12):
            v = by_node[n]
            self.assertEqual(v["__address__"], order[n])
            ids = [int(x) for x in v["peer_ids"].split(",")]
            self.assertEqual(ids, [4 * n + s for s in range(4)])
            self.assertEqual(v["ports"], "13000,13001,13002,13003")
            self.assertEqual(v["metrics_ports"], v["ports"])
            self.assertEqual(v["url"], order[n] + ":13000")
            seen += ids
        self.assertEqual(sorted(seen), list(range(48)))
        seed = info["edge.gossippeer.1.seed.1"]
        self.assertEqual(seed["__address__"], order[0])
        self.assertEqual(seed["first_id"], 0)

    def test_a_later_layer_starts_at_its_first_id_and_a_partial_last_node(self):
        cloud = ["chifflot-%d.lille.grid5000.fr" % i for i in range(1, 5)]
        svc = self.deploy(cloud, {"first_id": 48, "peers": 14, "peers_per_node": 4, "base_port": 14000},
                          layer="cloud")
        ids = {}
        for k, v in svc.service_extra_info.items():
            if ".peer." in k:
                ids[v["node"]] = v["peer_ids"]
        self.assertEqual(ids[0], "48,49,50,51")
        self.assertEqual(ids[3], "60,61")
        self.assertIn("cloud.gossippeer.1.seed.1", svc.service_roles)

    def test_too_many_peers_or_an_empty_node_is_an_error(self):
        with self.assertRaises(ValueError):
            GP.plan_nodes(EDGE, 0, 49 + 47, 4, 13000)
        with self.assertRaisesRegex(ValueError, "no peer"):
            GP.plan_nodes(EDGE, 0, 40, 4, 13000)  # the last two nodes would be idle
        with self.assertRaises(ValueError):
            GP.plan_nodes(EDGE, 0, 12, 0, 13000)

    def test_file_stem_is_the_class_name(self):
        self.assertTrue(hasattr(GP, "GossipPeer"))
        self.assertTrue(issubclass(GP.GossipPeer, e2clab_standin.Service))


if __name__ == "__main__":
    unittest.main()
