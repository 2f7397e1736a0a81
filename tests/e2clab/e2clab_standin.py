"""A stand-in for E2Clab's Service base class, for tests only: E2Clab (and EnOSlib, Ansible) are
not installed in mycel's CI. It mirrors what GossipPeer.py relies on in E2Clab 3.6's
e2clab/services/service.py: the constructor's attributes (hosts, env, layer_name, service_name,
service_id, service_metadata['_id']), and register_service's service keys
"layer.service.<service_id>[.<sub_service>].<machine_id>" in lower case, machine ids from 1 in
the order of the hosts given, and the per-host `_self` info (_id, __address__, url + extra[i]).
install() puts it in sys.modules as `e2clab` before GossipPeer.py is imported."""
import importlib.util
import os
import sys
import types


class Host:
    def __init__(self, address):
        self.address = address
        self.extra = {}

    def set_extra(self, **kw):
        self.extra.update(kw)

    def __repr__(self):
        return "Host(%s)" % self.address


class Service:
    def __init__(self, hosts, service_metadata):
        self.hosts = hosts
        self.service_metadata = service_metadata
        self.env = service_metadata.get("env", {})
        self.service_extra_info = {}
        self.service_roles = {}
        self.layer_name = service_metadata["layer_name"]
        self.layer_id = service_metadata["layer_id"]
        self.service_name = service_metadata["name"]
        self.service_id = service_metadata["service_id"]

    def _service_key(self, sub_service_name=None, machine_id=None):
        key = "%s.%s.%s" % (self.layer_name, self.service_name, self.service_id)
        key += ".%s" % sub_service_name if sub_service_name else ""
        key += ".%s" % machine_id if machine_id else ""
        return key.lower()

    def register_service(self, hosts=None, roles=None, service_port=None, sub_service=None, extra=None):
        hosts = hosts if hosts else self.hosts
        for i, h in enumerate(hosts):
            machine_id = i + 1
            key = self._service_key(sub_service, machine_id)
            info = {
                "_id": "%s_%d" % (self.service_metadata["_id"], machine_id),
                "__address__": h.address,
                "url": h.address + (":%s" % service_port if service_port else ""),
            }
            if extra is not None and i < len(extra) and extra[i] is not None:
                info.update(extra[i])
            self.service_extra_info[key] = info
            self.service_roles[key] = [h]
        return self.service_extra_info, self.service_roles


def install():
    mod = types.ModuleType("e2clab")
    mod.Service = Service
    sys.modules["e2clab"] = mod
    return mod


def load_gossip_peer(source_dir):
    install()
    path = os.path.join(source_dir, "scripts", "e2clab", "GossipPeer.py")
    spec = importlib.util.spec_from_file_location("GossipPeer", path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def run_service(gp_module, layer, layer_id, addresses, env, service_id=1):
    """Deploys a GossipPeer the way E2Clab does for one layers_services.yaml service."""
    meta = {"name": "GossipPeer", "layer_name": layer, "layer_id": layer_id, "service_id": service_id,
            "_id": "%d_%d" % (layer_id, service_id), "env": env}
    svc = gp_module.GossipPeer([Host(a) for a in addresses], meta)
    svc.deploy()
    return svc
