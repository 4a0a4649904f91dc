// attend/dlpack.h: converting between attend::tensor_view and DLPack's DLTensor (zero-copy).
//
// Header-only and optional: include it after (or instead of) <dlpack/dlpack.h>, any DLPack
// version whose DLTensor has the usual fields (0.6 and later). libattend itself does not depend
// on DLPack. DLPack strides are in elements, like tensor_view's; a null strides pointer means
// row-major. byte_offset is folded into the data pointer.
#pragma once

#include <dlpack/dlpack.h>

#include <cstdint>
#include <string>

#include "attend/errors.h"
#include "attend/tensor.h"

namespace attend {

// Throws attend::invalid_argument for ranks above 4, dtypes attend does not know, and devices
// other than CPU (incl. CUDA host memory) and CUDA.
inline tensor_view from_dlpack(const DLTensor& t) {
  tensor_view v;
  if (t.ndim < 0 || t.ndim > tensor_view::k_max_rank)
    throw invalid_argument("DLPack tensor: rank must be 0..4; got " + std::to_string(t.ndim));
  if (t.dtype.lanes != 1) throw invalid_argument("DLPack tensor: vector dtypes (lanes != 1) are not supported");
  const int code = t.dtype.code, bits = t.dtype.bits;
  constexpr int k_bool_code = 6;  // kDLBool (DLPack >= 0.8)
  if (code == kDLFloat && bits == 32) v.dtype = dtype::f32;
  else if (code == kDLFloat && bits == 16) v.dtype = dtype::f16;
  else if (code == kDLBfloat && bits == 16) v.dtype = dtype::bf16;
  else if (code == kDLInt && bits == 32) v.dtype = dtype::i32;
  else if ((code == k_bool_code || code == kDLUInt) && bits == 8) v.dtype = dtype::boolean;
  else
    throw invalid_argument("DLPack tensor: dtype (code " + std::to_string(code) + ", " + std::to_string(bits) +
                           " bits) is not one of float32, float16, bfloat16, int32, bool");
  switch (t.device.device_type) {
    case kDLCPU:
    case kDLCUDAHost: v.device = {device_kind::cpu, 0}; break;
    case kDLCUDA: v.device = {device_kind::cuda, t.device.device_id}; break;
    default: throw invalid_argument("DLPack tensor: device type " + std::to_string(t.device.device_type) + " is not cpu or cuda");
  }
  v.rank = t.ndim;
  if (t.ndim > 0 && t.shape == nullptr) throw invalid_argument("DLPack tensor: shape is null");
  std::int64_t stride = 1;  // compact (row-major) strides when the tensor gives none
  for (int i = t.ndim - 1; i >= 0; --i) {
    v.sizes[i] = t.shape[i];
    v.strides[i] = t.strides ? t.strides[i] : stride;
    if (t.strides == nullptr && __builtin_mul_overflow(stride, t.shape[i], &stride))
      throw invalid_argument("DLPack tensor: element count overflows 64 bits");
  }
  v.data = t.data ? static_cast<char*>(t.data) + t.byte_offset : nullptr;
  return v;
}

// A DLTensor over `v`. Its shape and strides point into `v`, which must outlive the result.
inline DLTensor to_dlpack(tensor_view& v) {
  DLTensor t{};
  t.data = v.data;
  t.ndim = v.rank;
  t.shape = v.sizes.data();
  t.strides = v.strides.data();
  t.byte_offset = 0;
  t.device.device_type = v.device.kind == device_kind::cpu ? kDLCPU : kDLCUDA;
  t.device.device_id = v.device.index;
  t.dtype.lanes = 1;
  t.dtype.bits = static_cast<std::uint8_t>(8 * size_bytes(v.dtype));
  switch (v.dtype) {
    case dtype::f32:
    case dtype::f16: t.dtype.code = kDLFloat; break;
    case dtype::bf16: t.dtype.code = kDLBfloat; break;
    case dtype::i32: t.dtype.code = kDLInt; break;
    case dtype::boolean: t.dtype.code = 6; break;  // kDLBool
  }
  return t;
}

}  // namespace attend
