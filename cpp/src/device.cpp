// Devices, threads and versions: which device names the core accepts, whether a GPU is usable
// and why not, libtorch's intra-op threads, and the torch versions (compiled and loaded).

#include "model_impl.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <dlfcn.h>

namespace llpr {

namespace {

// KEY=value of the build settings in at::show_config(), which is compiled into the libtorch
// that is actually loaded ("" when absent)
std::string build_setting(const std::string &key)
{
  const std::string config = at::show_config();
  const std::string pattern = key + "=";
  for (auto pos = config.find(pattern); pos != std::string::npos; pos = config.find(pattern, pos + 1)) {
    if (pos > 0 && config[pos - 1] != ' ' && config[pos - 1] != ',') continue;  // e.g. X_KEY=
    const auto start = pos + pattern.size();
    const auto end = config.find_first_of(", \n", start);
    return config.substr(start, end == std::string::npos ? std::string::npos : end - start);
  }
  return "";
}

}  // namespace

torch::Device parse_device(const std::string &device)
{
  std::string d = device.empty() ? "cpu" : device;
  if (d == "cpu") return torch::Device(torch::kCPU);
  if (!is_device_name(d)) throw Error("unknown device '" + device + "': use 'cpu', 'cuda' or 'cuda:N'");
  if (!torch::cuda::is_available())
    throw Error("device '" + device + "' requested, but no CUDA GPU is usable by this libtorch: " +
                cuda_unavailable_reason() + "; or use device cpu");
  try {
    torch::Device dev(d);
    if (dev.has_index() && dev.index() >= static_cast<int>(torch::cuda::device_count()))
      throw Error("device '" + device + "' requested, but only " +
                  std::to_string(torch::cuda::device_count()) + " CUDA device(s) are visible");
    return dev;
  } catch (const c10::Error &e) {
    throw Error("invalid device '" + device + "': " + first_line(e.what()));
  }
}

bool is_device_name(const std::string &d)
{
  if (d == "cpu" || d == "cuda") return true;
  if (d.rfind("cuda:", 0) != 0 || d.size() == 5 || d.size() > 9) return false;
  for (size_t k = 5; k < d.size(); ++k)
    if (d[k] < '0' || d[k] > '9') return false;
  return true;
}

void check_device(const std::string &device) { parse_device(device); }

std::string Model::device() const { return impl_->device.str(); }
bool Model::is_cuda() const { return impl_->device.is_cuda(); }

void set_num_threads(int n)
{
  if (n >= 1 && at::get_num_threads() != n) at::set_num_threads(n);
}
int get_num_threads() { return at::get_num_threads(); }

bool cuda_available() { return torch::cuda::is_available(); }
int cuda_device_count() { return static_cast<int>(torch::cuda::device_count()); }

std::string torch_version_compiled() { return TORCH_VERSION; }

std::string torch_version_runtime()
{
  const std::string version = build_setting("TORCH_VERSION");
  return version.empty() ? "unknown" : version;
}

std::string cuda_unavailable_reason()
{
  const std::string torch = "torch " + torch_version_runtime();
  const std::string cuda = build_setting("CUDA_VERSION");
  const std::string rebuild = "pip install --no-build-isolation --force-reinstall --no-deps . in the llpr sources";
  if (cuda.empty())
    return torch + " is a CPU-only build; to use a GPU, install the CUDA build of torch and rebuild llpr "
           "against it with " + rebuild;
  // the CUDA part of libtorch registers itself when libtorch_cuda.so is loaded (libtorch.so depends on it)
  void *handle = dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr)
    return torch + " is a CUDA " + cuda + " build but its libtorch_cuda.so is not loaded in this process; "
           "rebuild llpr against this torch with " + rebuild;
  dlclose(handle);
  return torch + ", a CUDA " + cuda + " build, sees " + std::to_string(torch::cuda::device_count()) +
         " CUDA devices: no NVIDIA GPU or driver is visible; check nvidia-smi and CUDA_VISIBLE_DEVICES";
}

}  // namespace llpr
