// `mycel deploy e2clab`: an experiment's E2Clab scenario for Grid'5000 (layers_services.yaml,
// network.yaml, workflow.yaml, workflow_env.yaml, and the artifacts the workflow pushes),
// from the `deploy:` section of the experiment config. The section is read here, not by
// runtime/config (which accepts a top-level `deploy:` mapping and ignores it).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "runtime/config/config.h"

namespace mycel::runtime::deploy {

// One E2Clab layer: nodes of one Grid'5000 cluster (or named servers), each running
// peers_per_node peers (one UCX port each: base_port, base_port + 1, ...).
struct Layer {
  std::string name;                  // E2Clab layer name, lower case (edge, cloud)
  std::string cluster;               // Grid'5000 cluster: estats, chifflot, chuc, ...
  std::vector<std::string> servers;  // explicit nodes (instead of, or as well as, cluster)
  int nodes = 0;
  int peers_per_node = 1;
};

// Emulated link between layers (E2Clab network.yaml, applied with tc netem by EnOSlib).
struct Link {
  std::string src, dst;              // layer names
  std::string delay;                 // "20ms"
  std::string rate;                  // "100mbit" (kbit | mbit | gbit)
  std::string loss;                  // "0.5%" or "" (none)
  bool symmetric = true;
};

struct Spec {
  std::string job_name;              // default: the experiment's name
  std::string walltime = "01:00:00";
  std::string queue = "default";     // default | production | besteffort | testing
  std::string reservation;           // "YYYY-mm-dd HH:MM:SS" or ""
  std::vector<std::string> job_type; // OAR job types; "exotic" is added for estats
  std::string env_name;              // kadeploy image ("" = the standard environment)
  std::string prepare = "build";     // build: build on each node | push: copy prebuilt binaries
  std::string monitoring = "dstat";  // dstat | none
  std::string remote_dir = "/tmp/mycel";
  int base_port = 13000;
  std::vector<Layer> layers;
  std::vector<Link> network;
};

// Reads the top-level `deploy:` mapping of an experiment config's YAML. Every error names the
// key (deploy.layers[1].nodes), the file and line, and what was expected; unknown keys are
// errors. Rules that need the experiment (peers.count) are checked by check_spec.
Result<Spec> parse_deploy(std::string_view yaml, std::string_view source = "<config>");

// Cross-checks a spec against the experiment: peers.transport is ucx, the peers fit on the
// layers' nodes and every node gets one, ports stay below 65536, the walltime covers
// run.duration_s; fills the defaults that depend on it (job_name, job_type).
Status check_spec(const ExperimentConfig& cfg, Spec& spec);

// Where each peer runs. Peers are dealt layer by layer, node by node (nodes in the order of
// their host names, as GossipPeer.py and launch-peers.sh sort them), peers_per_node per node.
struct Placement {
  int id = 0;
  int layer = 0;    // index in Spec::layers
  int node = 0;     // index of the node within its layer
  int slot = 0;     // index of the peer on its node
  int port = 0;     // base_port + slot
};
std::vector<Placement> place_peers(const Spec& spec, int peer_count);
// Peers each layer holds (after place_peers' dealing).
std::vector<int> peers_per_layer(const Spec& spec, int peer_count);

struct File {
  std::string path;  // relative to the scenario folder
  std::string text;
  bool executable = false;
};

// The scenario: layers_services.yaml, network.yaml, workflow.yaml, workflow_env.yaml and
// artifacts/{experiment.yaml, launch-peers.sh}. `config_text` is the experiment file as given
// (copied to artifacts/experiment.yaml), `overrides` the --set options the peers also get.
Result<std::vector<File>> make_scenario(const ExperimentConfig& cfg, const Spec& spec,
                                        std::string_view config_text,
                                        const std::vector<std::string>& overrides);

}  // namespace mycel::runtime::deploy
