// Streaming batches out of a set of memory-mapped shards.
//
// A background thread walks an ordered list of row ranges (the whole cache in order for
// scoring; chunks in a seeded random order for probe training), copies each batch's rows into one
// slot of a bounded ring of buffers, and hands filled slots to the consumer. A slot goes back to
// the ring when the last NumPy/torch array viewing it is freed, so batches are zero-copy views
// that stay valid for as long as the caller keeps them.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "shard.h"

namespace klas {

// The shards of one cache (anchor, split), opened and checksummed lazily, once per ShardSet:
// several readers (one per epoch) share it, so each shard is verified once.
class ShardSet {
 public:
  ShardSet(std::vector<ShardSpec> specs, uint64_t row_bytes, uint32_t dtype_code, bool verify);

  // The shard holding global row `row`, opened (and verified) on first use; throws CacheError.
  const MappedShard& shard_for_row(uint64_t row, uint64_t* local_row);
  uint64_t num_rows() const { return starts_.back(); }
  uint64_t row_bytes() const { return row_bytes_; }
  size_t num_shards() const { return shards_.size(); }
  // Opens and verifies every shard now (the reader otherwise does it on first use).
  void check_all();
  // Opens and verifies shard `index` unless done before; throws CacheError. Thread-safe: a
  // second caller waits for the first.
  const MappedShard& ensure_open(size_t index);
  size_t shard_index(uint64_t row) const;
  uint64_t shard_end(size_t index) const { return starts_[index + 1]; }  // first row after it
  bool is_open(size_t index);

 private:

  std::vector<ShardSpec> specs_;
  std::vector<uint64_t> starts_;  // [num_shards + 1], prefix sums of rows
  std::vector<std::unique_ptr<MappedShard>> shards_;
  std::vector<std::unique_ptr<std::mutex>> open_mu_;
  uint64_t row_bytes_;
  uint32_t dtype_code_;
  bool verify_;
};

struct RowRange {
  uint64_t start = 0;
  uint64_t count = 0;
};

struct Ring;  // slots, queues and the lock they share with outstanding batches

// Keeps one slot out of the ring while a batch views it.
struct SlotLease {
  std::shared_ptr<Ring> ring;
  size_t slot = 0;
  ~SlotLease();
};

struct Batch {
  const uint8_t* features = nullptr;  // [rows, row_bytes]
  const int64_t* labels = nullptr;    // [rows]
  uint64_t rows = 0;
  std::shared_ptr<SlotLease> lease;
};

class StreamReader {
 public:
  StreamReader(std::shared_ptr<ShardSet> shards, std::vector<RowRange> ranges,
               uint64_t batch_size, bool drop_last, size_t num_buffers);
  ~StreamReader();
  StreamReader(const StreamReader&) = delete;
  StreamReader& operator=(const StreamReader&) = delete;

  // Blocks (call without the GIL) until the next batch is ready; an empty Batch (rows == 0) ends
  // the stream. Batches read before a bad shard are all delivered before its CacheError.
  Batch next();
  uint64_t num_batches() const { return num_batches_; }
  uint64_t num_rows() const { return total_rows_; }
  uint64_t row_bytes() const { return shards_->row_bytes(); }

 private:
  void produce();
  void open_ahead(std::vector<size_t> order);
  uint64_t fill(uint8_t* features, int64_t* labels, uint64_t rows);

  std::shared_ptr<ShardSet> shards_;
  std::vector<RowRange> ranges_;
  uint64_t batch_size_;
  uint64_t total_rows_ = 0;
  uint64_t num_batches_ = 0;
  size_t range_index_ = 0;   // producer cursor
  uint64_t range_offset_ = 0;
  std::shared_ptr<Ring> ring_;
  std::thread worker_;
  std::thread opener_;  // opens and verifies shards ahead of the copying worker
};

}  // namespace klas
