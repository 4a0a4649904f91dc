// attend._attend: the nanobind extension behind the Python package `attend` (docs/python.md).
//
// The Python layer (python/attend/_api.py) validates keyword arguments, allocates outputs with
// the caller's array library and resolves scoped state (use_backend, forward_context, the CUDA
// stream); this module turns arrays into attend::tensor_view without copying and runs
// attend::attention with the GIL released.
//
// Arrays (Note [Zero-copy arrays]): every array argument (but a plain torch.Tensor, which is read
// through its attributes: Note [torch fast path]) is imported through nb::ndarray, i.e.
// DLPack (__dlpack__) or the buffer protocol, with no constraint on dtype, order or device, and
// without implicit conversion, so nothing is ever copied. Its shape and element strides become
// the tensor_view as they are: non-contiguous views, broadcast (stride-0) masks and padded
// layouts reach the kernels unchanged. Inputs are imported read-only; out and lse must be
// writable.
//
// Note [DLPack capsules]: nanobind marks a capsule it is handed as used, but one it gets from
// __dlpack__() itself it only disarms (it assumes it holds the only reference). A producer that
// returns the same capsule from every __dlpack__() call, against the protocol, would then have its
// tensor imported twice by one attend call (describe, then the call) and freed twice: a crash. So
// arrays other than numpy's and torch's are asked for their capsule here (dlpack_source) and
// nanobind imports the capsule; a capsule already used is a TypeError naming the argument.
//
// Note [numpy bfloat16]: numpy has no bfloat16 of its own; ml_dtypes' (the dtype of JAX's host
// arrays) can be carried by neither DLPack nor the buffer protocol. The Python layer passes such an
// array as a uint16 view of the same memory (same shape and strides) and names the argument in
// `bf16_bits`; an array so named must be uint16 and is read as bfloat16 here. Nothing is copied,
// and `out` is written in place through its view.
//
// Errors (Note [Python errors]): a wrong array type or dtype raises TypeError naming the
// argument; attend::invalid_argument raises ValueError (TypeError when it is about a dtype);
// attend::unsupported raises attend.UnsupportedError (a RuntimeError) whose message lists every
// backend's reason and whose `rejections` attribute holds them as (backend, reason) pairs;
// attend::runtime_error raises RuntimeError.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "attend/attend.h"
#include "attend/check.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using input_array = nb::ndarray<nb::ro>;
using output_array = nb::ndarray<>;

// ---------------------------------------------------------------------------------------------
// Arrays

std::string dlpack_dtype_name(nb::dlpack::dtype t) {
  std::string base;
  switch (static_cast<nb::dlpack::dtype_code>(t.code)) {
    case nb::dlpack::dtype_code::Int: base = "int"; break;
    case nb::dlpack::dtype_code::UInt: base = "uint"; break;
    case nb::dlpack::dtype_code::Float: base = "float"; break;
    case nb::dlpack::dtype_code::Bfloat: base = "bfloat"; break;
    case nb::dlpack::dtype_code::Complex: base = "complex"; break;
    case nb::dlpack::dtype_code::Bool: return "bool";
    default: base = "dtype(code=" + std::to_string(t.code) + ")"; break;
  }
  std::string name = base + std::to_string(t.bits);
  if (t.lanes != 1) name += "x" + std::to_string(t.lanes);
  return name;
}

std::optional<attend::dtype> to_attend_dtype(nb::dlpack::dtype t) {
  if (t.lanes != 1) return std::nullopt;
  switch (static_cast<nb::dlpack::dtype_code>(t.code)) {
    case nb::dlpack::dtype_code::Float:
      if (t.bits == 32) return attend::dtype::f32;
      if (t.bits == 16) return attend::dtype::f16;
      return std::nullopt;
    case nb::dlpack::dtype_code::Bfloat:
      if (t.bits == 16) return attend::dtype::bf16;
      return std::nullopt;
    case nb::dlpack::dtype_code::Int:
      if (t.bits == 32) return attend::dtype::i32;
      return std::nullopt;
    case nb::dlpack::dtype_code::Bool:
      if (t.bits == 8) return attend::dtype::boolean;
      return std::nullopt;
    default: return std::nullopt;
  }
}

// Python-facing dtype names (numpy / torch spelling).
const char* python_dtype_name(attend::dtype t) {
  switch (t) {
    case attend::dtype::f32: return "float32";
    case attend::dtype::f16: return "float16";
    case attend::dtype::bf16: return "bfloat16";
    case attend::dtype::i32: return "int32";
    case attend::dtype::boolean: return "bool";
  }
  return "?";
}

std::optional<attend::dtype> parse_dtype_name(const std::string& s) {
  for (attend::dtype t : {attend::dtype::f32, attend::dtype::f16, attend::dtype::bf16, attend::dtype::i32,
                          attend::dtype::boolean})
    if (s == python_dtype_name(t) || s == attend::to_string(t)) return t;
  return std::nullopt;
}

[[noreturn]] void type_error(const std::string& message) { throw nb::type_error(message.c_str()); }
[[noreturn]] void value_error(const std::string& message) { throw nb::value_error(message.c_str()); }

std::string type_name_of(nb::handle h) { return nb::inst_name(h).c_str(); }

// What a role accepts, for the dtype check and its message.
enum class role { floating, lse, mask, offsets, any };

const char* expected_dtypes(role r) {
  switch (r) {
    case role::floating: return "float32, float16 or bfloat16";
    case role::lse: return "float32";
    case role::mask: return "bool (keep-mask) or float32/float16/bfloat16 (additive)";
    case role::offsets: return "int32";
    case role::any: return "float32, float16, bfloat16, int32 or bool";
  }
  return "?";
}

bool accepts(role r, attend::dtype t) {
  switch (r) {
    case role::floating: return attend::is_floating(t);
    case role::lse: return t == attend::dtype::f32;
    case role::mask: return attend::is_floating(t) || t == attend::dtype::boolean;
    case role::offsets: return t == attend::dtype::i32;
    case role::any: return true;
  }
  return false;
}

const char* k_array_types = "a numpy.ndarray, a torch.Tensor, or an object with __dlpack__ or the buffer protocol";

// Fills a tensor_view from an imported array: same data pointer, shape and element strides.
// `bf16_bits`: the array holds bfloat16 bits as uint16 (Note [numpy bfloat16]).
template <class Array>
attend::tensor_view view_of(const Array& a, const std::string& name, role r, bool bf16_bits) {
  auto maybe_dtype = to_attend_dtype(a.dtype());
  if (bf16_bits) {
    if (a.dtype() != nb::dtype<std::uint16_t>())
      type_error(name + ": bf16_bits names it, so it must be the uint16 bits of bfloat16; got " + dlpack_dtype_name(a.dtype()));
    maybe_dtype = attend::dtype::bf16;
  }
  if (!maybe_dtype || !accepts(r, *maybe_dtype))
    type_error(name + ": dtype must be " + expected_dtypes(r) + "; got " + dlpack_dtype_name(a.dtype()));
  attend::tensor_view v;
  v.data = const_cast<void*>(static_cast<const void*>(a.data()));
  v.dtype = *maybe_dtype;
  switch (a.device_type()) {
    case nb::device::cpu::value:
    case nb::device::cuda_host::value: v.device = {attend::device_kind::cpu, 0}; break;
    case nb::device::cuda::value:
    case nb::device::cuda_managed::value: v.device = {attend::device_kind::cuda, a.device_id()}; break;
    default:
      value_error(name + ": device must be cpu or cuda; got DLPack device type " + std::to_string(a.device_type()));
  }
  if (a.ndim() > static_cast<std::size_t>(attend::tensor_view::k_max_rank))
    value_error(name + ": rank must be between 1 and 4; got " + std::to_string(a.ndim()));
  v.rank = static_cast<int>(a.ndim());
  for (int i = 0; i < v.rank; ++i) {
    v.sizes[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(a.shape(static_cast<std::size_t>(i)));
    v.strides[static_cast<std::size_t>(i)] = a.stride(static_cast<std::size_t>(i));
  }
  return v;
}

// Why `h` could not be imported, when its producer says so: an object with __dlpack__ whose call
// raises (a producer's own error, e.g. a device it cannot export) gets that exception named in the
// TypeError instead of only "expected an array". Runs only after an import failed, so producers
// that work are not called again.
std::string producer_error(nb::handle h) {
  if (!nb::hasattr(h, "__dlpack__")) return "";
  try {
    h.attr("__dlpack__")();
  } catch (nb::python_error& e) {
    try {
      return std::string("; its __dlpack__() raised ") + nb::inst_name(e.value()).c_str() + ": " +
             nb::str(e.value()).c_str();
    } catch (nb::python_error&) {  // the exception's own __str__ raised
      return "; its __dlpack__() raised an exception";
    }
  }
  return "";
}

// What nanobind imports for `h` (Note [DLPack capsules]): the object itself when it is a numpy
// array or torch tensor, has no __dlpack__ (a numpy array over a buffer's memory when it is a
// buffer: Note [Buffers without strides]), or its __dlpack__() raises or returns something else
// (nanobind's own path then reports it); else the fresh capsule __dlpack__() returned, asked for
// as nanobind would: a versioned one first for a writable argument (only it can say "read-only"),
// an unversioned one first for an input, the other kind when a producer refuses the first.
nb::object dlpack_source(nb::handle h, const std::string& name, bool writable) {
  const nb::handle type(reinterpret_cast<PyObject*>(Py_TYPE(h.ptr())));
  const nb::object module_attr = nb::getattr(type, "__module__", nb::none());
  const std::string module = nb::isinstance<nb::str>(module_attr) ? nb::borrow<nb::str>(module_attr).c_str() : "";
  auto in_package = [&](const std::string& package) {
    return module == package || module.rfind(package + ".", 0) == 0;
  };
  if (in_package("numpy") || in_package("torch")) return nb::borrow(h);
  if (!nb::hasattr(h, "__dlpack__")) {
    // Note [Buffers without strides]: nanobind's buffer-protocol import reads the strides an
    // exporter may leave out (a ctypes array does), and crashes on them. numpy reads any buffer's
    // layout itself, so such objects are imported as a numpy array over the same memory (the
    // Python layer does the same first, for its own messages; this guards the module's entry
    // points). An object that is no buffer goes on as it is, for nanobind's refusal.
    if (!PyObject_CheckBuffer(h.ptr())) return nb::borrow(h);
    try {
      return nb::module_::import_("numpy").attr("asarray")(h);
    } catch (nb::python_error& e) {
      if (!e.matches(PyExc_Exception)) throw;
      type_error(name + ": cannot read its buffer as an array (" + nb::str(e.value()).c_str() + ")");
    }
  }
  auto ask = [&](bool versioned) -> nb::object {
    if (!versioned) return h.attr("__dlpack__")();
    return h.attr("__dlpack__")(nb::arg("max_version") = nb::make_tuple(nb::dlpack::major_version, nb::dlpack::minor_version));
  };
  nb::object capsule;
  try {
    capsule = ask(writable);
  } catch (nb::python_error& e) {
    if (!e.matches(PyExc_Exception)) throw;  // KeyboardInterrupt, SystemExit: not an export error
    if (!e.matches(PyExc_BufferError) && !e.matches(PyExc_TypeError)) return nb::borrow(h);
    try {
      capsule = ask(!writable);
    } catch (nb::python_error& again) {
      if (!again.matches(PyExc_Exception)) throw;
      return nb::borrow(h);
    }
  }
  if (!PyCapsule_CheckExact(capsule.ptr())) return nb::borrow(h);
  const char* tag = PyCapsule_GetName(capsule.ptr());
  const std::string capsule_name = tag ? tag : "";
  if (capsule_name != "dltensor" && capsule_name != "dltensor_versioned")
    type_error(name + ": its __dlpack__() returned a capsule named '" + capsule_name +
               "', already imported (a producer must return a new capsule from every call)");
  return capsule;
}

// Note [torch fast path]: torch's __dlpack__ is Python code (requires-grad, conjugate and stream
// checks, then the capsule), 4.7-5.0 µs an array on the lent H200's host, and a call imports four
// arrays or more (bench/RESULTS.md, "The host's cost of a call"). A tensor whose type is exactly
// torch.Tensor is read here through its own attributes instead: data_ptr() (the storage offset
// included), shape, stride() in elements, dtype and device, which are the facts its DLPack
// export carries; that costs 1.2 µs. Only what that export would describe the same way is taken:
// a strided tensor with storage (stride() and data_ptr() answer: not nested, not a functorch
// wrapper) of a dtype the argument takes, on the CPU or a CUDA device (not a ROCm build's), of
// rank 1 to 4 with at least one element. Anything else (subclasses such as nn.Parameter or
// FakeTensor included) goes through DLPack as before, so every refusal and its message is
// unchanged. One thing neither path may read as it is: a tensor with torch's negative bit (a
// lazily negated view) holds the values before the negation. The Python layer resolves it on
// inputs and refuses it on out; a tensor that still has it here is refused. The tensor object is
// held for the call's duration (DLPack's capsule would hold its storage; a caller that swaps a
// tensor's storage from another thread during the call is not guarded against).
struct torch_names {
  PyTypeObject* tensor = nullptr;
  bool rocm = false;  // torch.version.hip is set: is_cuda means a HIP device
  nb::object strided, float32, float16, bfloat16, boolean, int32;
  nb::str layout{"layout"}, is_neg{"is_neg"}, dtype{"dtype"}, is_cuda{"is_cuda"}, is_cpu{"is_cpu"},
      get_device{"get_device"}, data_ptr{"data_ptr"}, shape{"shape"}, stride{"stride"};
};

// torch's objects the fast path compares with, when `h` is exactly a torch.Tensor; else nullptr.
// Looked up once, in sys.modules (a torch tensor in hand means torch is imported), and kept for
// the life of the process (never released: torch's objects outlive every call). A module there
// that is not torch as expected (a stub) means no fast path, asked again next time.
const torch_names* torch_tensor_names(nb::handle h) {
  static const torch_names* names = nullptr;
  if (names == nullptr) {
    if (std::strcmp(Py_TYPE(h.ptr())->tp_name, "Tensor") != 0) return nullptr;  // cheap test first
    PyObject* torch = PyImport_GetModule(nb::str("torch").ptr());  // new reference, or NULL
    if (torch == nullptr) {
      PyErr_Clear();
      return nullptr;
    }
    const nb::object module = nb::steal(torch);
    auto n = std::make_unique<torch_names>();
    try {
      const nb::object tensor = module.attr("Tensor");
      if (!PyType_Check(tensor.ptr())) return nullptr;
      n->tensor = reinterpret_cast<PyTypeObject*>(tensor.ptr());
      n->rocm = !module.attr("version").attr("hip").is_none();
      n->strided = module.attr("strided");
      n->float32 = module.attr("float32");
      n->float16 = module.attr("float16");
      n->bfloat16 = module.attr("bfloat16");
      n->boolean = module.attr("bool");
      n->int32 = module.attr("int32");
      tensor.inc_ref();  // the type pointer above stays valid for good
    } catch (nb::python_error& e) {
      if (!e.matches(PyExc_Exception)) throw;
      return nullptr;
    }
    names = n.release();
  }
  return Py_TYPE(h.ptr()) == names->tensor ? names : nullptr;
}

// h.name() without a bound method object in between.
nb::object call_method(nb::handle h, const nb::str& name) {
  PyObject* self = h.ptr();
  PyObject* result = PyObject_VectorcallMethod(name.ptr(), &self, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  if (result == nullptr) throw nb::python_error();
  return nb::steal(result);
}

// A Python int as int64, or nullopt (the error cleared) when it is not one or does not fit.
std::optional<std::int64_t> as_int64(nb::handle h) {
  const long long v = PyLong_AsLongLong(h.ptr());
  if (v == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return std::nullopt;
  }
  return static_cast<std::int64_t>(v);
}

// The view of `h` read through torch's attributes (Note [torch fast path]), or nullopt for anything
// the fast path does not take, which then goes through DLPack.
std::optional<attend::tensor_view> read_torch_tensor(nb::handle h, const torch_names& n, const std::string& name, role r) {
  if (!h.attr(n.layout).is(n.strided)) return std::nullopt;
  if (call_method(h, n.is_neg).is(Py_True))
    value_error(name + ": has torch's negative bit set (a lazily negated view, whose memory holds the values "
                       "before the negation); call resolve_neg() first");
  const nb::object dtype = h.attr(n.dtype);
  std::optional<attend::dtype> t;
  if (dtype.is(n.float32)) t = attend::dtype::f32;
  else if (dtype.is(n.float16)) t = attend::dtype::f16;
  else if (dtype.is(n.bfloat16)) t = attend::dtype::bf16;
  else if (dtype.is(n.boolean)) t = attend::dtype::boolean;
  else if (dtype.is(n.int32)) t = attend::dtype::i32;
  if (!t || !accepts(r, *t)) return std::nullopt;
  attend::tensor_view v;
  v.dtype = *t;
  if (h.attr(n.is_cuda).is(Py_True)) {
    if (n.rocm) return std::nullopt;  // a HIP device: DLPack names it
    const auto index = as_int64(call_method(h, n.get_device));
    if (!index || *index < 0 || *index > std::numeric_limits<int>::max()) return std::nullopt;
    v.device = {attend::device_kind::cuda, static_cast<int>(*index)};
  } else if (h.attr(n.is_cpu).is(Py_True)) {
    v.device = {attend::device_kind::cpu, 0};
  } else {
    return std::nullopt;
  }
  const nb::object strides = call_method(h, n.stride), shape = h.attr(n.shape);
  if (!PyTuple_Check(shape.ptr()) || !PyTuple_Check(strides.ptr())) return std::nullopt;
  const Py_ssize_t rank = PyTuple_GET_SIZE(shape.ptr());
  if (rank < 1 || rank > attend::tensor_view::k_max_rank || PyTuple_GET_SIZE(strides.ptr()) != rank) return std::nullopt;
  v.rank = static_cast<int>(rank);
  for (Py_ssize_t i = 0; i < rank; ++i) {
    const auto size = as_int64(PyTuple_GET_ITEM(shape.ptr(), i)), stride = as_int64(PyTuple_GET_ITEM(strides.ptr(), i));
    if (!size || !stride || *size < 1) return std::nullopt;  // no element: DLPack's path, as before
    v.sizes[static_cast<std::size_t>(i)] = *size;
    v.strides[static_cast<std::size_t>(i)] = *stride;
  }
  void* data = PyLong_AsVoidPtr(call_method(h, n.data_ptr).ptr());
  if (data == nullptr) {
    PyErr_Clear();
    return std::nullopt;
  }
  v.data = data;
  return v;
}

std::optional<attend::tensor_view> torch_view(nb::handle h, const std::string& name, role r) {
  const torch_names* n = torch_tensor_names(h);
  if (n == nullptr) return std::nullopt;
  try {
    return read_torch_tensor(h, *n, name, r);
  } catch (nb::python_error& e) {
    // A tensor whose attributes raise (no strides: nested; no storage: a functorch wrapper)
    // goes through DLPack, which names the argument in its answer.
    if (!e.matches(PyExc_Exception)) throw;  // KeyboardInterrupt: not the tensor's answer
    return std::nullopt;
  }
}

// Keeps every imported array alive (and so its memory) for the duration of one call.
struct imported {
  std::vector<input_array> inputs;
  std::vector<output_array> outputs;
  std::vector<nb::object> tensors;  // read by the torch fast path (Note [torch fast path])
  std::vector<std::string> bf16_bits;  // arguments passed as bfloat16 bits (Note [numpy bfloat16])

  bool as_bf16(const std::string& name) const {
    return std::find(bf16_bits.begin(), bf16_bits.end(), name) != bf16_bits.end();
  }

  attend::tensor_view input(nb::handle h, const std::string& name, role r) {
    if (!as_bf16(name))
      if (auto v = torch_view(h, name, r)) {
        tensors.push_back(nb::borrow(h));
        return *v;
      }
    input_array a;
    if (!nb::try_cast(dlpack_source(h, name, false), a, /*convert=*/false))
      type_error(name + ": expected " + k_array_types + "; got " + type_name_of(h) + producer_error(h));
    inputs.push_back(a);
    return view_of(a, name, r, as_bf16(name));
  }
  attend::tensor_view maybe_input(nb::handle h, const std::string& name, role r) {
    return h.is_none() ? attend::tensor_view{} : input(h, name, r);
  }
  attend::tensor_view output(nb::handle h, const std::string& name, role r) {
    if (!as_bf16(name))
      if (auto v = torch_view(h, name, r)) {
        tensors.push_back(nb::borrow(h));
        return *v;
      }
    output_array a;
    if (!nb::try_cast(dlpack_source(h, name, true), a, /*convert=*/false)) {
      input_array read_only;
      if (nb::try_cast(dlpack_source(h, name, false), read_only, false)) value_error(name + ": must be writable; got a read-only array");
      type_error(name + ": expected " + k_array_types + "; got " + type_name_of(h) + producer_error(h));
    }
    outputs.push_back(a);
    return view_of(a, name, r, as_bf16(name));
  }
};

// ---------------------------------------------------------------------------------------------
// Options

attend::layout parse_layout(const std::string& s) {
  if (s == "bshd") return attend::layout::bshd;
  if (s == "bhsd") return attend::layout::bhsd;
  value_error("layout: must be 'bshd' or 'bhsd'; got '" + s + "'");
}

attend::alignment parse_alignment(const std::string& s) {
  if (s == "top_left") return attend::alignment::top_left;
  if (s == "bottom_right") return attend::alignment::bottom_right;
  value_error("causal_align: must be 'top_left' or 'bottom_right'; got '" + s + "'");
}

struct call {
  imported arrays;
  attend::attention_params params;
  attend::selection select;
};

// Everything attention() and explain() share: arrays, options and the backend choice.
void build_call(call& c, nb::handle q, nb::handle k, nb::handle v, nb::handle out, nb::handle lse, nb::handle mask,
                nb::handle cu_seqlens_q, nb::handle cu_seqlens_k, const std::string& layout,
                std::optional<double> scale, bool causal, const std::string& causal_align, std::int64_t window_left,
                std::int64_t window_right, double softcap, std::int64_t max_seqlen_q, std::int64_t max_seqlen_k,
                const std::string& backend, const std::vector<std::string>& allow,
                const std::vector<std::string>& deny, const std::vector<std::string>& bf16_bits) {
  attend::attention_params& p = c.params;
  c.arrays.bf16_bits = bf16_bits;
  p.q = c.arrays.input(q, "q", role::floating);
  p.k = c.arrays.input(k, "k", role::floating);
  p.v = c.arrays.input(v, "v", role::floating);
  p.out = c.arrays.output(out, "out", role::floating);
  for (auto [view, name] : {std::pair{&p.k, "k"}, {&p.v, "v"}, {&p.out, "out"}})
    if (view->dtype != p.q.dtype)
      type_error(std::string(name) + ": dtype must match q (" + python_dtype_name(p.q.dtype) + "); got " +
                 python_dtype_name(view->dtype));
  if (!lse.is_none()) p.maybe_lse = c.arrays.output(lse, "lse", role::lse);
  p.maybe_mask = c.arrays.maybe_input(mask, "mask", role::mask);
  p.maybe_cu_seqlens_q = c.arrays.maybe_input(cu_seqlens_q, "cu_seqlens_q", role::offsets);
  p.maybe_cu_seqlens_kv = c.arrays.maybe_input(cu_seqlens_k, "cu_seqlens_k", role::offsets);
  p.layout = parse_layout(layout);
  p.maybe_scale = scale;
  p.causal = causal;
  p.alignment = parse_alignment(causal_align);
  p.window_left = window_left;
  p.window_right = window_right;
  p.softcap = softcap;
  p.max_seqlen_q = max_seqlen_q;
  p.max_seqlen_kv = max_seqlen_k;
  c.select.name = backend;
  c.select.allow = allow;
  c.select.deny = deny;
}

// ---------------------------------------------------------------------------------------------
// Forward context (Note [Python forward context])
//
// Python keeps the stack of `with attend.forward_context(...)` scopes in a contextvars.ContextVar
// (so threads and asyncio tasks each see their own), and hands it to every call as a list of
// (timestep, layer, values) tuples, outermost first. Right before running, on the thread that
// runs the call, the stack becomes real attend::forward_context guards (RAII, thread-local), so
// attend::attention passes the innermost one to the backend exactly as for a C++ caller. The
// guards are destroyed innermost first when the call returns. No C++ guard outlives a call, so
// a Python scope can never leave a dangling context on a thread.

attend::forward_value to_forward_value(nb::handle value, const std::string& key) {
  if (nb::isinstance<nb::bool_>(value)) return nb::cast<bool>(value);
  if (nb::isinstance<nb::int_>(value)) {
    std::int64_t i = 0;
    if (!nb::try_cast(value, i)) value_error("forward_context: value of '" + key + "' does not fit in 64 bits");
    return i;
  }
  if (nb::isinstance<nb::float_>(value)) return nb::cast<double>(value);
  if (nb::isinstance<nb::str>(value)) return nb::cast<std::string>(value);
  type_error("forward_context: value of '" + key + "' must be int, float, bool or str; got " + type_name_of(value));
}

std::vector<attend::forward_metadata> to_forward_stack(const nb::list& levels) {
  std::vector<attend::forward_metadata> stack;
  for (nb::handle level : levels) {
    const auto t = nb::cast<nb::tuple>(level);
    if (t.size() != 3) value_error("forward_context: internal stack entries are (timestep, layer, values)");
    attend::forward_metadata m;
    if (!t[0].is_none()) m.timestep = nb::cast<double>(t[0]);
    if (!t[1].is_none()) m.layer = nb::cast<std::int64_t>(t[1]);
    for (auto [key, value] : nb::cast<nb::dict>(t[2])) {
      const std::string name = nb::cast<std::string>(key);
      m.values.emplace(name, to_forward_value(value, name));
    }
    stack.push_back(std::move(m));
  }
  return stack;
}

// Pushes a stack of forward contexts on the calling thread; pops them innermost first.
class forward_guards {
 public:
  explicit forward_guards(std::vector<attend::forward_metadata> stack) {
    try {
      for (auto& m : stack) guards_.push_back(std::make_unique<attend::forward_context>(std::move(m)));
    } catch (...) {
      pop_all();
      throw;
    }
  }
  ~forward_guards() { pop_all(); }
  forward_guards(const forward_guards&) = delete;
  forward_guards& operator=(const forward_guards&) = delete;

 private:
  void pop_all() noexcept {
    while (!guards_.empty()) guards_.pop_back();
  }
  std::vector<std::unique_ptr<attend::forward_context>> guards_;
};

nb::object to_python(const attend::forward_value& value) {
  return std::visit(
      [](const auto& x) -> nb::object {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::shared_ptr<const void>>)
          return nb::none();
        else
          return nb::cast(x);
      },
      value);
}

// What a backend saw through run_context::maybe_forward (the test hook's probe).
struct forward_snapshot {
  bool present = false;
  std::optional<double> timestep;
  std::optional<std::int64_t> layer;
  int depth = 0;
  std::map<std::string, attend::forward_value, std::less<>> values;
};

// A backend that only records the forward context it is handed. It lives in a private registry,
// so it never appears in attend.backends() and never runs real calls.
class probe_backend final : public attend::backend {
 public:
  probe_backend() {
    traits_.description = "test probe: records run_context::maybe_forward";
    traits_.devices = {attend::device_kind::cpu};
    traits_.dtypes = {attend::dtype::f32};
    traits_.features = attend::feature_set::all();
  }
  std::string_view name() const override { return "_probe"; }
  const attend::backend_traits& traits() const override { return traits_; }
  void run(const attend::problem& p, const attend::run_context& ctx) const override {
    static_cast<float*>(p.params.out.data)[0] = 0.0f;
    seen_ = {};
    if (const attend::forward_context* f = ctx.maybe_forward) {
      seen_.present = true;
      seen_.timestep = f->timestep();
      seen_.layer = f->layer();
      seen_.depth = f->depth();
      // Innermost value wins: walk outwards and keep the first seen per key.
      for (const attend::forward_context* c = f; c; c = c->parent())
        for (const auto& [key, value] : c->own().values) seen_.values.emplace(key, value);
    }
  }
  const forward_snapshot& seen() const noexcept { return seen_; }

 private:
  attend::backend_traits traits_;
  mutable forward_snapshot seen_;
};

nb::dict current_forward_context(const nb::list& levels) {
  auto stack = to_forward_stack(levels);
  auto probe = std::make_shared<probe_backend>();
  attend::registry private_registry;
  private_registry.add(probe);
  float q = 0, k = 0, v = 0, out = 0;
  attend::attention_params p;
  p.q = attend::tensor_view::contiguous(&q, attend::dtype::f32, {1, 1, 1, 1});
  p.k = attend::tensor_view::contiguous(&k, attend::dtype::f32, {1, 1, 1, 1});
  p.v = attend::tensor_view::contiguous(&v, attend::dtype::f32, {1, 1, 1, 1});
  p.out = attend::tensor_view::contiguous(&out, attend::dtype::f32, {1, 1, 1, 1});
  attend::run_options options;
  options.maybe_registry = &private_registry;
  options.select.honour_environment = false;
  {
    nb::gil_scoped_release release;
    forward_guards guards(std::move(stack));
    attend::attention(p, options);
  }
  const forward_snapshot& s = probe->seen();
  nb::dict d;
  d["present"] = s.present;
  d["timestep"] = s.timestep ? nb::cast(*s.timestep) : nb::none();
  d["layer"] = s.layer ? nb::cast(*s.layer) : nb::none();
  d["depth"] = s.depth;
  nb::dict values;
  for (const auto& [key, value] : s.values) values[key.c_str()] = to_python(value);
  d["values"] = values;
  return d;
}

// ---------------------------------------------------------------------------------------------
// Registry views

const char* python_feature_name(attend::feature f) {
  switch (f) {
    case attend::feature::causal: return "causal";
    case attend::feature::window: return "window";
    case attend::feature::mask_additive: return "mask_additive";
    case attend::feature::mask_keep: return "mask_keep";
    case attend::feature::gqa: return "gqa";
    case attend::feature::softcap: return "softcap";
    case attend::feature::lse: return "lse";
    case attend::feature::varlen: return "varlen";
    case attend::feature::head_dim_v_differs: return "head_dim_v_differs";
    case attend::feature::bottom_right: return "bottom_right";
  }
  return "?";
}

nb::list backends() {
  nb::list result;
  for (const auto& b : attend::registry::global().list()) {
    const attend::backend_traits& t = b->traits();
    nb::dict d;
    d["name"] = std::string(b->name());
    nb::list devices, dtypes, features;
    for (attend::device_kind k : t.devices) devices.append(k == attend::device_kind::cpu ? "cpu" : "cuda");
    for (attend::dtype x : t.dtypes) dtypes.append(python_dtype_name(x));
    for (int i = 0; i < attend::k_num_features; ++i) {
      const auto f = static_cast<attend::feature>(1u << i);
      if (t.features.has(f)) features.append(python_feature_name(f));
    }
    d["devices"] = devices;
    d["dtypes"] = dtypes;
    d["features"] = features;
    d["priority"] = t.priority;
    d["description"] = t.description;
    d["min_head_dim"] = t.min_head_dim;
    d["max_head_dim"] = t.max_head_dim;
    d["head_dim_multiple"] = t.head_dim_multiple;
    d["exact"] = t.exact;
    result.append(d);
  }
  return result;
}

nb::dict tolerance(const std::string& dtype_name) {
  const auto t = parse_dtype_name(dtype_name);
  if (!t || !attend::is_floating(*t))
    value_error("dtype: must be float32, float16 or bfloat16; got '" + dtype_name + "'");
  const attend::testing::tolerance tol = attend::testing::tolerance_for(*t);
  nb::dict d;
  d["atol"] = tol.atol;
  d["rtol"] = tol.rtol;
  d["lse_atol"] = tol.lse_atol;
  d["lse_rtol"] = tol.lse_rtol;
  return d;
}

// (shape, dtype, device kind, device index) of any array, for the Python layer to allocate
// outputs like an input it has no library-specific knowledge of.
nb::tuple describe(nb::handle array, const std::string& name) {
  imported keep;
  // The role the Python layer probes the array for, so a dtype error names what that argument takes.
  const role r = name == "q" || name == "k" || name == "v" || name == "out" ? role::floating
                 : name == "mask"                                           ? role::mask
                 : name == "lse"                                            ? role::lse
                 : name.rfind("cu_seqlens", 0) == 0                         ? role::offsets
                                                                            : role::any;
  const attend::tensor_view v = keep.input(array, name, r);
  nb::list shape;
  for (int i = 0; i < v.rank; ++i) shape.append(v.sizes[static_cast<std::size_t>(i)]);
  return nb::make_tuple(nb::tuple(shape), python_dtype_name(v.dtype),
                        v.device.kind == attend::device_kind::cpu ? "cpu" : "cuda", v.device.index);
}

// ---------------------------------------------------------------------------------------------
// Exceptions

// C++ names the key-side varlen arguments *_kv; the Python keywords are *_k.
std::string python_argument_names(std::string message) {
  for (auto [from, to] : {std::pair{"cu_seqlens_kv", "cu_seqlens_k"}, {"max_seqlen_q/kv", "max_seqlen_q/k"}}) {
    const std::string f = from, t = to;
    for (std::size_t at = message.find(f); at != std::string::npos; at = message.find(f, at + t.size()))
      message.replace(at, f.size(), t);
  }
  return message;
}

PyObject* g_unsupported_error = nullptr;  // attend.UnsupportedError (owned by the module)

void translate(const std::exception_ptr& e, void*) {
  try {
    std::rethrow_exception(e);
  } catch (const attend::unsupported& err) {
    nb::list rejections;
    for (const attend::rejection& r : err.rejections()) rejections.append(nb::make_tuple(r.backend, r.reason));
    nb::object instance = nb::steal(PyObject_CallOneArg(g_unsupported_error, nb::str(err.what()).ptr()));
    if (!instance.is_valid()) return;  // the Python error set by the failed call stands
    nb::setattr(instance, "rejections", rejections);
    PyErr_SetObject(g_unsupported_error, instance.ptr());
  } catch (const attend::invalid_argument& err) {
    // Dtype problems are type errors; shapes, strides, devices and values are value errors.
    const std::string message = python_argument_names(err.what());
    const bool about_dtype = message.find(": dtype") != std::string::npos;
    PyErr_SetString(about_dtype ? PyExc_TypeError : PyExc_ValueError, message.c_str());
  } catch (const attend::runtime_error& err) {
    PyErr_SetString(PyExc_RuntimeError, err.what());
  }
}

}  // namespace

NB_MODULE(_attend, m) {
  m.doc() = "attend's C++ core (use the `attend` package, not this module directly)";

  g_unsupported_error = PyErr_NewExceptionWithDoc(
      "attend.UnsupportedError",
      "No (allowed) backend supports this call. The message lists every backend's reason; "
      "`rejections` holds them as a list of (backend, reason) pairs. Subclass of RuntimeError.",
      PyExc_RuntimeError, nullptr);
  if (g_unsupported_error == nullptr) throw nb::python_error();
  m.attr("UnsupportedError") = nb::borrow(g_unsupported_error);
  nb::register_exception_translator(translate);

  m.def("version", [] { return std::string(attend::version()); }, "The C++ library's version.");

  m.def(
      "attention",
      [](nb::handle q, nb::handle k, nb::handle v, nb::handle out, nb::handle lse, nb::handle mask,
         nb::handle cu_seqlens_q, nb::handle cu_seqlens_k, const std::string& layout, std::optional<double> scale,
         bool causal, const std::string& causal_align, std::int64_t window_left, std::int64_t window_right,
         double softcap, std::int64_t max_seqlen_q, std::int64_t max_seqlen_k, const std::string& backend,
         const std::vector<std::string>& allow, const std::vector<std::string>& deny,
         const std::vector<std::string>& bf16_bits, std::uintptr_t cuda_stream, const nb::list& forward) {
        call c;
        build_call(c, q, k, v, out, lse, mask, cu_seqlens_q, cu_seqlens_k, layout, scale, causal, causal_align,
                   window_left, window_right, softcap, max_seqlen_q, max_seqlen_k, backend, allow, deny, bf16_bits);
        auto stack = to_forward_stack(forward);
        attend::run_options options;
        options.select = c.select;
        options.maybe_cuda_stream = reinterpret_cast<void*>(cuda_stream);
        std::string ran;
        {
          // The arrays stay alive in `c` (destroyed after the GIL is back).
          nb::gil_scoped_release release;
          forward_guards guards(std::move(stack));
          ran = attend::attention(c.params, options);
        }
        return ran;
      },
      "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a.none(), "mask"_a.none(), "cu_seqlens_q"_a.none(),
      "cu_seqlens_k"_a.none(), nb::kw_only(), "layout"_a, "scale"_a.none(), "causal"_a, "causal_align"_a,
      "window_left"_a, "window_right"_a, "softcap"_a, "max_seqlen_q"_a, "max_seqlen_k"_a, "backend"_a, "allow"_a,
      "deny"_a, "bf16_bits"_a, "cuda_stream"_a, "forward"_a,
      "Runs one attention call into `out` (and `lse`) with the GIL released; returns the backend's name.\n"
      "Low level: use attend.attention().");

  m.def(
      "explain",
      [](nb::handle q, nb::handle k, nb::handle v, nb::handle out, nb::handle lse, nb::handle mask,
         nb::handle cu_seqlens_q, nb::handle cu_seqlens_k, const std::string& layout, std::optional<double> scale,
         bool causal, const std::string& causal_align, std::int64_t window_left, std::int64_t window_right,
         double softcap, std::int64_t max_seqlen_q, std::int64_t max_seqlen_k, const std::string& backend,
         const std::vector<std::string>& allow, const std::vector<std::string>& deny,
         const std::vector<std::string>& bf16_bits) {
        call c;
        build_call(c, q, k, v, out, lse, mask, cu_seqlens_q, cu_seqlens_k, layout, scale, causal, causal_align,
                   window_left, window_right, softcap, max_seqlen_q, max_seqlen_k, backend, allow, deny, bf16_bits);
        std::vector<attend::explanation> lines;
        {
          nb::gil_scoped_release release;
          const attend::problem p = attend::make_problem(c.params);
          lines = attend::registry::global().explain(p, c.select);
        }
        nb::list result;
        for (const auto& e : lines) result.append(nb::make_tuple(e.backend, e.supported, e.selected, e.reason));
        return result;
      },
      "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a.none(), "mask"_a.none(), "cu_seqlens_q"_a.none(),
      "cu_seqlens_k"_a.none(), nb::kw_only(), "layout"_a, "scale"_a.none(), "causal"_a, "causal_align"_a,
      "window_left"_a, "window_right"_a, "softcap"_a, "max_seqlen_q"_a, "max_seqlen_k"_a, "backend"_a, "allow"_a,
      "deny"_a, "bf16_bits"_a,
      "One (backend, supported, selected, reason) tuple per backend, in priority order. Runs nothing.\n"
      "Low level: use attend.explain().");

  m.def("backends", &backends,
        "Every registered backend as a dict: name, devices, dtypes, features, priority, description,\n"
        "min_head_dim, max_head_dim, head_dim_multiple, exact.");
  m.def("backend_names", [] {
    std::vector<std::string> names;
    for (const auto& b : attend::registry::global().list()) names.emplace_back(b->name());
    return names;
  });
  m.def(
      "load_plugin",
      [](const std::string& path) {
        std::shared_ptr<const attend::backend> b = attend::load_plugin(path);
        std::string name(b->name());
        attend::registry::global().add(std::move(b));
        return name;
      },
      "path"_a, "Loads a backend from a shared library (attend/plugin.h) into the registry; returns its name.");
  m.def("tolerance", &tolerance, "dtype"_a,
        "The comparison tolerance table of attend's checks (Note [Tolerances]): atol, rtol, lse_atol, lse_rtol.");
  m.def("describe", &describe, "array"_a, "name"_a,
        "(shape, dtype name, device kind, device index) of an array, imported without copying.");
  m.def("current_forward_context", &current_forward_context, "forward"_a,
        "Test hook: runs a probe backend through attend::attention with the given forward-context stack\n"
        "and returns what it saw (present, timestep, layer, depth, values).");
}
