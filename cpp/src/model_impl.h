// Private to libllpr_core: the state of a loaded Model (Model::Impl) and the helpers the core's
// files share. The core's files are split by concern:
//   model_file.cpp    the file contract: open, verify, validate the metadata, the messages
//   uncertainty.cpp   the per-step uncertainty formulas: native kernel or the head's TorchScript
//                     methods, chosen on load by a probe
//   run.cpp           the model's passes: evaluate, the ensemble, a biased forward/backward
//   device.cpp        devices, threads, CUDA diagnostics, torch versions
#pragma once

#include "llpr/core.h"
#include "native_head.h"

#include <torch/script.h>

#include <memory>
#include <string>
#include <vector>

namespace llpr {

// the first line of a (multi-line) error text, without trailing blanks
std::string first_line(const std::string &text);
// x with all its significant digits
std::string fmt_double(double x);
// the torch device of a device name; Error naming the problem (unknown name, no usable GPU)
torch::Device parse_device(const std::string &device);
// Read and check every item of the file contract; all problems in one Error.
Metadata validate(torch::jit::Module &module, const std::string &path);

using OutputDict = c10::Dict<c10::IValue, c10::IValue>;

struct Model::Impl {
  torch::jit::Module module;
  Metadata meta;
  torch::Device device{torch::kCPU};
  torch::Dtype dtype = torch::kFloat64;
  torch::jit::Module head;  // the LLPR head (submodule `head`), on device
  torch::Tensor features;   // cached (n_centers, F), model dtype, on device (set by set_features)
  int64_t features_generation = 0;
  void set_features(torch::Tensor f)
  {
    features = std::move(f);
    ++features_generation;
  }
  // no cached features (before the first evaluation, a rank without centres, a failed one)
  void clear_features()
  {
    set_features(torch::zeros({0, meta.n_features}, torch::TensorOptions().dtype(dtype).device(device)));
  }
  // autograd graph of the latest forward() (forward_graph's second output) until backward()
  c10::IValue graph;
  bool has_graph = false;
  int64_t graph_atoms = 0, graph_centers = 0;
  Request graph_request;

  // --- uncertainty.cpp ---
  // The uncertainty formulas are those of the file's LLPR head (llpr.uncertainty.llpr_head.LLPRHead),
  // run through TorchScript: one implementation, in Python, for Python and C++. On the CPU the
  // per-step ones run natively instead (native_head.h), for a file whose head they were
  // checked to reproduce on load.
  std::unique_ptr<NativeHead> native_head;  // null: the head's TorchScript methods throughout
  std::string uncertainty_path;             // Metadata::uncertainty_evaluation
  // the native formulas, if this CPU runs them and they reproduce the file's head
  void choose_uncertainty();
  // whether features `f` take the native path
  bool native(const torch::Tensor &f) const;
  // q of the rows of CPU features `f` (n x F) by the native kernel into `q` (n values), the
  // rows split between torch's intra-op threads as the head's matrix product would be
  void native_qform(const torch::Tensor &f, double *q) const;
  // native_qform of the rows of `f` into a buffer that holds them until the next call
  mutable std::vector<double> q_buffer;
  const double *native_q(const torch::Tensor &f) const;
  // q = f^T C^-1 f per row (float64), by LLPRHead.quadratic_form; copied to `out` (n values)
  void qform(const torch::Tensor &f, double *out) const;
  // sigma = alpha sqrt(q), lpr = 1 / q by LLPRHead.local_uncertainty, copied to the host
  // (either pointer may be null)
  void uncertainty(const torch::Tensor &f, double *sigma, double *lpr) const;
  // gamma = q / max_train_q by LLPRHead.extrapolation_grade, copied to the host
  void grade(const torch::Tensor &f, double *gamma) const;
  // alpha^2 s^T C^-1 s by LLPRHead.energy_variance, of one summed feature vector
  double variance(const torch::Tensor &s) const;
  // q of the cached features on the native path, computed once per evaluation (sigma_i and
  // gamma_i of one step share it)
  mutable std::vector<double> q_cached;
  mutable int64_t q_cached_generation = -1;
  const double *cached_q() const;
  // host features (n x F, float64) as a tensor on the model's device
  torch::Tensor host_features(const double *features, int64_t n) const;

  // --- run.cpp ---
  // forward()/ensemble_forward() arguments, on the device, in the model's dtype
  std::vector<torch::jit::IValue> arguments(const Inputs &in, const Request &req) const;
  // run `method` on `args`, with its failure as an Error naming the method
  c10::IValue call(const char *method, std::vector<torch::jit::IValue> args);
  static OutputDict as_dict(const c10::IValue &output, const char *method);
  // run `method` (evaluate or ensemble_forward) on the inputs; its dict of outputs
  OutputDict run(const char *method, const Inputs &in, const Request &req);
  // the centres' energies and features of an evaluate() or forward_graph() result, into `out`
  // and the feature cache (after the finiteness checks)
  void take_energies_features(const OutputDict &result, const char *method, int64_t N, const Request &req,
                              Outputs &out);
  // output `key` of `method`'s dict as float64 on the host; an error unless it has n values
  static torch::Tensor take(const OutputDict &result, const char *method, const char *key, int64_t n);
  static void copy(const OutputDict &result, const char *method, const char *key, std::vector<double> &v);
  // float64 sum of cached feature rows on the CPU (`rows` null: rows 0 .. n - 1), without
  // the temporaries of a torch reduction
  void sum_rows(const int64_t *rows, int64_t n, double *out) const;
};

}  // namespace llpr
