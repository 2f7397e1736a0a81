// Partitioners: how a training set is dealt out to N peers, deterministic from a seed.
//   iid            a seeded shuffle cut into N near-equal parts;
//   dirichlet:A    per class, proportions p ~ Dir(A, ..., A) over the peers and the class's
//                  (shuffled) samples cut at the cumulative proportions (the label-skew scheme
//                  of Hsu et al. 2019 as used by NIID-Bench and FedLab). Small A: each peer sees
//                  few classes; large A: close to IID. Every peer gets at least `min_samples`
//                  (dirichlet:A:M, default 10): the draw is repeated (up to 100 times, fewer
//                  for very many peers) until that holds, and if it never does, samples are
//                  moved from the largest peers to the short ones, one random sample at a time;
//   shards:K       FedAvg's pathological split (McMahan et al. 2017): samples sorted by label,
//                  cut into K*N shards, K random shards per peer. Shards are cut inside each
//                  class (a class gets shards in proportion to its size), so a peer holds at
//                  most K classes; when K*N is below the number of classes this is impossible
//                  without dropping data, and the sorted order is cut straight (FedAvg's own
//                  cut), where a shard can straddle two classes;
//   one-class      peer i holds class (i mod C) of the C non-empty classes, as in the
//                  gossip-learning papers; when N > C, the peers sharing a class split its
//                  samples disjointly and near-equally. Needs N >= C, or data would be dropped.
// Every scheme gives disjoint index lists that together cover every sample exactly once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "models/data/dataset.h"

namespace mycel::data {

struct PartitionSpec {
  enum class Scheme { kIid, kDirichlet, kShards, kOneClass };
  Scheme scheme = Scheme::kIid;
  double alpha = 0.5;          // dirichlet
  size_t min_samples = 10;     // dirichlet: per peer
  size_t shards_per_peer = 2;  // shards
};

// "iid", "dirichlet:0.5", "dirichlet:0.5:20" (alpha, minimum per peer), "shards", "shards:2",
// "one-class". A malformed spec is kInvalidArgument with the accepted forms in the message.
Result<PartitionSpec> parse_partition_spec(std::string_view spec);
std::string to_string(const PartitionSpec& spec);

struct Partition {
  std::vector<std::vector<size_t>> peers;  // peers[p]: sample indices of peer p, ascending
};

// Deals `labels` (each in [0, classes)) out to `peers` peers. Errors (kInvalidArgument): no
// peers, more peers than samples, a label out of range, dirichlet's minimum impossible
// (peers * min_samples > n), one-class with fewer peers than non-empty classes.
Result<Partition> partition(std::span<const int32_t> labels, int classes, size_t peers,
                            const PartitionSpec& spec, uint64_t seed);

// hist[p][c]: samples of class c held by peer p.
std::vector<std::vector<size_t>> label_histograms(const Partition& part,
                                                  std::span<const int32_t> labels, int classes);

// Mean over peers (with samples) of the total-variation distance between the peer's label
// distribution and the global one: 0 for a perfectly IID split, towards 1 for full skew.
double mean_label_skew(const std::vector<std::vector<size_t>>& hist);

// A text table: one row per peer (samples, then one column per class), a total row, and the
// mean skew. `max_rows` > 0 elides the middle rows of a long table.
std::string format_histograms(const std::vector<std::vector<size_t>>& hist, size_t max_rows = 0);

// CSV: header "peer,samples,c0,c1,...", one row per peer.
Status write_histograms_csv(const std::string& path, const std::vector<std::vector<size_t>>& hist);

// The data set a peer trains on: a copy of its rows.
Result<Dataset> peer_dataset(const Dataset& d, const Partition& part, size_t peer);

}  // namespace mycel::data
