// SHA-256 (FIPS 180-4), self-contained: the runner names artifacts by their digest and must not
// depend on OpenSSL, which Android apps cannot count on.
#ifndef NPAS_CORE_SHA256_H
#define NPAS_CORE_SHA256_H

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace npas {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  // Finishes the digest; the object must not be updated afterwards.
  std::array<uint8_t, 32> finish();
  // Lowercase hex of finish().
  std::string finish_hex();

  static std::string hex(const void* data, size_t size);

 private:
  void block(const uint8_t* p);

  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t buf_len_ = 0;
  uint64_t total_bytes_ = 0;
};

// True when `s` is 64 lowercase hex characters: the only form the store accepts as a name.
bool is_valid_sha256_hex(const std::string& s);

}  // namespace npas

#endif  // NPAS_CORE_SHA256_H
