#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>

#include "attend/tensor.h"
#include "attend/errors.h"

namespace attend {

std::string_view to_string(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "f32";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
    case dtype::i32: return "i32";
    case dtype::boolean: return "bool";
  }
  return "?";
}

std::size_t size_bytes(dtype t) noexcept {
  switch (t) {
    case dtype::f32:
    case dtype::i32: return 4;
    case dtype::f16:
    case dtype::bf16: return 2;
    case dtype::boolean: return 1;
  }
  return 0;
}

std::string to_string(device d) {
  // cpu:0 is "cpu"; another index is shown, or cpu:0 against cpu:5 would read "cpu" and "cpu".
  if (d.kind == device_kind::cpu) return d.index == 0 ? std::string("cpu") : "cpu:" + std::to_string(d.index);
  if (d.kind == device_kind::cuda) return "cuda:" + std::to_string(d.index);
  return "device kind " + std::to_string(static_cast<int>(d.kind)) + ":" + std::to_string(d.index);
}

namespace {
// The dims a view holds: these accessors are public and noexcept, so a malformed view (a rank
// past 4 or below 0, a product past int64) reads only its arrays and never overflows; validation
// (check_view) is where such a view is refused with a reason.
int held_rank(const tensor_view& t) noexcept { return std::clamp(t.rank, 0, tensor_view::k_max_rank); }
}  // namespace

std::int64_t tensor_view::numel() const noexcept {
  std::int64_t n = 1;
  for (int i = 0; i < held_rank(*this); ++i)
    if (__builtin_mul_overflow(n, sizes[i], &n)) return std::numeric_limits<std::int64_t>::max();
  return n;
}

bool tensor_view::is_contiguous() const noexcept {
  std::int64_t expected = 1;
  for (int i = held_rank(*this) - 1; i >= 0; --i) {
    if (sizes[i] != 1 && strides[i] != expected) return false;
    if (i > 0 && __builtin_mul_overflow(expected, sizes[i], &expected)) return false;
  }
  return true;
}

std::string tensor_view::describe() const {
  std::ostringstream os;
  os << '[';
  for (int i = 0; i < held_rank(*this); ++i) os << (i ? ", " : "") << sizes[i];
  os << "] " << to_string(dtype) << ' ' << to_string(device);
  return os.str();
}

tensor_view tensor_view::contiguous(void* data, attend::dtype dtype,
                                    std::initializer_list<std::int64_t> sizes, attend::device device) {
  tensor_view t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  // More sizes than a view holds was truncated to the first four, which a call then read in
  // another layout; a product past int64 was signed overflow.
  if (sizes.size() > k_max_rank)
    throw invalid_argument("tensor_view::contiguous: at most " + std::to_string(k_max_rank) + " sizes; got " +
                           std::to_string(sizes.size()));
  t.rank = static_cast<int>(sizes.size());
  int i = 0;
  for (std::int64_t s : sizes) t.sizes[i++] = s;
  std::int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.strides[d] = stride;
    if (d > 0 && __builtin_mul_overflow(stride, t.sizes[d], &stride))
      throw invalid_argument("tensor_view::contiguous: a stride (a product of sizes) does not fit int64");
  }
  return t;
}

float f16_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    bits = sign | (static_cast<std::uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

float bf16_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

std::uint16_t float_to_bf16(float f) noexcept {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);  // quiet nan
  const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>((u + rounding) >> 16);
}

std::uint16_t float_to_f16(float f) noexcept {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);  // nan
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {  // result is subnormal or zero: round abs * 2^24 to an integer
    const float scaled = std::bit_cast<float>(abs) * 16777216.0f;  // exact power-of-two scaling
    // nearbyint with round-to-nearest-even (default FP environment)
    float r = scaled + 12582912.0f;  // 1.5 * 2^23 forces rounding to an integer
    r -= 12582912.0f;
    return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(r));
  }
  const std::uint32_t rounding = 0xfffu + ((abs >> 13) & 1u);
  return static_cast<std::uint16_t>(sign | ((abs - 0x38000000u + rounding) >> 13));
}

}  // namespace attend
