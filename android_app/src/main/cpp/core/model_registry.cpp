// Model handles and per-model locking.
#include "core/model_registry.h"

#include <random>

#include "core/os_util.h"

namespace npas {

std::string random_handle() {
  // std::random_device reads getrandom()/dev/urandom on Linux and Android.
  static std::mutex mu;
  static std::random_device rd;
  static const char kHex[] = "0123456789abcdef";
  std::lock_guard<std::mutex> lock(mu);
  std::string s;
  for (int i = 0; i < 4; ++i) {
    uint32_t v = rd();
    for (int j = 0; j < 8; ++j) s += kHex[(v >> (4 * j)) & 15];
  }
  return s;
}

ModelRegistry::ModelRegistry(size_t max_models, uint64_t max_memory_bytes)
    : max_models_(max_models), max_memory_(max_memory_bytes) {
  if (max_memory_ == 0) {
    const uint64_t total = total_memory_bytes();
    max_memory_ = total > 0 ? total / 4 * 3 : (4ull << 30);
  }
}

ModelRegistry::Reservation::~Reservation() {
  if (registry_) registry_->release_memory(bytes_);
}

StatusOr<std::unique_ptr<ModelRegistry::Reservation>> ModelRegistry::reserve_memory(
    uint64_t bytes, const std::string& need_text) {
  std::lock_guard<std::mutex> lock(memory_mu_);
  if (bytes > max_memory_ || reserved_memory_ > max_memory_ - bytes) {
    return ResourceExhausted(need_text + "; the runner's models may use " + u(max_memory_) +
                             " bytes in all (--max-model-bytes), " + u(reserved_memory_) +
                             " are taken by loaded models, " + u(available_memory_bytes()) +
                             " available on the device; unload a model or ask for less");
  }
  reserved_memory_ += bytes;
  return std::unique_ptr<Reservation>(new Reservation(this, bytes));
}

void ModelRegistry::release_memory(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(memory_mu_);
  reserved_memory_ = reserved_memory_ > bytes ? reserved_memory_ - bytes : 0;
}

uint64_t ModelRegistry::reserved_memory_bytes() const {
  std::lock_guard<std::mutex> lock(memory_mu_);
  return reserved_memory_;
}

Status ModelRegistry::check_room() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (models_.size() >= max_models_) {
    return ResourceExhausted(std::to_string(models_.size()) +
                             " models are loaded, the runner's limit; unload one first");
  }
  return Status::Ok();
}

StatusOr<std::string> ModelRegistry::add(std::unique_ptr<Model> model,
                                         std::unique_ptr<ArtifactPins> pins,
                                         std::unique_ptr<Reservation> memory) {
  auto e = std::make_shared<Entry>();
  e->model = std::move(model);
  e->pins = std::move(pins);
  e->memory = std::move(memory);
  std::lock_guard<std::mutex> lock(mu_);
  if (models_.size() >= max_models_) {
    return ResourceExhausted(std::to_string(models_.size()) +
                             " models are loaded, the runner's limit; unload one first");
  }
  std::string h;
  do {
    h = random_handle();
  } while (models_.count(h));
  models_.emplace(h, std::move(e));
  return h;
}

StatusOr<std::unique_ptr<ModelRegistry::Lease>> ModelRegistry::acquire(const std::string& handle) {
  std::shared_ptr<Entry> e;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = models_.find(handle);
    if (it == models_.end()) {
      return NotFound("no loaded model with handle '" + clip(handle) +
                      "'; it was unloaded, or the runner restarted");
    }
    e = it->second;
  }
  auto lease = std::make_unique<Lease>(std::move(e));
  if (!lease->alive()) {
    return NotFound("model '" + clip(handle) + "' was unloaded while this call waited");
  }
  return lease;
}

Status ModelRegistry::remove(const std::string& handle) {
  std::shared_ptr<Entry> e;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = models_.find(handle);
    if (it == models_.end()) {
      return NotFound("no loaded model with handle '" + clip(handle) + "'");
    }
    e = std::move(it->second);
    models_.erase(it);
  }
  // Wait for a call in progress, then free the model here rather than on that call's thread.
  std::lock_guard<std::mutex> lock(e->mu);
  e->model.reset();
  e->pins.reset();
  e->memory.reset();
  return Status::Ok();
}

size_t ModelRegistry::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return models_.size();
}

}  // namespace npas
