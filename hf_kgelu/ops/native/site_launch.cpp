// The eager host path of one λ-GELU site (one θ, contiguous CUDA input) in C++.
//
// Why: a GPT-2 step's forward is host-bound even with torch's GELU, so every microsecond of
// Python per site shows in the step time. Here the autograd node, the output allocations and the
// launches of the Triton-compiled kernels are C++: Python makes one call per site.
//
// The kernels are the ones in triton_kernels.py, compiled by Triton. The op's public launch registers
// each compiled kernel here (`register_kernel`) the first time it launches it for a site shape:
// its CUfunction, grid, block, shared memory, and which runtime arguments are kernel parameters
// (Triton drops the ones it specialises to constants) with the integer values it passed. A
// registration is keyed by (kernel, device, dtype, need flags, element count, 16-byte
// alignment of each pointer argument), which fixes every integer argument and Triton
// specialisation, so a hit launches exactly what the Python launcher would have launched.
//
// Nothing here trusts Triton's private launch conventions blindly: a registration is refused unless
// the driver (cuFuncGetParamInfo) reports the kernel's parameters as this file will pass them (the
// runtime arguments, then only pointer-sized scratch parameters, passed as null), and the Python
// side then runs each new registration once here and once through Triton on the real inputs and
// turns this path off for the process unless both give the same bits (`check_forward`,
// `check_backward`).
//
// Misses: `site_forward` returns None and the caller takes the Python path (which registers the
// kernels); the backward calls `hf_kgelu_native::fallback_backward`, the Python backward,
// through the dispatcher. No CUDA headers are needed: cuLaunchKernel comes from the driver
// library torch has loaded, the stream through c10's device-generic interface.

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The kernels' runtime arguments, in their order in kgelu.py.
enum Kernel : int64_t { FORWARD = 0, BACKWARD = 1, FINISH = 2 };
constexpr int kMaxArgs = 9;  // the backward has nine
constexpr int kMaxScratch = 4;  // Triton appends scratch pointers (global, profile: two in 3.6), passed as null

struct Entry {
  void* function = nullptr;
  unsigned grid_x = 1, grid_y = 1, threads = 32, shared = 0;
  std::string types;  // per argument: 'p' pointer, 'f' float32, 'i' int32, 'l' int64, '-' not a parameter
  std::vector<int64_t> ints;  // per argument: the integer value the Python launcher passed
  int scratch = 0;  // trailing pointer-sized parameters after the arguments (null here)
};

struct Key {
  int64_t kernel, device, dtype, flags, numel, aligned;
  bool operator==(const Key& o) const {
    return kernel == o.kernel && device == o.device && dtype == o.dtype && flags == o.flags && numel == o.numel &&
        aligned == o.aligned;
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    size_t h = std::hash<int64_t>()(k.numel);
    for (int64_t part : {k.kernel, k.device, k.dtype, k.flags, k.aligned}) {
      h = h * 1000003u ^ std::hash<int64_t>()(part);
    }
    return h;
  }
};

std::shared_mutex table_mutex;
std::unordered_map<Key, std::shared_ptr<const Entry>, KeyHash> table;
std::atomic<int64_t> hits{0}, misses{0};
std::atomic<bool> enabled{true};  // false once a self-check failed: every call goes to Python

std::shared_ptr<const Entry> find(const Key& key) {
  std::shared_lock<std::shared_mutex> lock(table_mutex);
  auto it = table.find(key);
  return it == table.end() ? nullptr : it->second;
}

// Errors are std::runtime_error (torch raises them as RuntimeError): a c10::Error thrown from this
// library (TORCH_CHECK) crashed the process with torch 2.11's wheel, while errors thrown inside
// torch pass through these frames fine.
[[noreturn]] void fail(const std::string& message) { throw std::runtime_error("hf_kgelu: " + message); }

using LaunchKernel = int (*)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*, void**,
                             void**);
using ParamInfo = int (*)(void*, size_t, size_t*, size_t*);

void* driver_symbol(const char* name) {
  static void* lib = [] {
    void* handle = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
    if (handle == nullptr) handle = dlopen("libcuda.so.1", RTLD_LAZY);
    if (handle == nullptr) fail(std::string("libcuda.so.1 (the CUDA driver) could not be opened: ") + dlerror());
    return handle;
  }();
  return dlsym(lib, name);
}

LaunchKernel driver_launch() {
  static LaunchKernel fn = [] {
    auto found = reinterpret_cast<LaunchKernel>(driver_symbol("cuLaunchKernel"));
    if (found == nullptr) fail("the CUDA driver has no cuLaunchKernel");
    return found;
  }();
  return fn;
}

size_t argument_size(char type) { return type == 'p' || type == 'l' ? 8 : 4; }

// How many scratch parameters follow the arguments, if the driver reports the kernel's parameters
// as `types` describes them followed only by pointer-sized ones; -1 otherwise (or when this driver
// cannot tell: cuFuncGetParamInfo is CUDA 12.4+), and the kernel is then not registered.
int scratch_parameters(void* function, const std::string& types) {
  auto info = reinterpret_cast<ParamInfo>(driver_symbol("cuFuncGetParamInfo"));
  if (info == nullptr) return -1;
  size_t index = 0, offset = 0, size = 0;
  for (char type : types) {
    if (type == '-') continue;  // specialised away by Triton: not a parameter
    if (info(function, index++, &offset, &size) != 0 || size != argument_size(type)) return -1;
  }
  int scratch = 0;
  while (info(function, index++, &offset, &size) == 0) {
    if (size != 8 || ++scratch > kMaxScratch) return -1;
  }
  return scratch;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

float inverse_tau(double tau) {
  // exactly the Python launcher's _inv_tau: τ rounded to float32, its reciprocal in double,
  // rounded to float32 (a float32 division could differ by an ulp: one rounding, not two)
  float tau32 = static_cast<float>(tau);
  return static_cast<float>(1.0 / static_cast<double>(tau32));
}

void launch(const Entry& entry, const void* const* pointers, float inv_tau, const c10::Device& device) {
  union Slot {
    uint64_t pointer;
    uint32_t float_bits;
    int32_t i32;
    int64_t i64;
  };
  Slot slots[kMaxArgs + kMaxScratch] = {};
  void* params[kMaxArgs + kMaxScratch];
  int count = 0;
  for (size_t i = 0; i < entry.types.size(); ++i) {
    switch (entry.types[i]) {
      case 'p': slots[i].pointer = reinterpret_cast<uint64_t>(pointers[i]); break;
      case 'f': std::memcpy(&slots[i].float_bits, &inv_tau, sizeof(float)); break;
      case 'i': slots[i].i32 = static_cast<int32_t>(entry.ints[i]); break;
      case 'l': slots[i].i64 = entry.ints[i]; break;
      default: continue;  // specialised to a constant by Triton: not a parameter
    }
    params[count++] = &slots[i];
  }
  for (int s = 0; s < entry.scratch; ++s) params[count++] = &slots[kMaxArgs + s];  // null pointers
  const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
  void* stream = impl->getStreamNativeHandle(impl->getStream(device));
  int status = driver_launch()(entry.function, entry.grid_x, entry.grid_y, 1, entry.threads, 1, 1, entry.shared, stream,
                               params, nullptr);
  if (status != 0) fail("cuLaunchKernel failed with CUDA driver error " + std::to_string(status));
}

Key site_key(Kernel kernel, const at::Tensor& x, int64_t flags, int64_t aligned) {
  return Key{kernel, x.get_device(), static_cast<int64_t>(x.scalar_type()), flags, x.numel(), aligned};
}

std::tuple<at::Tensor, at::Tensor> python_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& theta,
                                                   double tau, bool need_x, bool need_theta) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hf_kgelu_native::fallback_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, double, bool, bool)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto [dx, dtheta] = op.call(g, x, theta, tau, need_x, need_theta);
  return {need_x ? dx : at::Tensor(), need_theta ? dtheta : at::Tensor()};
}

bool takes(const at::Tensor& x, const at::Tensor& theta) {
  auto dtype = x.scalar_type();
  return x.is_cuda() && x.is_contiguous() && x.numel() > 0 &&
      (dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf) && theta.scalar_type() == at::kFloat &&
      theta.dim() == 1 && theta.numel() == 1 && theta.device() == x.device();
}

std::shared_ptr<const Entry> forward_entry(const at::Tensor& x, const at::Tensor& theta) {
  // alignment bits of (x, θ, 1/τ, y): y is a fresh allocation
  int64_t aligned = int64_t(aligned16(x.data_ptr())) | int64_t(aligned16(theta.data_ptr())) << 1 | int64_t(1) << 3;
  return find(site_key(FORWARD, x, 0, aligned));
}

at::Tensor launch_forward(const Entry& entry, const at::Tensor& x, const at::Tensor& theta, double tau) {
  c10::DeviceGuard guard(x.device());
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (!aligned16(y.data_ptr())) fail("the allocator returned an unaligned output");
  const void* pointers[] = {x.data_ptr(), theta.data_ptr(), nullptr, y.data_ptr(), nullptr, nullptr};
  launch(entry, pointers, inverse_tau(tau), x.device());
  return y;
}

// The backward's two kernels for (g, x, θ): both registered, or the pair is empty. g must be
// contiguous and 16-byte aligned. Alignment bits as the Python launcher sees its arguments (g, x,
// θ, 1/τ, dx, partials, ...): dx and the partials are fresh allocations, and a frozen input's
// backward passes x in dx's place.
std::pair<std::shared_ptr<const Entry>, std::shared_ptr<const Entry>> backward_entries(const at::Tensor& x,
                                                                                      const at::Tensor& theta,
                                                                                      bool need_x, bool need_theta) {
  bool x_aligned = aligned16(x.data_ptr()), theta_aligned = aligned16(theta.data_ptr());
  int64_t aligned = 1 | int64_t(x_aligned) << 1 | int64_t(theta_aligned) << 2 | int64_t(need_x || x_aligned) << 4 |
      int64_t(1) << 5;
  int64_t flags = int64_t(need_x) | int64_t(need_theta) << 1;
  auto gradient = find(site_key(BACKWARD, x, flags, aligned));
  // the partial-sum kernel's pointers: partials (fresh), θ, dθ (fresh)
  int64_t sum_aligned = 1 | int64_t(theta_aligned) << 1 | int64_t(1) << 3;
  auto finish = need_theta ? find(site_key(FINISH, x, 0, sum_aligned)) : nullptr;
  if (gradient == nullptr || (need_theta && finish == nullptr)) return {nullptr, nullptr};
  return {gradient, finish};
}

std::tuple<at::Tensor, at::Tensor> launch_backward(const Entry& gradient, const Entry* finish, const at::Tensor& g,
                                                   const at::Tensor& x, const at::Tensor& theta, double tau, bool need_x,
                                                   bool need_theta) {
  c10::DeviceGuard guard(x.device());
  at::Tensor dx = need_x ? at::empty_like(x) : at::Tensor();
  at::Tensor partials = at::empty({need_theta ? int64_t(gradient.grid_x) : 1}, theta.options());
  float inv_tau = inverse_tau(tau);
  const void* pointers[] = {g.data_ptr(), x.data_ptr(), theta.data_ptr(), nullptr,
                            need_x ? dx.data_ptr() : x.data_ptr(), partials.data_ptr(), nullptr, nullptr, nullptr};
  launch(gradient, pointers, inv_tau, x.device());
  at::Tensor dtheta;
  if (need_theta) {
    dtheta = at::empty_like(theta);
    const void* sum_pointers[] = {partials.data_ptr(), theta.data_ptr(), nullptr, dtheta.data_ptr(), nullptr, nullptr};
    launch(*finish, sum_pointers, inv_tau, x.device());
  }
  return {dx, dtheta};
}

at::Tensor aligned_gradient(const at::Tensor& grad, const at::Tensor& x) {
  at::Tensor g = grad.to(x.scalar_type()).contiguous();  // e.g. the stride-0 gradient of a sum
  return aligned16(g.data_ptr()) ? g : g.clone();
}

struct SiteFunction : public torch::autograd::Function<SiteFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& theta, double tau,
                            std::shared_ptr<const Entry> entry) {
    ctx->save_for_backward({x, theta});
    ctx->saved_data["tau"] = tau;
    return launch_forward(*entry, x, theta, tau);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& theta = saved[1];
    double tau = ctx->saved_data["tau"].toDouble();
    bool need_x = ctx->needs_input_grad(0), need_theta = ctx->needs_input_grad(1);
    if (!need_x && !need_theta) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    at::Tensor g = aligned_gradient(grads[0], x);
    auto [gradient, finish] = enabled ? backward_entries(x, theta, need_x, need_theta)
                                      : std::pair<std::shared_ptr<const Entry>, std::shared_ptr<const Entry>>{};
    if (gradient == nullptr) {
      misses.fetch_add(1, std::memory_order_relaxed);
      auto [dx, dtheta] = python_backward(g, x, theta, tau, need_x, need_theta);
      return {dx, dtheta, at::Tensor(), at::Tensor()};
    }
    hits.fetch_add(1, std::memory_order_relaxed);
    auto [dx, dtheta] = launch_backward(*gradient, finish.get(), g, x, theta, tau, need_x, need_theta);
    return {dx, dtheta, at::Tensor(), at::Tensor()};
  }
};

// x·Φ(λx), λ = 1 + softplus(θ/τ), for one θ and a contiguous CUDA x; None when this path does
// not take the call (another layout, per channel, a kernel not registered yet, switched off).
std::optional<at::Tensor> site_forward(const at::Tensor& x, const at::Tensor& theta, double tau) {
  if (!enabled || !takes(x, theta)) return std::nullopt;
  auto entry = forward_entry(x, theta);
  if (entry == nullptr) {
    misses.fetch_add(1, std::memory_order_relaxed);
    return std::nullopt;
  }
  hits.fetch_add(1, std::memory_order_relaxed);
  return SiteFunction::apply(x, theta, tau, std::move(entry));
}

// The self-checks' half: the registered kernels run here on the caller's inputs, no autograd.
std::optional<at::Tensor> check_forward(const at::Tensor& x, const at::Tensor& theta, double tau) {
  if (!takes(x, theta)) return std::nullopt;
  auto entry = forward_entry(x, theta);
  if (entry == nullptr) return std::nullopt;
  return launch_forward(*entry, x, theta, tau);
}

std::vector<at::Tensor> check_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& theta, double tau,
                                       bool need_x, bool need_theta) {
  if (!takes(x, theta)) return {};
  at::Tensor g = aligned_gradient(grad, x);
  auto [gradient, finish] = backward_entries(x, theta, need_x, need_theta);
  if (gradient == nullptr) return {};
  auto [dx, dtheta] = launch_backward(*gradient, finish.get(), g, x, theta, tau, need_x, need_theta);
  return {dx, dtheta};
}

bool register_kernel(int64_t kernel, int64_t device, int64_t dtype, int64_t flags, int64_t numel, int64_t aligned,
                     int64_t function, int64_t grid_x, int64_t grid_y, int64_t threads, int64_t shared,
                     c10::string_view types, c10::IntArrayRef ints) {
  if (kernel < FORWARD || kernel > FINISH) fail("unknown kernel id " + std::to_string(kernel));
  if (types.size() != ints.size() || types.size() > kMaxArgs) fail("bad argument description");
  auto entry = std::make_shared<Entry>();
  entry->function = reinterpret_cast<void*>(function);
  entry->grid_x = static_cast<unsigned>(grid_x);
  entry->grid_y = static_cast<unsigned>(grid_y);
  entry->threads = static_cast<unsigned>(threads);
  entry->shared = static_cast<unsigned>(shared);
  entry->types = std::string(types.data(), types.size());
  entry->ints.assign(ints.begin(), ints.end());
  entry->scratch = scratch_parameters(entry->function, entry->types);
  if (entry->scratch < 0) return false;  // not the parameters this file passes: never launched from here
  std::unique_lock<std::shared_mutex> lock(table_mutex);
  table[Key{kernel, device, dtype, flags, numel, aligned}] = std::move(entry);
  return true;
}

void set_enabled(bool on) { enabled = on; }

void clear() {
  std::unique_lock<std::shared_mutex> lock(table_mutex);
  table.clear();
  hits = 0;
  misses = 0;
}

std::vector<int64_t> stats() {
  std::shared_lock<std::shared_mutex> lock(table_mutex);
  return {hits.load(), misses.load(), static_cast<int64_t>(table.size())};
}

}  // namespace

TORCH_LIBRARY(hf_kgelu_native, m) {
  m.def("site_forward(Tensor x, Tensor theta, float tau) -> Tensor?", &site_forward);
  m.def("check_forward(Tensor x, Tensor theta, float tau) -> Tensor?", &check_forward);
  m.def("check_backward(Tensor g, Tensor x, Tensor theta, float tau, bool need_x, bool need_theta) -> Tensor[]",
        &check_backward);
  m.def(
      "register_kernel(int kernel, int device, int dtype, int flags, int numel, int aligned, int function, "
      "int grid_x, int grid_y, int threads, int shared, str types, int[] ints) -> bool",
      &register_kernel);
  m.def("set_enabled(bool on) -> ()", &set_enabled);
  m.def("clear() -> ()", &clear);
  m.def("stats() -> int[]", &stats);
  // implemented in Python (hf_kgelu.ops.native): the backward for a kernel not registered yet
  m.def("fallback_backward(Tensor g, Tensor x, Tensor theta, float tau, bool need_x, bool need_theta) -> (Tensor, Tensor)");
}
