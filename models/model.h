// Models over one flat parameter vector. A model's parameters, its gradients (and, in
// optim.h, the optimizer's state) each live in ONE contiguous Buffer<float> on the model's
// device; every layer's weight and bias are views (offset, count) into it. That is what lets the
// merge and codec kernels treat any model as one vector: params().data() is the model.
//
// Layout of the flat vector: layers in order, for each its weight then its bias.
//   Linear(in -> out): weight [out, in] (PyTorch's layout), bias [out].
//   Conv(C -> OC, k x k): weight [OC, k, k, C] (kernel rows, kernel columns, input channels:
//     the im2col column order of kernels/train_ops.h), bias [OC]. PyTorch stores [OC, C, k, k];
//     a converter would permute the last three axes.
// Activations are batch-first row-major, images NHWC (see kernels/train_ops.h for why).
//
// Models (text specs for make_model / the command line):
//   "logreg"            multinomial logistic regression: Linear(dim -> classes)
//   "mlp:H1,H2,..."     Linear+ReLU per hidden size, then Linear(-> classes); "mlp" = "mlp:200,200"
//                       (FedAvg's "2NN": 784-200-200-10, 199,210 parameters)
//   "2nn"               alias of "mlp:200,200"
//   "cnn[:C1,C2,FC]"    FedAvg's CNN, default 32,64,512: conv 5x5 C1 ('same', padding 2) -> ReLU
//                       -> maxpool 2 -> conv 5x5 C2 ('same') -> ReLU -> maxpool 2 -> Linear FC ->
//                       ReLU -> Linear classes. 28x28x1: 28 -> 14 -> 7, fc input 7*7*64 = 3136,
//                       1,663,370 parameters, as in McMahan et al. 2017 (which is how 'same'
//                       padding was chosen: the paper's parameter count needs it).
// Initialisation is PyTorch's default for nn.Linear / nn.Conv2d: kaiming_uniform(a = sqrt(5)),
// i.e. weights ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), biases ~ U(-1/sqrt(fan_in), ...), drawn from
// a seeded generator whose output is fully specified (same seed, same model on every platform).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "kernels/device.h"

namespace mycel::models {

// What a model consumes: dim features per row (channels * height * width for images, stored
// NCHW as the data sets hold them) and the number of classes.
struct InputShape {
  size_t dim = 0;
  int channels = 0, height = 0, width = 0;  // 0 for tabular data
  int classes = 0;
};

struct ModelSpec {
  enum class Kind { kLogReg, kMlp, kCnn };
  Kind kind = Kind::kLogReg;
  std::vector<int> hidden;               // mlp: hidden sizes
  int conv1 = 32, conv2 = 64, fc = 512;  // cnn
  int kernel = 5;                        // cnn: kernel size (odd; padding kernel/2 keeps the size)
  std::string text() const;              // canonical spec, parseable again
};

// "logreg", "mlp", "mlp:200,200", "2nn", "cnn", "cnn:32,64,512". Errors are kInvalidArgument.
Result<ModelSpec> parse_model_spec(std::string_view spec);

// One tensor of the flat vector.
struct ParamView {
  std::string name;   // "fc1.weight", "conv2.bias", ...
  size_t offset = 0;  // in floats, into params() and grads()
  size_t count = 0;
  size_t fan_in = 0;  // what the initialisation bound uses
};

class Layer;

class Model {
 public:
  // Builds the layers and allocates params/grads on dev (the model keeps a reference: dev must
  // outlive it). Parameters are left uninitialised until init(). The CNN needs an image input
  // (channels, height, width > 0, channels * height * width == dim) of at least 4x4 (two
  // poolings by 2).
  static Result<std::unique_ptr<Model>> create(Device& dev, const ModelSpec& spec,
                                               const InputShape& input);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // PyTorch's default initialisation from a seed.
  Status init(uint64_t seed);

  // Forward and backward on one batch already on the device: x [batch, dim] (NCHW rows for
  // images), y [batch] int32 labels. Overwrites grads() with the gradient of the MEAN
  // cross-entropy over the batch, and adds (loss sum, correct count) to acc[0], acc[1] when acc
  // (two floats in device memory) is not null. Nothing is allocated once the workspace holds
  // `batch` rows (see reserve), and nothing synchronises the host.
  Status forward_backward(const float* x, const int32_t* y, int batch, float* acc);
  // Forward only: adds (loss sum, correct count) to acc.
  Status evaluate(const float* x, const int32_t* y, int batch, float* acc);
  // Forward only; logits() then holds [batch, classes] on the device.
  Status forward(const float* x, int batch);
  const float* logits() const;

  // Sizes the activation workspace for batches of up to `batch` rows (done on demand by the
  // calls above; call it up front to keep allocation out of the first step).
  Status reserve(int batch);

  Device& device() { return *dev_; }
  const ModelSpec& spec() const { return spec_; }
  const InputShape& input() const { return input_; }
  size_t num_params() const { return params_.size(); }
  Buffer<float>& params() { return params_; }
  Buffer<float>& grads() { return grads_; }
  const Buffer<float>& params() const { return params_; }
  const Buffer<float>& grads() const { return grads_; }
  const std::vector<ParamView>& param_views() const { return views_; }
  std::string summary() const;  // one line per layer, then the parameter count

  // Host copies (sync), for tests, checkpoints and the command line.
  Result<std::vector<float>> download_params() const;
  Status upload_params(const std::vector<float>& host);

 private:
  Model(Device& dev, const ModelSpec& spec, const InputShape& input);
  Status forward_layers(const float* x, int batch);

  Device* dev_;
  ModelSpec spec_;
  InputShape input_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<ParamView> views_;
  Buffer<float> params_, grads_;
  Buffer<float> nhwc_;  // multi-channel CNN input converted from NCHW
  int capacity_ = 0;
};

// parse_model_spec + Model::create + init.
Result<std::unique_ptr<Model>> make_model(Device& dev, std::string_view spec,
                                          const InputShape& input, uint64_t seed);

}  // namespace mycel::models
