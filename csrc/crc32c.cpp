#include "crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <nmmintrin.h>
#define KLAS_HAVE_X86_CRC 1
#endif

namespace klas {
namespace {

constexpr uint32_t kPolynomial = 0x82F63B78u;  // reflected Castagnoli polynomial

std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ kPolynomial : c >> 1;
    table[i] = c;
  }
  return table;
}

uint32_t extend_table(uint32_t state, const uint8_t* p, size_t n) {
  static const std::array<uint32_t, 256> table = make_table();
  for (size_t k = 0; k < n; ++k) state = table[(state ^ p[k]) & 0xFFu] ^ (state >> 8);
  return state;
}

#ifdef KLAS_HAVE_X86_CRC
// The crc32 instruction has a latency of 3 cycles and a throughput of 1 per cycle, so three
// independent streams over adjacent blocks keep it busy. Their states are then joined with
// "shift" tables: the state after block A then B equals shift_|B|(state after A) XOR (the state
// of B alone, from 0), because the CRC register update is linear over GF(2).
constexpr size_t kLongBlock = 8192;
constexpr size_t kShortBlock = 256;

struct ShiftTable {
  uint32_t t[4][256];
  // Maps a state to the state after `bytes` zero bytes.
  uint32_t apply(uint32_t s) const {
    return t[0][s & 0xFFu] ^ t[1][(s >> 8) & 0xFFu] ^ t[2][(s >> 16) & 0xFFu] ^ t[3][s >> 24];
  }
};

ShiftTable make_shift_table(size_t bytes) {
  static const uint8_t zeros[kLongBlock] = {};
  // The shift is linear: the image of each of the 32 state bits determines every entry.
  uint32_t bit_image[32];
  for (int i = 0; i < 32; ++i) bit_image[i] = extend_table(uint32_t{1} << i, zeros, bytes);
  ShiftTable table{};
  for (int k = 0; k < 4; ++k)
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t image = 0;
      for (int i = 0; i < 8; ++i)
        if (b & (1u << i)) image ^= bit_image[8 * k + i];
      table.t[k][b] = image;
    }
  return table;
}

__attribute__((target("sse4.2"))) uint64_t crc_words(uint64_t s, const uint8_t* p, size_t words) {
  for (size_t i = 0; i < words; ++i) {
    uint64_t word;
    std::memcpy(&word, p + 8 * i, 8);  // unaligned-safe load
    s = _mm_crc32_u64(s, word);
  }
  return s;
}

template <size_t Block>
__attribute__((target("sse4.2"))) uint32_t three_streams(uint32_t state, const uint8_t*& p,
                                                         size_t& n, const ShiftTable& shift) {
  while (n >= 3 * Block) {
    uint64_t a = state, b = 0, c = 0;
    for (size_t i = 0; i < Block; i += 8) {
      uint64_t wa, wb, wc;
      std::memcpy(&wa, p + i, 8);
      std::memcpy(&wb, p + Block + i, 8);
      std::memcpy(&wc, p + 2 * Block + i, 8);
      a = _mm_crc32_u64(a, wa);
      b = _mm_crc32_u64(b, wb);
      c = _mm_crc32_u64(c, wc);
    }
    state = shift.apply(static_cast<uint32_t>(a)) ^ static_cast<uint32_t>(b);
    state = shift.apply(state) ^ static_cast<uint32_t>(c);
    p += 3 * Block;
    n -= 3 * Block;
  }
  return state;
}

__attribute__((target("sse4.2"))) uint32_t extend_hardware(uint32_t state, const uint8_t* p,
                                                           size_t n) {
  static const ShiftTable shift_long = make_shift_table(kLongBlock);
  static const ShiftTable shift_short = make_shift_table(kShortBlock);
  state = three_streams<kLongBlock>(state, p, n, shift_long);
  state = three_streams<kShortBlock>(state, p, n, shift_short);
  uint64_t s = crc_words(state, p, n / 8);
  p += n / 8 * 8;
  n %= 8;
  uint32_t s32 = static_cast<uint32_t>(s);
  while (n > 0) {
    s32 = _mm_crc32_u8(s32, *p++);
    --n;
  }
  return s32;
}

bool cpu_has_sse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#endif

}  // namespace

uint32_t crc32c_extend(uint32_t crc, const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t state = ~crc;
#ifdef KLAS_HAVE_X86_CRC
  if (cpu_has_sse42()) return ~extend_hardware(state, p, size);
#endif
  return ~extend_table(state, p, size);
}

}  // namespace klas
