#include "models/model.h"

#include <charconv>
#include <cmath>
#include <string>

#include "common/log.h"
#include "kernels/train_ops.h"
#include "models/data/rng.h"

namespace mycel::models {

// A layer reads its input (the previous layer's output, or the batch), writes its own output
// buffer, and in backward turns the gradient of its output (which it may overwrite: the fused
// ReLU masks it in place) into the gradient of its parameters (views into the model's grads) and
// of its input (din, null for the first layer: not needed).
class Layer {
 public:
  virtual ~Layer() = default;
  virtual std::string describe() const = 0;
  virtual size_t out_dim() const = 0;  // per sample
  // Parameter tensors this layer owns, in flat-vector order (weight, bias).
  virtual std::vector<ParamView> param_shapes(const std::string& prefix) const { return {}; }
  // The model hands each layer pointers to its views, once the flat buffers exist.
  virtual void bind(float* params, float* grads) {}
  virtual Status reserve(Device& dev, int batch) {
    MYCEL_ASSIGN_OR_RETURN(out_, Buffer<float>::make(dev, size_t(batch) * out_dim()));
    MYCEL_ASSIGN_OR_RETURN(dout_, Buffer<float>::make(dev, size_t(batch) * out_dim()));
    return Ok();
  }
  virtual Status forward(Device& dev, const float* in, int batch) = 0;
  virtual Status backward(Device& dev, const float* in, float* din, int batch) = 0;

  float* out() { return out_.data(); }
  float* dout() { return dout_.data(); }

 protected:
  Buffer<float> out_, dout_;
};

namespace {

Status no_grow(const char* what) {
  return Error(Code::kInvalidArgument, std::string(what) + ": size overflow");
}

// y = act(x W^T + b): x [B, in], W [out, in].
class Linear final : public Layer {
 public:
  Linear(size_t in, size_t out, bool relu) : in_(in), outd_(out), relu_(relu) {}
  std::string describe() const override {
    return "linear " + std::to_string(in_) + " -> " + std::to_string(outd_) +
           (relu_ ? " relu" : "");
  }
  size_t out_dim() const override { return outd_; }
  std::vector<ParamView> param_shapes(const std::string& p) const override {
    return {{p + ".weight", 0, in_ * outd_, in_}, {p + ".bias", 0, outd_, in_}};
  }
  void bind(float* params, float* grads) override {
    w_ = params;
    b_ = params + in_ * outd_;
    dw_ = grads;
    db_ = grads + in_ * outd_;
  }
  Status forward(Device& dev, const float* in, int batch) override {
    MYCEL_CHECK(nn::gemm(dev, false, true, batch, int(outd_), int(in_), 1.f, in, int(in_), w_,
                         int(in_), 0.f, out(), int(outd_)));
    return nn::bias_act(dev, out(), b_, size_t(batch), outd_,
                        relu_ ? Activation::kRelu : Activation::kNone);
  }
  Status backward(Device& dev, const float* in, float* din, int batch) override {
    float* dy = dout();
    if (relu_) MYCEL_CHECK(nn::relu_backward(dev, dy, out(), size_t(batch) * outd_));
    // dW [out, in] = dy^T [out, B] x [B, in]; db = column sums of dy; dx [B, in] = dy W.
    MYCEL_CHECK(nn::gemm(dev, true, false, int(outd_), int(in_), batch, 1.f, dy, int(outd_), in,
                         int(in_), 0.f, dw_, int(in_)));
    MYCEL_CHECK(nn::bias_grad(dev, db_, dy, size_t(batch), outd_, 0.f));
    if (din)
      MYCEL_CHECK(nn::gemm(dev, false, false, batch, int(in_), int(outd_), 1.f, dy, int(outd_), w_,
                           int(in_), 0.f, din, int(in_)));
    return Ok();
  }

 private:
  size_t in_, outd_;
  bool relu_;
  float *w_ = nullptr, *b_ = nullptr, *dw_ = nullptr, *db_ = nullptr;
};

// NHWC convolution, stride 1, 'same' padding k/2, as im2col + one GEMM over the whole batch:
// col [B*H*W, k*k*C] x W^T [k*k*C, OC] = y [B*H*W, OC], which is NHWC again.
class Conv final : public Layer {
 public:
  Conv(int h, int w, int c, int oc, int k, bool relu) : relu_(relu), oc_(oc) {
    shape_.height = h;
    shape_.width = w;
    shape_.channels = c;
    shape_.kernel = k;
    shape_.stride = 1;
    shape_.pad = k / 2;
  }
  std::string describe() const override {
    return "conv " + std::to_string(shape_.kernel) + "x" + std::to_string(shape_.kernel) + " " +
           std::to_string(shape_.channels) + " -> " + std::to_string(oc_) + " on " +
           std::to_string(shape_.height) + "x" + std::to_string(shape_.width) +
           (relu_ ? " relu" : "");
  }
  size_t out_dim() const override { return size_t(shape_.out_h()) * shape_.out_w() * oc_; }
  std::vector<ParamView> param_shapes(const std::string& p) const override {
    size_t kkc = shape_.col_cols();
    return {{p + ".weight", 0, kkc * oc_, kkc}, {p + ".bias", 0, size_t(oc_), kkc}};
  }
  void bind(float* params, float* grads) override {
    w_ = params;
    b_ = params + shape_.col_cols() * oc_;
    dw_ = grads;
    db_ = grads + shape_.col_cols() * oc_;
  }
  Status reserve(Device& dev, int batch) override {
    MYCEL_CHECK(Layer::reserve(dev, batch));
    ConvShape s = shape_;
    s.batch = batch;
    MYCEL_ASSIGN_OR_RETURN(col_, Buffer<float>::make(dev, s.col_rows() * s.col_cols()));
    return Ok();
  }
  Status forward(Device& dev, const float* in, int batch) override {
    ConvShape s = shape_;
    s.batch = batch;
    const int m = int(s.col_rows()), kkc = int(s.col_cols());
    MYCEL_CHECK(nn::im2col(dev, in, col_.data(), s));
    MYCEL_CHECK(
        nn::gemm(dev, false, true, m, oc_, kkc, 1.f, col_.data(), kkc, w_, kkc, 0.f, out(), oc_));
    return nn::bias_act(dev, out(), b_, size_t(m), size_t(oc_),
                        relu_ ? Activation::kRelu : Activation::kNone);
  }
  Status backward(Device& dev, const float* in, float* din, int batch) override {
    ConvShape s = shape_;
    s.batch = batch;
    const int m = int(s.col_rows()), kkc = int(s.col_cols());
    float* dy = dout();
    if (relu_) MYCEL_CHECK(nn::relu_backward(dev, dy, out(), size_t(m) * oc_));
    // dW [OC, kkC] = dy^T [OC, M] col [M, kkC]. col still holds this batch's im2col (forward
    // ran last on it), so it is not recomputed.
    MYCEL_CHECK(
        nn::gemm(dev, true, false, oc_, kkc, m, 1.f, dy, oc_, col_.data(), kkc, 0.f, dw_, kkc));
    MYCEL_CHECK(nn::bias_grad(dev, db_, dy, size_t(m), size_t(oc_), 0.f));
    if (din) {
      // dcol [M, kkC] = dy [M, OC] W [OC, kkC], written over col (no longer needed), then
      // scattered back to the image.
      MYCEL_CHECK(
          nn::gemm(dev, false, false, m, kkc, oc_, 1.f, dy, oc_, w_, kkc, 0.f, col_.data(), kkc));
      MYCEL_CHECK(nn::col2im(dev, col_.data(), din, s));
    }
    return Ok();
  }

 private:
  ConvShape shape_;
  bool relu_;
  int oc_;
  float *w_ = nullptr, *b_ = nullptr, *dw_ = nullptr, *db_ = nullptr;
  Buffer<float> col_;
};

class MaxPool final : public Layer {
 public:
  MaxPool(int h, int w, int c, int window) {
    shape_.height = h;
    shape_.width = w;
    shape_.channels = c;
    shape_.window = window;
  }
  std::string describe() const override {
    return "maxpool " + std::to_string(shape_.window) + " on " + std::to_string(shape_.height) +
           "x" + std::to_string(shape_.width) + "x" + std::to_string(shape_.channels);
  }
  size_t out_dim() const override {
    return size_t(shape_.out_h()) * shape_.out_w() * shape_.channels;
  }
  Status reserve(Device& dev, int batch) override {
    MYCEL_CHECK(Layer::reserve(dev, batch));
    MYCEL_ASSIGN_OR_RETURN(argmax_, Buffer<int32_t>::make(dev, size_t(batch) * out_dim()));
    return Ok();
  }
  Status forward(Device& dev, const float* in, int batch) override {
    PoolShape s = shape_;
    s.batch = batch;
    return nn::maxpool_forward(dev, in, out(), argmax_.data(), s);
  }
  Status backward(Device& dev, const float* in, float* din, int batch) override {
    if (!din) return Ok();
    PoolShape s = shape_;
    s.batch = batch;
    return nn::maxpool_backward(dev, dout(), argmax_.data(), din, s);
  }

 private:
  PoolShape shape_;
  Buffer<int32_t> argmax_;
};

Result<int> parse_int(std::string_view s, const std::string& spec) {
  int v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || v <= 0 || v > (1 << 20))
    return Error(Code::kInvalidArgument,
                 "model spec '" + spec + "': '" + std::string(s) + "' is not a positive size");
  return v;
}

Result<std::vector<int>> parse_list(std::string_view s, const std::string& spec) {
  std::vector<int> out;
  while (true) {
    size_t comma = s.find(',');
    MYCEL_ASSIGN_OR_RETURN(int v, parse_int(s.substr(0, comma), spec));
    out.push_back(v);
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
  }
  return out;
}

}  // namespace

std::string ModelSpec::text() const {
  switch (kind) {
    case Kind::kLogReg:
      return "logreg";
    case Kind::kMlp: {
      std::string s = "mlp:";
      for (size_t i = 0; i < hidden.size(); ++i) {
        if (i) s += ',';
        s += std::to_string(hidden[i]);
      }
      return s;
    }
    case Kind::kCnn:
      return "cnn:" + std::to_string(conv1) + "," + std::to_string(conv2) + "," +
             std::to_string(fc);
  }
  return "?";
}

Result<ModelSpec> parse_model_spec(std::string_view text) {
  const std::string spec(text);
  size_t colon = text.find(':');
  std::string_view name = text.substr(0, colon);
  std::string_view args = colon == std::string_view::npos ? "" : text.substr(colon + 1);
  const bool has_args = colon != std::string_view::npos;
  ModelSpec m;
  if (name == "logreg" || name == "logistic") {
    if (has_args)
      return Error(Code::kInvalidArgument, "model spec '" + spec + "': logreg takes no sizes");
    m.kind = ModelSpec::Kind::kLogReg;
  } else if (name == "2nn" && !has_args) {
    m.kind = ModelSpec::Kind::kMlp;
    m.hidden = {200, 200};
  } else if (name == "mlp") {
    m.kind = ModelSpec::Kind::kMlp;
    if (has_args) {
      MYCEL_ASSIGN_OR_RETURN(m.hidden, parse_list(args, spec));
    } else {
      m.hidden = {200, 200};
    }
  } else if (name == "cnn") {
    m.kind = ModelSpec::Kind::kCnn;
    if (has_args) {
      MYCEL_ASSIGN_OR_RETURN(auto v, parse_list(args, spec));
      if (v.size() != 3)
        return Error(Code::kInvalidArgument,
                     "model spec '" + spec + "': cnn takes three sizes (conv1,conv2,fc)");
      m.conv1 = v[0];
      m.conv2 = v[1];
      m.fc = v[2];
    }
  } else {
    return Error(
        Code::kInvalidArgument,
        "unknown model '" + spec + "' (expected logreg, mlp[:H1,H2,...], 2nn, cnn[:C1,C2,FC])");
  }
  return m;
}

Model::Model(Device& dev, const ModelSpec& spec, const InputShape& input)
    : dev_(&dev), spec_(spec), input_(input) {}
Model::~Model() = default;

Result<std::unique_ptr<Model>> Model::create(Device& dev, const ModelSpec& spec,
                                             const InputShape& in) {
  if (in.dim == 0 || in.classes < 2)
    return Error(Code::kInvalidArgument, "model input needs dim > 0 and at least 2 classes");
  if (in.dim > (size_t(1) << 28)) return no_grow("model input");
  std::unique_ptr<Model> m(new Model(dev, spec, in));
  auto& L = m->layers_;
  std::vector<std::string> names;
  switch (spec.kind) {
    case ModelSpec::Kind::kLogReg:
      L.push_back(std::make_unique<Linear>(in.dim, size_t(in.classes), false));
      names.push_back("fc");
      break;
    case ModelSpec::Kind::kMlp: {
      if (spec.hidden.empty()) return Error(Code::kInvalidArgument, "mlp needs hidden sizes");
      size_t prev = in.dim;
      for (int h : spec.hidden) {
        if (h <= 0) return Error(Code::kInvalidArgument, "mlp hidden sizes must be positive");
        L.push_back(std::make_unique<Linear>(prev, size_t(h), true));
        names.push_back("fc" + std::to_string(names.size() + 1));
        prev = size_t(h);
      }
      L.push_back(std::make_unique<Linear>(prev, size_t(in.classes), false));
      names.push_back("fc" + std::to_string(names.size() + 1));
      break;
    }
    case ModelSpec::Kind::kCnn: {
      if (in.channels <= 0 || in.height <= 0 || in.width <= 0 ||
          size_t(in.channels) * in.height * in.width != in.dim)
        return Error(Code::kInvalidArgument,
                     "the cnn needs image input (channels x height x width == dim); this data "
                     "set is tabular");
      if (in.height < 4 || in.width < 4)
        return Error(Code::kInvalidArgument, "the cnn needs images of at least 4x4");
      if (spec.conv1 <= 0 || spec.conv2 <= 0 || spec.fc <= 0 || spec.kernel <= 0 ||
          spec.kernel % 2 == 0)
        return Error(Code::kInvalidArgument, "cnn sizes must be positive and the kernel odd");
      int h = in.height, w = in.width;
      L.push_back(std::make_unique<Conv>(h, w, in.channels, spec.conv1, spec.kernel, true));
      names.push_back("conv1");
      L.push_back(std::make_unique<MaxPool>(h, w, spec.conv1, 2));
      names.push_back("pool1");
      h /= 2;
      w /= 2;
      L.push_back(std::make_unique<Conv>(h, w, spec.conv1, spec.conv2, spec.kernel, true));
      names.push_back("conv2");
      L.push_back(std::make_unique<MaxPool>(h, w, spec.conv2, 2));
      names.push_back("pool2");
      h /= 2;
      w /= 2;
      L.push_back(std::make_unique<Linear>(size_t(h) * w * spec.conv2, size_t(spec.fc), true));
      names.push_back("fc1");
      L.push_back(std::make_unique<Linear>(size_t(spec.fc), size_t(in.classes), false));
      names.push_back("fc2");
      break;
    }
  }
  // Lay the tensors out one after another in the flat vector.
  size_t total = 0;
  std::vector<size_t> layer_offset;
  for (size_t i = 0; i < L.size(); ++i) {
    layer_offset.push_back(total);
    for (auto v : L[i]->param_shapes(names[i])) {
      v.offset = total;
      total += v.count;
      m->views_.push_back(v);
    }
  }
  if (total > (size_t(1) << 31)) return no_grow("model parameters");
  MYCEL_ASSIGN_OR_RETURN(m->params_, Buffer<float>::make(dev, total));
  MYCEL_ASSIGN_OR_RETURN(m->grads_, Buffer<float>::make(dev, total));
  for (size_t i = 0; i < L.size(); ++i)
    L[i]->bind(m->params_.data() + layer_offset[i], m->grads_.data() + layer_offset[i]);
  MYCEL_CHECK(dev.memset(m->params_.data(), 0, m->params_.bytes()));
  MYCEL_CHECK(dev.memset(m->grads_.data(), 0, m->grads_.bytes()));
  return m;
}

Status Model::init(uint64_t seed) {
  // One generator for the whole vector, in flat order: the same seed gives the same model.
  data::Rng rng(seed);
  std::vector<float> host(params_.size());
  for (const auto& v : views_) {
    const double bound = 1.0 / std::sqrt(double(v.fan_in));
    for (size_t i = 0; i < v.count; ++i)
      host[v.offset + i] = float((2.0 * rng.uniform() - 1.0) * bound);
  }
  return upload_params(host);
}

Status Model::reserve(int batch) {
  if (batch <= 0) return Error(Code::kInvalidArgument, "batch must be positive");
  if (batch <= capacity_) return Ok();
  for (auto& l : layers_) MYCEL_CHECK(l->reserve(*dev_, batch));
  if (spec_.kind == ModelSpec::Kind::kCnn && input_.channels > 1) {
    MYCEL_ASSIGN_OR_RETURN(nhwc_, Buffer<float>::make(*dev_, size_t(batch) * input_.dim));
  }
  capacity_ = batch;
  return Ok();
}

Status Model::forward_layers(const float* x, int batch) {
  if (!x) return Error(Code::kInvalidArgument, "model forward: null input");
  MYCEL_CHECK(reserve(batch));
  if (nhwc_.data()) {
    MYCEL_CHECK(nn::nchw_to_nhwc(*dev_, x, nhwc_.data(), batch, input_.channels, input_.height,
                                 input_.width));
    x = nhwc_.data();
  }
  const float* in = x;
  for (auto& l : layers_) {
    MYCEL_CHECK(l->forward(*dev_, in, batch));
    in = l->out();
  }
  return Ok();
}

Status Model::forward(const float* x, int batch) { return forward_layers(x, batch); }

const float* Model::logits() const { return layers_.back()->out(); }

Status Model::evaluate(const float* x, const int32_t* y, int batch, float* acc) {
  if (!y) return Error(Code::kInvalidArgument, "model evaluate: null labels");
  MYCEL_CHECK(forward_layers(x, batch));
  return nn::softmax_xent(*dev_, layers_.back()->out(), y, size_t(batch), input_.classes, nullptr,
                          0.f, acc);
}

Status Model::forward_backward(const float* x, const int32_t* y, int batch, float* acc) {
  if (!y) return Error(Code::kInvalidArgument, "model forward_backward: null labels");
  MYCEL_CHECK(forward_layers(x, batch));
  // The loss gradient lands directly in the last layer's output-gradient buffer.
  MYCEL_CHECK(nn::softmax_xent(*dev_, layers_.back()->out(), y, size_t(batch), input_.classes,
                               layers_.back()->dout(), 1.f / float(batch), acc));
  const float* x_in = nhwc_.data() ? nhwc_.data() : x;
  for (size_t i = layers_.size(); i-- > 0;) {
    const float* in = i == 0 ? x_in : layers_[i - 1]->out();
    float* din = i == 0 ? nullptr : layers_[i - 1]->dout();
    MYCEL_CHECK(layers_[i]->backward(*dev_, in, din, batch));
  }
  return Ok();
}

std::string Model::summary() const {
  std::string s;
  for (auto& l : layers_) s += "  " + l->describe() + "\n";
  s += "  parameters: " + std::to_string(params_.size());
  return s;
}

Result<std::vector<float>> Model::download_params() const {
  std::vector<float> host(params_.size());
  MYCEL_CHECK(params_.download(host.data(), host.size()));
  return host;
}

Status Model::upload_params(const std::vector<float>& host) {
  if (host.size() != params_.size())
    return Error(Code::kInvalidArgument, "upload_params: " + std::to_string(host.size()) +
                                             " values for a model of " +
                                             std::to_string(params_.size()));
  MYCEL_CHECK(params_.upload(host.data(), host.size()));
  return dev_->sync();
}

Result<std::unique_ptr<Model>> make_model(Device& dev, std::string_view spec,
                                          const InputShape& input, uint64_t seed) {
  MYCEL_ASSIGN_OR_RETURN(auto s, parse_model_spec(spec));
  MYCEL_ASSIGN_OR_RETURN(auto m, Model::create(dev, s, input));
  MYCEL_CHECK(m->init(seed));
  return m;
}

}  // namespace mycel::models
