// The host's binding of libtorch's c10d: a TCP store, a process group (Gloo, or NCCL when this
// build has it) and the collectives the trainer and plugins need, as plain `extern "C"`
// functions over opaque handles and tch tensor pointers (`torch::Tensor*`, what tch calls
// `C_tensor`). Rust's side lives in host/src/dist/.
//
// Conventions:
// - Every function catches every C++ exception; on failure it returns an error value (-1,
//   nullptr) and stores a malloc'd message in `*err` that Rust frees with shim_free_string.
// - A tensor returned to Rust is a new `torch::Tensor*` that Rust owns (Tensor::from_ptr).
// - Collectives must be issued in the same order on every rank (as with torch.distributed).
// - The autograd functions find their process group for the backward through a process-wide
//   registry (group id -> group), saved as an integer in the autograd context: a group freed
//   before the backward runs is an error, not a dangling pointer.
#include <torch/torch.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using Backend = c10::intrusive_ptr<c10d::Backend>;

struct ShimStore {
  c10::intrusive_ptr<c10d::Store> store;
};

struct ShimGroup {
  int64_t id;
  Backend backend;
  int rank;
  int size;
};

std::mutex registry_mutex;
std::unordered_map<int64_t, Backend>& registry() {
  static std::unordered_map<int64_t, Backend> groups;
  return groups;
}
int64_t next_group_id = 1;

Backend group_by_id(int64_t id) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto it = registry().find(id);
  if (it == registry().end()) {
    throw std::runtime_error(
        "the process group of this autograd graph was closed before its backward ran");
  }
  return it->second;
}

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

// Runs `collective` on one flat tensor per bucket and copies the results back into the
// bucket's tensors. A bucket of one contiguous tensor is passed as it is (no copy).
template <typename F>
int64_t run_bucketed(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes,
                     F&& collective) {
  int64_t calls = 0;
  torch::NoGradGuard no_grad;
  for (auto& bucket : buckets_of(tensors, bucket_bytes)) {
    if (bucket.size() == 1 && bucket[0].is_contiguous()) {
      std::vector<at::Tensor> one{bucket[0]};
      collective(one);
      calls++;
      continue;
    }
    std::vector<at::Tensor> flat_parts;
    flat_parts.reserve(bucket.size());
    for (const auto& t : bucket) flat_parts.push_back(t.reshape({-1}));
    std::vector<at::Tensor> flat{torch::cat(flat_parts)};
    collective(flat);
    calls++;
    int64_t offset = 0;
    for (auto& t : bucket) {
      t.copy_(flat[0].narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
  return calls;
}

void all_reduce_sum_in_place(const Backend& pg, std::vector<at::Tensor>& tensors) {
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  pg->allreduce(tensors, opts)->wait();
}

at::Tensor all_gather_cat(const Backend& pg, int size, const at::Tensor& input) {
  torch::NoGradGuard no_grad;
  at::Tensor in = input.detach().contiguous();
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < size; r++) outputs[0].push_back(torch::empty_like(in));
  std::vector<at::Tensor> inputs{in};
  pg->allgather(outputs, inputs)->wait();
  return torch::cat(outputs[0], 0);
}

// Forward: this rank's [n, ...] -> [world·n, ...] in rank order. Backward: the sum over ranks
// of the incoming gradient, sliced to this rank's rows (torch.distributed.nn.all_gather).
struct AllGatherWithGrad : public torch::autograd::Function<AllGatherWithGrad> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor input,
                            int64_t group_id) {
    Backend pg = group_by_id(group_id);
    ctx->saved_data["group"] = group_id;
    ctx->saved_data["rows"] = input.dim() == 0 ? int64_t{1} : input.size(0);
    ctx->saved_data["rank"] = static_cast<int64_t>(pg->getRank());
    return all_gather_cat(pg, pg->getSize(), input);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    Backend pg = group_by_id(ctx->saved_data["group"].toInt());
    int64_t rows = ctx->saved_data["rows"].toInt();
    int64_t rank = ctx->saved_data["rank"].toInt();
    std::vector<at::Tensor> summed{grads[0].contiguous().clone()};
    all_reduce_sum_in_place(pg, summed);
    return {summed[0].narrow(0, rank * rows, rows).clone(), at::Tensor()};
  }
};

// Forward: the sum over ranks of the input. Backward: the sum over ranks of the gradient.
struct AllReduceSumWithGrad : public torch::autograd::Function<AllReduceSumWithGrad> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor input,
                            int64_t group_id) {
    Backend pg = group_by_id(group_id);
    ctx->saved_data["group"] = group_id;
    std::vector<at::Tensor> out{input.detach().contiguous().clone()};
    all_reduce_sum_in_place(pg, out);
    return out[0];
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    Backend pg = group_by_id(ctx->saved_data["group"].toInt());
    std::vector<at::Tensor> summed{grads[0].contiguous().clone()};
    all_reduce_sum_in_place(pg, summed);
    return {summed[0], at::Tensor()};
  }
};

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

// backend: 0 Gloo, 1 NCCL. gloo_ifnames: comma-separated network interfaces to bind (as
// GLOO_SOCKET_IFNAME), or empty for the address this machine's hostname resolves to (loopback
// when it resolves to nothing), which is what torch.distributed does.
void* shim_pg_new(void* store, const char* prefix, int backend, int rank, int size,
                  int64_t timeout_ms, const char* gloo_ifnames, char** err) {
  ShimGroup* out = nullptr;
  guarded(err, [&] {
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
    std::lock_guard<std::mutex> lock(registry_mutex);
    int64_t id = next_group_id++;
    registry()[id] = pg;
    out = new ShimGroup{id, pg, rank, size};
  });
  return out;
}

void shim_pg_free(void* group) {
  auto* g = static_cast<ShimGroup*>(group);
  if (g == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    registry().erase(g->id);
  }
  try {
    delete g;
  } catch (...) {
  }
}

// op: 0 sum, 1 average (sum, then divide by the world size; floating-point tensors only).
// *calls receives the number of all-reduces issued (one per bucket).
int shim_pg_all_reduce(void* group, torch::Tensor** tensors, size_t n, int op,
                       int64_t bucket_bytes, int64_t* calls, char** err) {
  return guarded(err, [&] {
           auto* g = static_cast<ShimGroup*>(group);
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
           *calls = run_bucketed(list, bucket_bytes, [&](std::vector<at::Tensor>& one) {
             all_reduce_sum_in_place(g->backend, one);
             if (op == 1) one[0].div_(static_cast<double>(g->size));
           });
         })
             ? 0
             : -1;
}

int shim_pg_broadcast(void* group, torch::Tensor** tensors, size_t n, int root,
                      int64_t bucket_bytes, int64_t* calls, char** err) {
  return guarded(err, [&] {
           auto* g = static_cast<ShimGroup*>(group);
           auto list = tensors_of(tensors, n);
           *calls = run_bucketed(list, bucket_bytes, [&](std::vector<at::Tensor>& one) {
             c10d::BroadcastOptions opts;
             opts.rootRank = root;
             g->backend->broadcast(one, opts)->wait();
           });
         })
             ? 0
             : -1;
}

torch::Tensor* shim_pg_all_gather(void* group, torch::Tensor* t, char** err) {
  torch::Tensor* out = nullptr;
  guarded(err, [&] {
    auto* g = static_cast<ShimGroup*>(group);
    out = new torch::Tensor(all_gather_cat(g->backend, g->size, *t));
  });
  return out;
}

torch::Tensor* shim_pg_all_gather_with_grad(void* group, torch::Tensor* t, char** err) {
  torch::Tensor* out = nullptr;
  guarded(err, [&] {
    auto* g = static_cast<ShimGroup*>(group);
    out = new torch::Tensor(AllGatherWithGrad::apply(*t, g->id));
  });
  return out;
}

torch::Tensor* shim_pg_all_reduce_sum_with_grad(void* group, torch::Tensor* t, char** err) {
  torch::Tensor* out = nullptr;
  guarded(err, [&] {
    auto* g = static_cast<ShimGroup*>(group);
    out = new torch::Tensor(AllReduceSumWithGrad::apply(*t, g->id));
  });
  return out;
}

int shim_pg_barrier(void* group, int64_t timeout_ms, char** err) {
  return guarded(err, [&] {
           auto* g = static_cast<ShimGroup*>(group);
           c10d::BarrierOptions opts;
           opts.timeout = std::chrono::milliseconds(timeout_ms);
           g->backend->barrier(opts)->wait(opts.timeout);
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
