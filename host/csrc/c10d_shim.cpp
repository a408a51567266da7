// The host's binding of libtorch's c10d: a TCP store, a process group (Gloo, or NCCL when this
// build has it) and the collectives the trainer and plugins need, as plain `extern "C"`
// functions over opaque handles and tch tensor pointers (`torch::Tensor*`, what tch calls
// `C_tensor`). Rust's side lives in host/src/dist/. Below the collectives, the same binding holds
// the few libtorch calls tch lacks: generator state (host/src/engine/rng.rs), autocast with a
// dtype (host/src/engine/precision.rs) and CUDA memory statistics (host/src/engine/memory.rs).
//
// Conventions:
// - Every function catches every C++ exception; on failure it returns an error value (-1,
//   nullptr) and stores a malloc'd message in `*err` that Rust frees with shim_free_string.
// - A tensor returned to Rust is a new `torch::Tensor*` that Rust owns (Tensor::from_ptr).
// - Collectives must be issued in the same order on every rank (as with torch.distributed).
//   Every collective of a group is numbered; with the debug check on (shim_pg_set_debug), each
//   first all-gathers a fixed-size fingerprint (number, operation, dtype, shape) and, when the
//   ranks' fingerprints differ, fails on every rank with a message naming what each issued
//   (as PyTorch's TORCH_DISTRIBUTED_DEBUG=DETAIL).
// - A bucketed collective issues at least one collective whatever the list holds (an empty
//   list all-reduces an empty tensor), and a collective of no data still meets the other ranks
//   (it exchanges one byte), so a rank never skips what the others run.
// - The autograd functions find their process group for the backward through a process-wide
//   registry (group id -> group), saved as an integer in the autograd context: a group freed
//   before the backward runs is an error, not a dangling pointer.
// - An exception thrown where no call of ours can catch it (Gloo's I/O threads throw
//   gloo::EnforceNotMet when ranks send different sizes) reaches the terminate handler installed
//   with the first group: it reports through the hook Rust set (shim_set_fatal_hook) and ends
//   the process with exit code 1 through _exit, never abort() and never static destructors
//   (which would join threads that are stuck).
// - A group is shut down explicitly (shim_pg_shutdown) before the process exits. After a failed
//   collective its backend is aborted and leaked instead of destroyed: the destructor joins
//   worker threads that may still be stuck in the failed operation.
#include <torch/torch.h>
#include <ATen/autocast_mode.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cxxabi.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using Backend = c10::intrusive_ptr<c10d::Backend>;

struct ShimStore {
  c10::intrusive_ptr<c10d::Store> store;
};

// The operations a fingerprint names.
enum Op : int64_t {
  kAllReduce = 1,
  kBroadcast,
  kAllGather,
  kBarrier,
  kAllGatherWithGrad,
  kAllGatherWithGradBackward,
  kAllReduceWithGrad,
  kAllReduceWithGradBackward,
};

const char* op_name(int64_t op) {
  switch (op) {
    case kAllReduce:
      return "all-reduce";
    case kBroadcast:
      return "broadcast";
    case kAllGather:
      return "all-gather";
    case kBarrier:
      return "barrier";
    case kAllGatherWithGrad:
      return "all-gather with gradient";
    case kAllGatherWithGradBackward:
      return "backward of an all-gather with gradient (all-reduce)";
    case kAllReduceWithGrad:
      return "all-reduce with gradient";
    case kAllReduceWithGradBackward:
      return "backward of an all-reduce with gradient";
    default:
      return "unknown operation";
  }
}

// The ranks' fingerprints of one collective differ: thrown on every rank at the same collective,
// before any data moved, so the backend stays usable.
struct CollectiveMismatch : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A process group: its backend and what the shim keeps beside it.
class Group {
 public:
  Group(int64_t id, Backend backend, int rank, int size, at::Device device)
      : id(id), rank(rank), size(size), device(device), backend_(std::move(backend)) {}

  const int64_t id;
  const int rank;
  const int size;
  // Where the backend communicates: the CPU (Gloo) or this process's GPU (NCCL).
  const at::Device device;
  // Whether every collective first compares fingerprints across ranks.
  std::atomic<bool> debug{false};
  // The number of collectives issued so far (the last one's sequence number).
  std::atomic<int64_t> issued{0};
  // Whether a collective failed in the backend (timeout, peer gone, size mismatch).
  std::atomic<bool> failed{false};

  // The backend, or an error once the group is shut down.
  Backend backend() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!backend_) throw std::runtime_error("the process group was shut down");
    return backend_;
  }

  // Takes the backend out of the group (null after the first call).
  Backend take() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(backend_, Backend());
  }

 private:
  std::mutex mutex_;
  Backend backend_;
};

using GroupPtr = std::shared_ptr<Group>;

// What Rust holds: one reference to the group.
struct ShimGroup {
  GroupPtr group;
};

std::mutex registry_mutex;
std::unordered_map<int64_t, GroupPtr>& registry() {
  static auto* groups = new std::unordered_map<int64_t, GroupPtr>();  // never destroyed
  return *groups;
}
int64_t next_group_id = 1;

GroupPtr group_by_id(int64_t id) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto it = registry().find(id);
  if (it == registry().end()) {
    throw std::runtime_error(
        "the process group of this autograd graph was closed before its backward ran");
  }
  return it->second;
}

Group& group_of(void* handle) { return *static_cast<ShimGroup*>(handle)->group; }

void set_err(char** err, const std::string& message) {
  if (err == nullptr) return;
  char* copy = static_cast<char*>(std::malloc(message.size() + 1));
  if (copy == nullptr) return;
  std::memcpy(copy, message.c_str(), message.size() + 1);
  *err = copy;
}

// Runs `f`, turning any exception into `*err`; returns whether it succeeded.
template <typename F>
bool guarded(char** err, F&& f) {
  try {
    f();
    return true;
  } catch (const c10::Error& e) {
    set_err(err, e.what_without_backtrace());
  } catch (const std::exception& e) {
    set_err(err, e.what());
  } catch (...) {
    set_err(err, "unknown C++ exception in the c10d shim");
  }
  return false;
}

std::vector<at::Tensor> tensors_of(torch::Tensor** ptrs, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; i++) {
    if (ptrs[i] == nullptr || !ptrs[i]->defined()) {
      throw std::runtime_error("tensor " + std::to_string(i) + " of the list is undefined");
    }
    out.push_back(*ptrs[i]);
  }
  return out;
}

// A new contiguous copy of `t` on `device` (autograd nodes must not hand out their inputs).
at::Tensor fresh_on(const at::Tensor& t, at::Device device) {
  return t.to(device, t.scalar_type(), /*non_blocking=*/false, /*copy=*/true,
              at::MemoryFormat::Contiguous);
}

// ---------------------------------------------------------------------------------------------
// Fingerprints (the debug check): [sequence number, operation, dtype (-1: none), number of
// dimensions (-1: none), number of elements, the first kPrintDims sizes (-1: unused), spare].

constexpr int64_t kPrintLen = 16;
constexpr int64_t kPrintDims = 10;

std::vector<int64_t> fingerprint_of(int64_t seq, int64_t op, const at::Tensor* t) {
  std::vector<int64_t> f(kPrintLen, -1);
  f[0] = seq;
  f[1] = op;
  if (t != nullptr) {
    f[2] = static_cast<int64_t>(t->scalar_type());
    f[3] = t->dim();
    f[4] = t->numel();
    for (int64_t d = 0; d < std::min<int64_t>(t->dim(), kPrintDims); d++) f[5 + d] = t->size(d);
  }
  return f;
}

// "all-gather float [4, 128]".
std::string describe(const std::vector<int64_t>& f) {
  std::ostringstream out;
  out << op_name(f[1]);
  if (f[2] >= 0) {
    std::string dtype = c10::toString(static_cast<c10::ScalarType>(f[2]));
    std::transform(dtype.begin(), dtype.end(), dtype.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    out << " " << dtype << " [";
    for (int64_t d = 0; d < f[3]; d++) {
      if (d > 0) out << ", ";
      if (d == kPrintDims) {
        out << "...";
        break;
      }
      out << f[5 + d];
    }
    out << "]";
  }
  return out.str();
}

// "rank 3", "ranks 0, 2", "ranks 0-6".
std::string rank_list(const std::vector<int>& ranks) {
  std::ostringstream out;
  out << (ranks.size() == 1 ? "rank " : "ranks ");
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) j++;
    if (i > 0) out << ", ";
    out << ranks[i];
    if (j > i) out << (j == i + 1 ? ", " : "-") << ranks[j];
    i = j + 1;
  }
  return out.str();
}

// All-gathers this rank's fingerprint of collective `seq` and throws CollectiveMismatch on every
// rank when they differ.
void check_fingerprints(Group& g, c10d::Backend& pg, int64_t seq, int64_t op,
                        const at::Tensor* t) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> mine = fingerprint_of(seq, op, t);
  std::vector<at::Tensor> inputs{torch::tensor(mine, torch::kLong).to(g.device)};
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < g.size; r++) outputs[0].push_back(torch::empty_like(inputs[0]));
  pg.allgather(outputs, inputs)->wait();
  at::Tensor all = torch::stack(outputs[0]).to(at::kCPU).contiguous();
  const int64_t* p = all.data_ptr<int64_t>();
  // Distinct fingerprints in order of first appearance, with the ranks that issued each.
  std::vector<std::pair<std::vector<int64_t>, std::vector<int>>> kinds;
  for (int r = 0; r < g.size; r++) {
    std::vector<int64_t> f(p + r * kPrintLen, p + (r + 1) * kPrintLen);
    auto it = std::find_if(kinds.begin(), kinds.end(), [&](const auto& k) { return k.first == f; });
    if (it == kinds.end()) {
      kinds.push_back({f, {r}});
    } else {
      it->second.push_back(r);
    }
  }
  if (kinds.size() == 1) return;
  bool numbers_differ = std::any_of(kinds.begin(), kinds.end(),
                                    [&](const auto& k) { return k.first[0] != kinds[0].first[0]; });
  std::ostringstream message;
  message << "distributed training: collective #" << seq << " differs between ranks: ";
  for (size_t i = 0; i < kinds.size(); i++) {
    if (i > 0) message << ", ";
    message << rank_list(kinds[i].second) << " ";
    if (numbers_differ) message << "#" << kinds[i].first[0] << " ";
    message << describe(kinds[i].first);
  }
  message << " (--dist_debug)";
  throw CollectiveMismatch(message.str());
}

// Issues collective number `issued + 1` of `g`: the fingerprint check when on, then `run` on the
// backend. A collective of no data exchanges one byte instead: Gloo returns at once from an
// all-reduce, broadcast or all-gather of no elements, without meeting the other ranks, so a rank
// with nothing to send would run ahead of them into its next collective. A failure in the backend
// marks the group as failed (see shim_pg_shutdown).
template <typename F>
void issue(Group& g, int64_t op, const at::Tensor* t, F&& run) {
  Backend pg = g.backend();
  int64_t seq = ++g.issued;
  try {
    if (g.debug.load()) check_fingerprints(g, *pg, seq, op, t);
    if (t != nullptr && t->numel() == 0) {
      torch::NoGradGuard no_grad;
      std::vector<at::Tensor> token{torch::zeros({1}, torch::dtype(torch::kByte).device(g.device))};
      pg->allreduce(token)->wait();
    } else {
      run(*pg);
    }
  } catch (const CollectiveMismatch&) {
    throw;
  } catch (...) {
    g.failed = true;
    throw;
  }
}

// ---------------------------------------------------------------------------------------------
// Collectives.

// Groups tensors by (dtype, device) in first-seen order, then cuts each group into buckets of
// at most `bucket_bytes` (a tensor larger than that is a bucket of its own).
std::vector<std::vector<at::Tensor>> buckets_of(const std::vector<at::Tensor>& tensors,
                                                int64_t bucket_bytes) {
  std::vector<std::vector<at::Tensor>> groups;
  std::map<std::pair<int, std::string>, size_t> group_index;
  for (const auto& t : tensors) {
    auto key = std::make_pair(static_cast<int>(t.scalar_type()), t.device().str());
    auto it = group_index.find(key);
    if (it == group_index.end()) {
      group_index[key] = groups.size();
      groups.push_back({t});
    } else {
      groups[it->second].push_back(t);
    }
  }
  std::vector<std::vector<at::Tensor>> buckets;
  for (const auto& group : groups) {
    std::vector<at::Tensor> current;
    int64_t current_bytes = 0;
    for (const auto& t : group) {
      int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
      if (!current.empty() && current_bytes + bytes > bucket_bytes) {
        buckets.push_back(std::move(current));
        current = {};
        current_bytes = 0;
      }
      current.push_back(t);
      current_bytes += bytes;
    }
    if (!current.empty()) buckets.push_back(std::move(current));
  }
  return buckets;
}

// Runs `collective(backend, one)` as collective `op` on one flat tensor per bucket and copies the
// results back into the bucket's tensors. A bucket of one contiguous tensor is passed as it is
// (no copy). An empty list is one collective on an empty float tensor (see `issue`): every rank
// takes part whatever its list holds, so a rank whose list differs is caught (by the debug check,
// or by the backend) instead of leaving the others waiting in a collective it skipped.
template <typename F>
int64_t run_bucketed(Group& g, int64_t op, const std::vector<at::Tensor>& tensors,
                     int64_t bucket_bytes, F&& collective) {
  torch::NoGradGuard no_grad;
  auto buckets = buckets_of(tensors, bucket_bytes);
  if (buckets.empty()) {
    buckets.push_back({torch::empty({0}, torch::dtype(torch::kFloat).device(g.device))});
  }
  int64_t calls = 0;
  for (auto& bucket : buckets) {
    std::vector<at::Tensor> flat;
    if (bucket.size() == 1 && bucket[0].is_contiguous()) {
      flat.push_back(bucket[0]);
    } else {
      std::vector<at::Tensor> flat_parts;
      flat_parts.reserve(bucket.size());
      for (const auto& t : bucket) flat_parts.push_back(t.reshape({-1}));
      flat.push_back(torch::cat(flat_parts));
    }
    issue(g, op, &flat[0], [&](c10d::Backend& pg) { collective(pg, flat); });
    calls++;
    if (flat[0].is_same(bucket[0])) continue;
    int64_t offset = 0;
    for (auto& t : bucket) {
      t.copy_(flat[0].narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
  return calls;
}

void all_reduce_sum_in_place(Group& g, int64_t op, std::vector<at::Tensor>& one) {
  issue(g, op, &one[0], [&](c10d::Backend& pg) {
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    pg.allreduce(one, opts)->wait();
  });
}

at::Tensor all_gather_cat(Group& g, int64_t op, const at::Tensor& input) {
  torch::NoGradGuard no_grad;
  at::Tensor in = input.detach().contiguous();
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < g.size; r++) outputs[0].push_back(torch::empty_like(in));
  std::vector<at::Tensor> inputs{in};
  issue(g, op, &in, [&](c10d::Backend& pg) { pg.allgather(outputs, inputs)->wait(); });
  return torch::cat(outputs[0], 0);
}

// The collectives with gradient take and return tensors on the caller's device and copy to and
// from the backend's device (Gloo: the CPU) inside their own forward and backward. Their
// backward node therefore belongs to the caller's device, as every other node of the graph does,
// and libtorch's autograd engine runs all of them on that device's one worker thread, in an
// order fixed by the graph alone (ready nodes by sequence number): every rank builds the same
// graph, so every rank issues these collectives in the same order. With the copies outside the
// node (a CUDA graph around a CPU collective) the collective nodes would run on the calling
// thread's CPU queue while the copies run on the device thread, and two chains of same-shaped
// gathers (BYOL's two views through SyncBatchNorm) could interleave differently on each rank.

// Forward: this rank's [n, ...] -> [world·n, ...] in rank order. Backward: the sum over ranks
// of the incoming gradient, sliced to this rank's rows (torch.distributed.nn.all_gather).
struct AllGatherWithGrad : public torch::autograd::Function<AllGatherWithGrad> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor input,
                            int64_t group_id) {
    GroupPtr g = group_by_id(group_id);
    ctx->saved_data["group"] = group_id;
    ctx->saved_data["rows"] = input.dim() == 0 ? int64_t{1} : input.size(0);
    ctx->saved_data["device"] = input.device();
    at::Tensor gathered = all_gather_cat(*g, kAllGatherWithGrad, input.to(g->device));
    return gathered.to(input.device());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    GroupPtr g = group_by_id(ctx->saved_data["group"].toInt());
    int64_t rows = ctx->saved_data["rows"].toInt();
    at::Device home = ctx->saved_data["device"].toDevice();
    std::vector<at::Tensor> summed{fresh_on(grads[0], g->device)};
    all_reduce_sum_in_place(*g, kAllGatherWithGradBackward, summed);
    return {fresh_on(summed[0].narrow(0, g->rank * rows, rows), home), at::Tensor()};
  }
};

// Forward: the sum over ranks of the input. Backward: the sum over ranks of the gradient.
struct AllReduceSumWithGrad : public torch::autograd::Function<AllReduceSumWithGrad> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor input,
                            int64_t group_id) {
    GroupPtr g = group_by_id(group_id);
    ctx->saved_data["group"] = group_id;
    ctx->saved_data["device"] = input.device();
    std::vector<at::Tensor> out{fresh_on(input.detach(), g->device)};
    all_reduce_sum_in_place(*g, kAllReduceWithGrad, out);
    return out[0].to(input.device());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    GroupPtr g = group_by_id(ctx->saved_data["group"].toInt());
    at::Device home = ctx->saved_data["device"].toDevice();
    std::vector<at::Tensor> summed{fresh_on(grads[0], g->device)};
    all_reduce_sum_in_place(*g, kAllReduceWithGradBackward, summed);
    return {summed[0].to(home), at::Tensor()};
  }
};

// ---------------------------------------------------------------------------------------------
// The terminate handler.

using FatalHook = void (*)(const char* text);
std::atomic<FatalHook> fatal_hook{nullptr};
std::atomic<bool> fatal_started{false};
std::once_flag terminate_installed;

// "gloo::EnforceNotMet: [enforce fail at ...] ..." for the exception being handled.
std::string current_exception_text() {
  std::exception_ptr e = std::current_exception();
  if (!e) return "std::terminate was called without an exception";
  std::string type = "an exception of unknown type";
  if (const std::type_info* info = abi::__cxa_current_exception_type()) {
    int status = 0;
    char* name = abi::__cxa_demangle(info->name(), nullptr, nullptr, &status);
    type = status == 0 && name != nullptr ? name : info->name();
    std::free(name);
  }
  try {
    std::rethrow_exception(e);
  } catch (const c10::Error& error) {
    return type + ": " + error.what_without_backtrace();
  } catch (const std::exception& error) {
    return type + ": " + error.what();
  } catch (...) {
    return type;
  }
}

[[noreturn]] void on_terminate() {
  if (fatal_started.exchange(true)) {
    // Another thread is reporting; it ends the process.
    for (;;) pause();
  }
  std::string text = current_exception_text();
  FatalHook hook = fatal_hook.load();
  if (hook != nullptr) {
    hook(text.c_str());
  } else {
    std::fprintf(stderr, "error: a C++ exception ended this process: %s\n", text.c_str());
  }
  std::fflush(stderr);
  _exit(1);
}

}  // namespace

extern "C" {

void shim_free_string(char* s) { std::free(s); }

void shim_free_bytes(uint8_t* b) { std::free(b); }

// 1 when this build can create NCCL process groups.
int shim_has_nccl() {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

// What the terminate handler (installed with the first group) calls with the exception's text
// before it ends the process with exit code 1; the hook prints the error.
void shim_set_fatal_hook(FatalHook hook) { fatal_hook.store(hook); }

// A TCPStore client (and the server too when is_server). num_workers < 0: do not take part in
// the start-up count of workers (an extra connection of a process that already counted).
void* shim_store_new(const char* host, uint16_t port, int is_server, int num_workers,
                     int64_t timeout_ms, char** err) {
  ShimStore* out = nullptr;
  guarded(err, [&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    if (num_workers >= 0) {
      opts.numWorkers = static_cast<size_t>(num_workers);
      opts.waitWorkers = true;
    } else {
      opts.waitWorkers = false;
    }
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    out = new ShimStore{store};
  });
  return out;
}

void shim_store_free(void* store) { delete static_cast<ShimStore*>(store); }

int shim_store_set(void* store, const char* key, const uint8_t* data, size_t len, char** err) {
  return guarded(err, [&] {
           std::vector<uint8_t> value(data, data + len);
           static_cast<ShimStore*>(store)->store->set(std::string(key), value);
         })
             ? 0
             : -1;
}

// Waits up to timeout_ms for `key`, then returns its value in a malloc'd buffer.
int shim_store_get(void* store, const char* key, int64_t timeout_ms, uint8_t** out,
                   size_t* len, char** err) {
  return guarded(err, [&] {
           auto& s = static_cast<ShimStore*>(store)->store;
           std::string k(key);
           s->wait({k}, std::chrono::milliseconds(timeout_ms));
           std::vector<uint8_t> value = s->get(k);
           uint8_t* buffer = static_cast<uint8_t*>(std::malloc(value.empty() ? 1 : value.size()));
           if (buffer == nullptr) throw std::bad_alloc();
           if (!value.empty()) std::memcpy(buffer, value.data(), value.size());
           *out = buffer;
           *len = value.size();
         })
             ? 0
             : -1;
}

int shim_store_add(void* store, const char* key, int64_t delta, int64_t* out, char** err) {
  return guarded(err, [&] {
           *out = static_cast<ShimStore*>(store)->store->add(std::string(key), delta);
         })
             ? 0
             : -1;
}

// backend: 0 Gloo, 1 NCCL. device_index: the CUDA device an NCCL group communicates on (-1:
// the CPU, for Gloo). gloo_ifnames: comma-separated network interfaces to bind (as
// GLOO_SOCKET_IFNAME), or empty for the address this machine's hostname resolves to (loopback
// when it resolves to nothing), which is what torch.distributed does.
void* shim_pg_new(void* store, const char* prefix, int backend, int rank, int size,
                  int device_index, int64_t timeout_ms, const char* gloo_ifnames, char** err) {
  ShimGroup* out = nullptr;
  guarded(err, [&] {
    std::call_once(terminate_installed, [] { std::set_terminate(on_terminate); });
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(
        std::string(prefix), static_cast<ShimStore*>(store)->store);
    Backend pg;
    if (backend == 0) {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      std::string names(gloo_ifnames == nullptr ? "" : gloo_ifnames);
      std::stringstream ss(names);
      std::string name;
      while (std::getline(ss, name, ',')) {
        if (!name.empty()) {
          opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
        }
      }
      if (opts->devices.empty()) {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, size, opts);
    } else if (backend == 1) {
#ifdef USE_C10D_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, size, opts);
#else
      throw std::runtime_error(
          "this build of ssl-host has no NCCL (it was built without libtorch_cuda.so or "
          "without the nvidia-nccl wheel's nccl.h); use the gloo backend");
#endif
    } else {
      throw std::runtime_error("unknown backend number " + std::to_string(backend));
    }
    at::Device device = device_index < 0
                            ? at::Device(at::kCPU)
                            : at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index));
    std::lock_guard<std::mutex> lock(registry_mutex);
    int64_t id = next_group_id++;
    auto group = std::make_shared<Group>(id, pg, rank, size, device);
    registry()[id] = group;
    out = new ShimGroup{group};
  });
  return out;
}

// Turns the fingerprint check of every later collective on (1) or off (0). Every rank must do
// the same between the same collectives.
void shim_pg_set_debug(void* group, int on) { group_of(group).debug.store(on != 0); }

// Removes the group from the registry and lets its backend go: shut down and destroyed when
// every collective succeeded (Gloo's destructor joins its idle worker threads); after a failed
// collective aborted and leaked instead, since its worker threads may still be stuck in the
// failed operation. Later collectives of the group fail. Returns 1 when the backend was leaked.
int shim_pg_shutdown(void* group) {
  if (group == nullptr) return 0;
  Group& g = group_of(group);
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    registry().erase(g.id);
  }
  Backend backend = g.take();
  if (!backend) return 0;
  if (g.failed.load()) {
    try {
      backend->abort();
    } catch (...) {
    }
    (void)backend.release();  // leaked on purpose: never destroyed, never joined
    return 1;
  }
  try {
    backend->shutdown();
  } catch (...) {
  }
  backend.reset();
  return 0;
}

// Shuts the group down (if it is not yet) and frees the handle.
void shim_pg_free(void* group) {
  if (group == nullptr) return;
  shim_pg_shutdown(group);
  delete static_cast<ShimGroup*>(group);
}

// op: 0 sum, 1 average (sum, then divide by the world size; floating-point tensors only).
// *calls receives the number of all-reduces issued (one per bucket, at least one).
int shim_pg_all_reduce(void* group, torch::Tensor** tensors, size_t n, int op,
                       int64_t bucket_bytes, int64_t* calls, char** err) {
  return guarded(err, [&] {
           Group& g = group_of(group);
           auto list = tensors_of(tensors, n);
           if (op != 0 && op != 1) throw std::runtime_error("unknown reduce op " + std::to_string(op));
           if (op == 1) {
             for (size_t i = 0; i < list.size(); i++) {
               if (!at::isFloatingType(list[i].scalar_type())) {
                 throw std::runtime_error("all-reduce average of tensor " + std::to_string(i) +
                                          ": its dtype " +
                                          std::string(c10::toString(list[i].scalar_type())) +
                                          " is not floating point");
               }
             }
           }
           *calls = run_bucketed(g, kAllReduce, list, bucket_bytes,
                                 [&](c10d::Backend& pg, std::vector<at::Tensor>& one) {
                                   c10d::AllreduceOptions opts;
                                   opts.reduceOp = c10d::ReduceOp::SUM;
                                   pg.allreduce(one, opts)->wait();
                                   if (op == 1) one[0].div_(static_cast<double>(g.size));
                                 });
         })
             ? 0
             : -1;
}

int shim_pg_broadcast(void* group, torch::Tensor** tensors, size_t n, int root,
                      int64_t bucket_bytes, int64_t* calls, char** err) {
  return guarded(err, [&] {
           Group& g = group_of(group);
           auto list = tensors_of(tensors, n);
           *calls = run_bucketed(g, kBroadcast, list, bucket_bytes,
                                 [&](c10d::Backend& pg, std::vector<at::Tensor>& one) {
                                   c10d::BroadcastOptions opts;
                                   opts.rootRank = root;
                                   pg.broadcast(one, opts)->wait();
                                 });
         })
             ? 0
             : -1;
}

torch::Tensor* shim_pg_all_gather(void* group, torch::Tensor* t, char** err) {
  torch::Tensor* out = nullptr;
  guarded(err, [&] { out = new torch::Tensor(all_gather_cat(group_of(group), kAllGather, *t)); });
  return out;
}

// The tensor may live on any device: the autograd node copies to and from the group's device.
torch::Tensor* shim_pg_all_gather_with_grad(void* group, torch::Tensor* t, char** err) {
  torch::Tensor* out = nullptr;
  guarded(err, [&] { out = new torch::Tensor(AllGatherWithGrad::apply(*t, group_of(group).id)); });
  return out;
}

// As shim_pg_all_gather_with_grad, for the sum over ranks.
torch::Tensor* shim_pg_all_reduce_sum_with_grad(void* group, torch::Tensor* t, char** err) {
  torch::Tensor* out = nullptr;
  guarded(err,
          [&] { out = new torch::Tensor(AllReduceSumWithGrad::apply(*t, group_of(group).id)); });
  return out;
}

int shim_pg_barrier(void* group, int64_t timeout_ms, char** err) {
  return guarded(err, [&] {
           issue(group_of(group), kBarrier, nullptr, [&](c10d::Backend& pg) {
             c10d::BarrierOptions opts;
             opts.timeout = std::chrono::milliseconds(timeout_ms);
             pg.barrier(opts)->wait(opts.timeout);
           });
         })
             ? 0
             : -1;
}

}  // extern "C"

// ---------------------------------------------------------------------------------------------
// Random generator state (not c10d, but the same binding): the default generator of a device
// (`device_type` 0 = CPU, 1 = CUDA with `index`), read as a byte tensor and restored, so that a
// run stopped mid-epoch continues with the generator where it was (dropout masks, random
// permutations inside plugins).

namespace {
at::Generator default_generator(int device_type, int index) {
  if (device_type == 0) return at::globalContext().defaultGenerator(at::Device(at::kCPU));
  return at::globalContext().defaultGenerator(
      at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index)));
}
}  // namespace

extern "C" torch::Tensor* shim_rng_get_state(int device_type, int index, char** err) {
  torch::Tensor* out = nullptr;
  guarded(err, [&] {
    auto gen = default_generator(device_type, index);
    std::lock_guard<std::mutex> lock(gen.mutex());
    out = new torch::Tensor(gen.get_state());
  });
  return out;
}

extern "C" int shim_rng_set_state(int device_type, int index, torch::Tensor* state, char** err) {
  return guarded(err, [&] {
           auto gen = default_generator(device_type, index);
           std::lock_guard<std::mutex> lock(gen.mutex());
           gen.set_state(*state);
         })
             ? 0
             : -1;
}

// ---------------------------------------------------------------------------------------------
// Autocast (not c10d either): tch drives only CUDA autocast with its default dtype (fp16).
// These enter and leave autocast of a device type (`device_type` 0 = CPU, 1 = CUDA) with a
// chosen dtype (an at::ScalarType code: 5 = Half, 15 = BFloat16), as torch.autocast does:
// enter saves the previous state for the leave, which restores it. The state is per thread.

namespace {
at::DeviceType autocast_device(int device_type) {
  if (device_type == 0) return at::kCPU;
  if (device_type == 1) return at::kCUDA;
  throw std::runtime_error("autocast: unknown device type code " + std::to_string(device_type));
}
}  // namespace

extern "C" int shim_autocast_state(int device_type, int* enabled, int* dtype, char** err) {
  return guarded(err, [&] {
           auto type = autocast_device(device_type);
           *enabled = at::autocast::is_autocast_enabled(type) ? 1 : 0;
           *dtype = static_cast<int>(at::autocast::get_autocast_dtype(type));
         })
             ? 0
             : -1;
}

extern "C" int shim_autocast_enter(int device_type, int dtype, int* was_enabled, int* was_dtype,
                                   char** err) {
  return guarded(err, [&] {
           auto type = autocast_device(device_type);
           auto scalar = static_cast<at::ScalarType>(dtype);
           if (scalar != at::kHalf && scalar != at::kBFloat16) {
             throw std::runtime_error("autocast: dtype code " + std::to_string(dtype) +
                                      " is neither Half nor BFloat16");
           }
           *was_enabled = at::autocast::is_autocast_enabled(type) ? 1 : 0;
           *was_dtype = static_cast<int>(at::autocast::get_autocast_dtype(type));
           at::autocast::set_autocast_dtype(type, scalar);
           at::autocast::set_autocast_enabled(type, true);
           at::autocast::increment_nesting();
         })
             ? 0
             : -1;
}

extern "C" int shim_autocast_leave(int device_type, int was_enabled, int was_dtype, char** err) {
  return guarded(err, [&] {
           auto type = autocast_device(device_type);
           if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
           at::autocast::set_autocast_enabled(type, was_enabled != 0);
           at::autocast::set_autocast_dtype(type, static_cast<at::ScalarType>(was_dtype));
         })
             ? 0
             : -1;
}

// ---------------------------------------------------------------------------------------------
// CUDA memory of the caching allocator, through the generic device allocator (no CUDA headers):
// the peak of allocated bytes of device `index` since the last reset. Only for a CUDA run; a
// process without CUDA gets an error, never a call into the allocator.

namespace {
c10::DeviceAllocator* cuda_allocator() {
  if (!at::globalContext().hasCUDA()) throw std::runtime_error("this process has no CUDA device");
  return c10::getDeviceAllocator(c10::DeviceType::CUDA);
}
}  // namespace

extern "C" int shim_cuda_memory_peak(int index, int64_t* peak_bytes, char** err) {
  return guarded(err, [&] {
           auto stats = cuda_allocator()->getDeviceStats(static_cast<c10::DeviceIndex>(index));
           constexpr auto aggregate =
               static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
           *peak_bytes = stats.allocated_bytes[aggregate].peak;
         })
             ? 0
             : -1;
}

extern "C" int shim_cuda_memory_reset_peak(int index, char** err) {
  return guarded(err, [&] {
           cuda_allocator()->resetPeakStats(static_cast<c10::DeviceIndex>(index));
         })
             ? 0
             : -1;
}

// ---------------------------------------------------------------------------------------------
// CUDA's synchronisation check (`torch.cuda.set_sync_debug_mode`): with mode 2 (error) every
// libtorch call that makes the host wait for the device (a read, a blocking copy, a stream
// synchronisation) throws, naming itself. The engine turns it on around training steps with
// SSL_HOST_DEBUG_SYNC=1 on a CUDA run. It needs the CUDA runtime headers, which builds with
// NCCL have; other builds answer with an error.
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#endif

extern "C" int shim_cuda_sync_debug_mode(int mode, int* previous, char** err) {
  return guarded(err, [&] {
#ifdef USE_C10D_NCCL
           if (mode < 0 || mode > 2) throw std::runtime_error("sync debug mode must be 0, 1 or 2");
           auto& state = c10::cuda::warning_state();
           *previous = static_cast<int>(state.get_sync_debug_mode());
           state.set_sync_debug_mode(static_cast<c10::cuda::SyncDebugMode>(mode));
#else
           (void)mode;
           (void)previous;
           throw std::runtime_error(
               "this build has no CUDA headers (no NCCL), so CUDA's synchronisation check is "
               "not available");
#endif
         })
             ? 0
             : -1;
}
