// attend/tensor.h: a non-owning view of a strided tensor of rank 1 to 4.
//
// Sizes and strides are in elements (not bytes) and 64-bit. A stride of 0 broadcasts. Only the
// first `rank` entries of sizes/strides are meaningful; the rest are ignored. attend never owns,
// allocates or frees the memory a view points to.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace attend {

enum class dtype : std::uint8_t {
  f32,
  f16,
  bf16,
  i32,      // cumulative sequence lengths (varlen)
  boolean,  // one byte per element, non-zero = true (boolean keep-masks)
};

std::string_view to_string(dtype t) noexcept;
std::size_t size_bytes(dtype t) noexcept;
// Floating dtypes attention runs on (f32, f16, bf16).
constexpr bool is_floating(dtype t) noexcept {
  return t == dtype::f32 || t == dtype::f16 || t == dtype::bf16;
}

enum class device_kind : std::uint8_t { cpu, cuda };

struct device {
  device_kind kind = device_kind::cpu;
  int index = 0;

  friend bool operator==(const device&, const device&) = default;
};

std::string to_string(device d);

struct tensor_view {
  static constexpr int k_max_rank = 4;

  void* data = nullptr;
  attend::dtype dtype = attend::dtype::f32;
  attend::device device{};
  int rank = 0;
  std::array<std::int64_t, k_max_rank> sizes{};
  std::array<std::int64_t, k_max_rank> strides{};  // in elements

  bool empty() const noexcept { return rank == 0 && data == nullptr; }
  // The product of the sizes, except that a product past int64 along the way saturates at
  // INT64_MAX (even where a later size is 0). On a view with a rank outside 0..4 these three read
  // only the dims a view holds.
  std::int64_t numel() const noexcept;
  // True when the strides are the row-major strides of the sizes.
  bool is_contiguous() const noexcept;
  // "[2, 17, 8, 64] f16 cpu"
  std::string describe() const;

  // A rank-N view (N <= 4) with row-major (contiguous) strides. Throws attend::invalid_argument
  // for more than 4 sizes, or a stride (a product of sizes) past int64.
  static tensor_view contiguous(void* data, attend::dtype dtype, std::initializer_list<std::int64_t> sizes,
                                attend::device device = {});
};

// Converts f16 / bf16 bit patterns to and from float (round to nearest even).
float f16_to_float(std::uint16_t bits) noexcept;
float bf16_to_float(std::uint16_t bits) noexcept;
std::uint16_t float_to_f16(float value) noexcept;
std::uint16_t float_to_bf16(float value) noexcept;

}  // namespace attend
