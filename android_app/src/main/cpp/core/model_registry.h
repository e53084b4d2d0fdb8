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
  // max_memory_bytes bounds the memory of all loaded models together (weights, arenas,
  // scratch): each load's need is reserved before it allocates, so no number of loads can
  // ask for more in all. 0: three quarters of the device's memory (4 GiB when unknown).
  explicit ModelRegistry(size_t max_models = kDefaultMaxModels, uint64_t max_memory_bytes = 0);

  // Memory reserved for a load in progress; released when dropped unless add() took it.
  class Reservation {
   public:
    ~Reservation();
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    uint64_t bytes() const { return bytes_; }

   private:
    friend class ModelRegistry;
    Reservation(ModelRegistry* r, uint64_t bytes) : registry_(r), bytes_(bytes) {}
    ModelRegistry* registry_;
    uint64_t bytes_;
  };
  // ResourceExhausted (saying `need_text`, what is in use and the limit) when `bytes` more
  // would go over max_memory_bytes.
  StatusOr<std::unique_ptr<Reservation>> reserve_memory(uint64_t bytes,
                                                        const std::string& need_text);
  uint64_t max_memory_bytes() const { return max_memory_; }
  uint64_t reserved_memory_bytes() const;

 private:
  struct Entry {
    std::unique_ptr<Model> model;
    std::unique_ptr<ArtifactPins> pins;  // the model's artifacts, kept from store eviction
    std::unique_ptr<Reservation> memory;  // its share of max_memory_bytes
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
                            std::unique_ptr<ArtifactPins> pins = nullptr,
                            std::unique_ptr<Reservation> memory = nullptr);
  // Whether add() would fail now (checked before the costly load).
  Status check_room() const;
  // NotFound for an unknown handle. Blocks while another call uses the model.
  StatusOr<std::unique_ptr<Lease>> acquire(const std::string& handle);
  // NotFound for an unknown handle; waits for calls in progress on the model to finish.
  Status remove(const std::string& handle);
  size_t size() const;

 private:
  void release_memory(uint64_t bytes);
  size_t max_models_;
  uint64_t max_memory_;
  mutable std::mutex memory_mu_;
  uint64_t reserved_memory_ = 0;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> models_;
};

// 128 random bits as 32 hex characters, from the OS's random source.
std::string random_handle();

}  // namespace npas

#endif  // NPAS_CORE_MODEL_REGISTRY_H
