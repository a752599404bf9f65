#include "runtime/python/state_handle.h"

#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/python/dlpack.h"
#include "runtime/tensor/tensor.h"

namespace smoe::python {
namespace {

const char* KindName(StateKind kind) {
  return kind == StateKind::kMoE ? "MoEState" : "DiffQkvState";
}

struct Entry {
  StateKind kind;
  std::weak_ptr<void> state;
};

// Live handles by id. Leaked on purpose: handles may be released during interpreter shutdown.
struct Registry {
  std::mutex mu;
  int64_t next_id = 1;
  std::unordered_map<int64_t, Entry> entries;
};

Registry& GetRegistry() {
  static Registry* registry = new Registry;
  return *registry;
}

// Owned by the handle tensor's storage (dlpack.h's keep_alive): holds the state and forgets the id
// when torch frees the tensor.
// Not copyable or movable: exactly one owner per id, whose destructor forgets it.
struct HandleOwner {
  HandleOwner(int64_t id, std::shared_ptr<void> state) : id(id), state(std::move(state)) {}
  HandleOwner(const HandleOwner&) = delete;
  HandleOwner& operator=(const HandleOwner&) = delete;

  int64_t id;
  std::shared_ptr<void> state;

  ~HandleOwner() {
    Registry& r = GetRegistry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.entries.erase(id);
  }
};

}  // namespace

pybind11::capsule MakeStateHandle(std::shared_ptr<void> state, StateKind kind) {
  Tensor tensor = ValueOrThrow(Tensor::Empty({1}, DType::kI64, Device::Cpu()));
  Registry& r = GetRegistry();
  int64_t id;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    id = r.next_id++;
    r.entries.emplace(id, Entry{kind, state});
  }
  *tensor.data<int64_t>() = id;
  return ToCapsule(tensor, std::make_shared<HandleOwner>(id, std::move(state)));
}

StatusOr<std::shared_ptr<void>> StateFromHandle(pybind11::handle handle, StateKind kind,
                                                absl::string_view name) {
  const std::string expected =
      absl::StrCat("a live ", KindName(kind), " handle (a [1] int64 CPU tensor from a forward)");
  MOE_ASSIGN_OR_RETURN(BorrowedTensor borrowed, Borrow(handle, name));
  const TensorView& v = borrowed.view();
  if (v.dtype() != DType::kI64 || !v.device().is_cpu() || v.rank() != 1 || v.dim(0) != 1) {
    return BadArgument(name,
                       absl::StrCat(v.shape().ToString(), " ", DTypeName(v.dtype()), " on ",
                                    v.device().ToString()),
                       expected);
  }
  const int64_t id = *v.data<int64_t>();
  Registry& r = GetRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.entries.find(id);
  std::shared_ptr<void> state = it == r.entries.end() ? nullptr : it->second.state.lock();
  if (state == nullptr) {
    return BadArgument(name, absl::StrCat("id ", id, ", whose state is gone or never was"),
                       expected);
  }
  if (it->second.kind != kind) {
    return BadArgument(name, absl::StrCat("a ", KindName(it->second.kind), " handle"), expected);
  }
  return state;
}

}  // namespace smoe::python
