#include "stream_reader.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace klas {

// ---------------------------------------------------------------------------------------------
// ShardSet

ShardSet::ShardSet(std::vector<ShardSpec> specs, uint64_t row_bytes, uint32_t dtype_code,
                   bool verify)
    : specs_(std::move(specs)), row_bytes_(row_bytes), dtype_code_(dtype_code), verify_(verify) {
  if (specs_.empty()) throw std::invalid_argument("a cache needs at least one shard");
  if (row_bytes_ == 0) throw std::invalid_argument("row_bytes must be positive");
  starts_.push_back(0);
  for (const auto& s : specs_) {
    if (s.rows == 0) throw CacheError("cache shard " + s.path + ": manifest lists 0 rows");
    if (s.rows > (uint64_t{1} << 40)) throw CacheError("cache shard " + s.path + ": manifest claims an impossible row count");
    starts_.push_back(starts_.back() + s.rows);
    shards_.emplace_back(nullptr);
    open_mu_.emplace_back(std::make_unique<std::mutex>());
  }
}

const MappedShard& ShardSet::ensure_open(size_t index) {
  std::lock_guard<std::mutex> lock(*open_mu_[index]);
  if (!shards_[index]) {
    auto shard = std::make_unique<MappedShard>();
    shard->open(specs_[index], row_bytes_, dtype_code_, /*sequential=*/true);
    if (verify_) shard->verify();
    shards_[index] = std::move(shard);  // only a fully checked shard is kept
  }
  return *shards_[index];
}

size_t ShardSet::shard_index(uint64_t row) const {
  if (row >= num_rows()) throw std::out_of_range("row index past the end of the cache");
  const auto it = std::upper_bound(starts_.begin(), starts_.end(), row);
  return static_cast<size_t>(it - starts_.begin()) - 1;
}

bool ShardSet::is_open(size_t index) {
  std::lock_guard<std::mutex> lock(*open_mu_[index]);
  return shards_[index] != nullptr;
}

const MappedShard& ShardSet::shard_for_row(uint64_t row, uint64_t* local_row) {
  const size_t index = shard_index(row);
  *local_row = row - starts_[index];
  return ensure_open(index);
}

void ShardSet::check_all() {
  for (size_t i = 0; i < shards_.size(); ++i) ensure_open(i);
}

// ---------------------------------------------------------------------------------------------
// Ring of slots

struct SlotBuffer {
  uint8_t* features = nullptr;
  int64_t* labels = nullptr;
  uint64_t rows = 0;  // rows filled
  ~SlotBuffer() {
    std::free(features);
    std::free(labels);
  }
};

struct Ring {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::unique_ptr<SlotBuffer>> slots;
  std::deque<size_t> free_slots;
  std::deque<size_t> filled;
  uint64_t batch_rows = 0;
  uint64_t row_bytes = 0;
  bool stop = false;             // consumer gone
  bool producer_done = false;    // no more batches will be filled
  bool producer_waiting = false; // producer blocked on an empty free list
  std::string error;             // set with producer_done when a shard failed

  // Adds one slot to the ring (caller holds mu).
  void add_slot() {
    auto slot = std::make_unique<SlotBuffer>();
    const size_t feature_bytes = std::max<uint64_t>(batch_rows * row_bytes, 64);
    // aligned_alloc wants a size that is a multiple of the alignment
    slot->features = static_cast<uint8_t*>(std::aligned_alloc(64, (feature_bytes + 63) / 64 * 64));
    slot->labels = static_cast<int64_t*>(
        std::aligned_alloc(64, (batch_rows * sizeof(int64_t) + 63) / 64 * 64));
    if (slot->features == nullptr || slot->labels == nullptr) throw std::bad_alloc();
    slots.push_back(std::move(slot));
    free_slots.push_back(slots.size() - 1);
  }
};

SlotLease::~SlotLease() {
  {
    std::lock_guard<std::mutex> lock(ring->mu);
    ring->free_slots.push_back(slot);
  }
  ring->cv.notify_all();
}

// ---------------------------------------------------------------------------------------------
// StreamReader

StreamReader::StreamReader(std::shared_ptr<ShardSet> shards, std::vector<RowRange> ranges,
                           uint64_t batch_size, bool drop_last, size_t num_buffers)
    : shards_(std::move(shards)), ranges_(std::move(ranges)), batch_size_(batch_size) {
  if (batch_size_ == 0) throw std::invalid_argument("batch_size must be positive");
  if (num_buffers < 2) throw std::invalid_argument("num_buffers must be at least 2");
  for (const auto& r : ranges_) {
    if (r.start > shards_->num_rows() || r.count > shards_->num_rows() - r.start)
      throw std::out_of_range("row range [" + std::to_string(r.start) + ", +" +
                              std::to_string(r.count) + ") lies outside the cache's " +
                              std::to_string(shards_->num_rows()) + " rows");
    total_rows_ += r.count;
  }
  num_batches_ = drop_last ? total_rows_ / batch_size_ : (total_rows_ + batch_size_ - 1) / batch_size_;

  ring_ = std::make_shared<Ring>();
  ring_->batch_rows = batch_size_;
  ring_->row_bytes = shards_->row_bytes();
  for (size_t k = 0; k < num_buffers; ++k) ring_->add_slot();

  // Shards in the order the worker will first touch them; those not yet open are opened and
  // checksummed on a second thread, so verifying shard k+1 overlaps copying out of shard k.
  std::vector<size_t> order;
  std::vector<bool> seen(shards_->num_shards(), false);
  for (const auto& r : ranges_) {
    uint64_t row = r.start;
    while (row < r.start + r.count) {
      const size_t index = shards_->shard_index(row);
      if (!seen[index]) {
        seen[index] = true;
        if (!shards_->is_open(index)) order.push_back(index);
      }
      row = std::min(r.start + r.count, shards_->shard_end(index));
    }
  }
  worker_ = std::thread([this] { produce(); });
  if (!order.empty()) opener_ = std::thread([this, order] { open_ahead(order); });
}

void StreamReader::open_ahead(std::vector<size_t> order) {
  for (size_t index : order) {
    {
      std::lock_guard<std::mutex> lock(ring_->mu);
      if (ring_->stop || ring_->producer_done) return;
    }
    try {
      shards_->ensure_open(index);
    } catch (const std::exception&) {
      return;  // the worker meets the same error when it reaches this shard, and reports it
    }
  }
}

StreamReader::~StreamReader() {
  {
    std::lock_guard<std::mutex> lock(ring_->mu);
    ring_->stop = true;
  }
  ring_->cv.notify_all();
  if (worker_.joinable()) worker_.join();
  if (opener_.joinable()) opener_.join();
}

uint64_t StreamReader::fill(uint8_t* features, int64_t* labels, uint64_t rows) {
  const uint64_t row_bytes = shards_->row_bytes();
  uint64_t done = 0;
  while (done < rows && range_index_ < ranges_.size()) {
    const RowRange& r = ranges_[range_index_];
    const uint64_t global = r.start + range_offset_;
    uint64_t local = 0;
    const MappedShard& shard = shards_->shard_for_row(global, &local);
    // Copy the longest run that stays in this range, this shard and this batch.
    const uint64_t run = std::min({r.count - range_offset_, shard.rows() - local, rows - done});
    std::memcpy(features + done * row_bytes, shard.row(local), run * row_bytes);
    std::memcpy(labels + done, shard.labels() + local, run * sizeof(int64_t));
    done += run;
    range_offset_ += run;
    if (range_offset_ == r.count) {
      ++range_index_;
      range_offset_ = 0;
    }
  }
  return done;
}

void StreamReader::produce() {
  Ring& ring = *ring_;
  for (uint64_t b = 0; b < num_batches_; ++b) {
    size_t slot;
    SlotBuffer* buf;
    {
      std::unique_lock<std::mutex> lock(ring.mu);
      ring.producer_waiting = true;
      ring.cv.notify_all();
      ring.cv.wait(lock, [&] { return ring.stop || !ring.free_slots.empty(); });
      ring.producer_waiting = false;
      if (ring.stop) break;
      slot = ring.free_slots.front();
      ring.free_slots.pop_front();
      buf = ring.slots[slot].get();  // the vector may grow under mu; the buffer itself stays put
    }
    const uint64_t want = std::min(batch_size_, total_rows_ - b * batch_size_);
    try {
      buf->rows = fill(buf->features, buf->labels, want);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(ring.mu);
      ring.free_slots.push_back(slot);
      ring.error = e.what();
      ring.producer_done = true;
      ring.cv.notify_all();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(ring.mu);
      ring.filled.push_back(slot);
    }
    ring.cv.notify_all();
  }
  std::lock_guard<std::mutex> lock(ring.mu);
  ring.producer_done = true;
  ring.cv.notify_all();
}

Batch StreamReader::next() {
  Ring& ring = *ring_;
  std::unique_lock<std::mutex> lock(ring.mu);
  while (ring.filled.empty() && !ring.producer_done) {
    if (ring.producer_waiting && ring.free_slots.empty()) {
      // The caller still holds every slot (it kept its batches): grow the ring rather than
      // deadlock. Memory grows only as far as the caller's own references.
      ring.add_slot();
      ring.cv.notify_all();
    }
    ring.cv.wait(lock);
  }
  if (!ring.filled.empty()) {
    const size_t slot = ring.filled.front();
    ring.filled.pop_front();
    SlotBuffer* buf = ring.slots[slot].get();
    Batch batch;
    batch.features = buf->features;
    batch.labels = buf->labels;
    batch.rows = buf->rows;
    batch.lease = std::shared_ptr<SlotLease>(new SlotLease{ring_, slot});
    return batch;
  }
  if (!ring.error.empty()) throw CacheError(ring.error);
  return Batch{};
}

}  // namespace klas
