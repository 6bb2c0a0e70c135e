#include "shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include "crc32c.h"

namespace klas {
namespace {

template <typename T>
T read_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // the supported platforms are little-endian
  return v;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw CacheError("cache shard " + path + ": " + what);
}

}  // namespace

uint64_t labels_offset_for(uint64_t rows, uint64_t row_bytes) {
  const uint64_t end = kShardHeaderBytes + rows * row_bytes;
  return (end + 63) / 64 * 64;
}

uint64_t shard_file_bytes(uint64_t rows, uint64_t row_bytes) {
  return labels_offset_for(rows, row_bytes) + rows * sizeof(int64_t);
}

MappedShard::~MappedShard() {
  if (base_ != nullptr) munmap(const_cast<uint8_t*>(base_), size_);
}

void MappedShard::open(const ShardSpec& spec, uint64_t row_bytes, uint32_t dtype_code,
                       bool sequential) {
  spec_ = spec;
  row_bytes_ = row_bytes;
  if (row_bytes == 0) fail(spec.path, "row size of 0 bytes in the manifest");
  // Guard the size arithmetic against a manifest that lies with absurd numbers.
  if (spec.rows > (uint64_t{1} << 40) / row_bytes)
    fail(spec.path, "manifest claims an impossible size (" + std::to_string(spec.rows) + " rows)");
  const uint64_t expected = shard_file_bytes(spec.rows, row_bytes);

  // O_NONBLOCK: a FIFO put in place of a shard must not block the open; it is refused below.
  int fd = ::open(spec.path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail(spec.path, std::string("cannot open (") + std::strerror(errno) + ")");
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(spec.path, std::string("cannot stat (") + std::strerror(err) + ")");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(spec.path, "not a regular file (a FIFO, device or directory); re-run extraction for this anchor and split");
  }
  const auto actual = static_cast<uint64_t>(st.st_size);
  if (actual != expected) {
    ::close(fd);
    std::ostringstream msg;
    msg << (actual < expected ? "truncated" : "too long") << ": " << actual
        << " bytes on disk, the manifest implies " << expected
        << "; re-run extraction for this anchor and split";
    fail(spec.path, msg.str());
  }
  // MAP_POPULATE maps every page now, on the reader's background thread, instead of one page
  // fault per 4 KiB later while batches are copied out.
  void* mapped = mmap(nullptr, expected, PROT_READ, MAP_PRIVATE | (sequential ? MAP_POPULATE : 0), fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (mapped == MAP_FAILED) fail(spec.path, std::string("mmap failed (") + std::strerror(map_err) + ")");
  base_ = static_cast<const uint8_t*>(mapped);
  size_ = expected;
  madvise(mapped, expected, sequential ? MADV_SEQUENTIAL : MADV_WILLNEED);

  if (std::memcmp(base_, kShardMagic, sizeof(kShardMagic)) != 0)
    fail(spec.path, "not a klas shard (bad magic bytes)");
  const auto version = read_le<uint32_t>(base_ + 8);
  const auto dtype = read_le<uint32_t>(base_ + 12);
  const auto rows = read_le<uint64_t>(base_ + 16);
  const auto rb = read_le<uint64_t>(base_ + 24);
  const auto lo = read_le<uint64_t>(base_ + 32);
  const auto index = read_le<uint64_t>(base_ + 40);
  const auto first_row = read_le<uint64_t>(base_ + 48);
  if (version != kShardVersion)
    fail(spec.path, "shard format version " + std::to_string(version) + ", this reader reads " +
                        std::to_string(kShardVersion));
  if (dtype != dtype_code || rows != spec.rows || rb != row_bytes ||
      lo != labels_offset_for(rows, rb)) {
    std::ostringstream msg;
    msg << "header does not match the manifest (header: dtype " << dtype << ", " << rows
        << " rows of " << rb << " bytes; manifest: dtype " << dtype_code << ", " << spec.rows
        << " rows of " << row_bytes << " bytes)";
    fail(spec.path, msg.str());
  }
  if (index != spec.index || first_row != spec.first_row) {
    std::ostringstream msg;
    msg << "is shard " << index << " (rows from " << first_row << ") but the manifest lists it as shard "
        << spec.index << " (rows from " << spec.first_row
        << "): the manifest lists shards out of place; re-run extraction for this anchor and split";
    fail(spec.path, msg.str());
  }
}

void MappedShard::verify() const {
  const uint32_t actual = crc32c(base_, size_);
  if (actual != spec_.crc32c) {
    std::ostringstream msg;
    msg << "checksum mismatch (crc32c on disk 0x" << std::hex << actual << ", manifest 0x"
        << spec_.crc32c << "): the file is corrupted; re-run extraction for this anchor and split";
    fail(spec_.path, msg.str());
  }
}

}  // namespace klas
