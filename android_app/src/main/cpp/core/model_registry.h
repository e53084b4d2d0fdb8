// Loaded models by handle: random, unguessable handles, a cap on how many are loaded, and one
// mutex per model so concurrent calls on the same model take turns.
#ifndef NPAS_CORE_MODEL_REGISTRY_H
#define NPAS_CORE_MODEL_REGISTRY_H

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "core/model.h"

namespace npas {

class ModelRegistry {
 public:
  static constexpr size_t kDefaultMaxModels = 16;
  explicit ModelRegistry(size_t max_models = kDefaultMaxModels) : max_models_(max_models) {}

 private:
  struct Entry {
    std::unique_ptr<Model> model;
    std::unique_ptr<ArtifactPins> pins;  // the model's artifacts, kept from store eviction
    std::mutex mu;
  };

 public:
  // One model and its lock, held for the duration of one call.
  class Lease {
   public:
    explicit Lease(std::shared_ptr<Entry> e) : entry_(std::move(e)), lock_(entry_->mu) {}
    Model& model() { return *entry_->model; }
    bool alive() const { return entry_->model != nullptr; }  // false: unloaded meanwhile

   private:
    std::shared_ptr<Entry> entry_;
    std::unique_lock<std::mutex> lock_;
  };

  size_t max_models() const { return max_models_; }
  // ResourceExhausted when max_models are loaded already. `pins` (may be null) live as long
  // as the model.
  StatusOr<std::string> add(std::unique_ptr<Model> model,
                            std::unique_ptr<ArtifactPins> pins = nullptr);
  // Whether add() would fail now (checked before the costly load).
  Status check_room() const;
  // NotFound for an unknown handle. Blocks while another call uses the model.
  StatusOr<std::unique_ptr<Lease>> acquire(const std::string& handle);
  // NotFound for an unknown handle; waits for calls in progress on the model to finish.
  Status remove(const std::string& handle);
  size_t size() const;

 private:
  size_t max_models_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> models_;
};

// 128 random bits as 32 hex characters, from the OS's random source.
std::string random_handle();

}  // namespace npas

#endif  // NPAS_CORE_MODEL_REGISTRY_H
