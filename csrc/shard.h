// One memory-mapped cache shard: header checks, size checks, checksum.
//
// Shard file layout (little-endian; the Python writer in klas/cache/format.py writes the same):
//   [0, 64)            header: magic "KLASSHRD", u32 version, u32 dtype code, u64 rows,
//                      u64 row_bytes, u64 labels_offset, u64 shard index, u64 first row,
//                      zero padding (version 2; the index and first row say where the shard belongs)
//   [64, 64 + R*B)     features, R rows of B bytes (the pooled outputs of every block, side by side)
//   [labels_offset, +8R) labels, int64
// labels_offset is 64 + R*B rounded up to a multiple of 64.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace klas {

constexpr char kShardMagic[8] = {'K', 'L', 'A', 'S', 'S', 'H', 'R', 'D'};
constexpr uint32_t kShardVersion = 2;
constexpr uint64_t kShardHeaderBytes = 64;

// Any problem with cache files: surfaces in Python as klas.errors.CacheError.
class CacheError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What the manifest says a shard holds; the file must agree.
struct ShardSpec {
  std::string path;
  uint64_t rows = 0;
  uint32_t crc32c = 0;
  uint64_t index = 0;      // position in the manifest's list
  uint64_t first_row = 0;  // rows of the shards before it
};

uint64_t labels_offset_for(uint64_t rows, uint64_t row_bytes);
uint64_t shard_file_bytes(uint64_t rows, uint64_t row_bytes);

class MappedShard {
 public:
  MappedShard() = default;
  MappedShard(const MappedShard&) = delete;
  MappedShard& operator=(const MappedShard&) = delete;
  ~MappedShard();

  // Maps the file and checks its size and header against the spec; throws CacheError naming the
  // shard on any disagreement (missing file, truncated, wrong header). `sequential` sets the
  // kernel read-ahead hint.
  void open(const ShardSpec& spec, uint64_t row_bytes, uint32_t dtype_code, bool sequential);
  // Computes the CRC-32C of the whole file and throws CacheError if it differs from the manifest.
  void verify() const;

  bool is_open() const { return base_ != nullptr; }
  const uint8_t* row(uint64_t r) const { return base_ + kShardHeaderBytes + r * row_bytes_; }
  const int64_t* labels() const {
    return reinterpret_cast<const int64_t*>(base_ + labels_offset_for(spec_.rows, row_bytes_));
  }
  uint64_t rows() const { return spec_.rows; }
  const std::string& path() const { return spec_.path; }

 private:
  ShardSpec spec_;
  uint64_t row_bytes_ = 0;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
};

}  // namespace klas
