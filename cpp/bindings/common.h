// Shared argument conversion and checking for the pybind11 glue. Everything here converts or
// checks; nothing computes on array data.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace simdnn::bind {

namespace py = pybind11;

std::string shape_str(const py::array& a);
std::string dtype_str(const py::array& a);
[[noreturn]] void type_error(const std::string& msg);
[[noreturn]] void value_error(const std::string& msg);
py::module_& numpy();

// A float32/float64 ndarray in native byte order whose strides are whole elements and whose data
// is aligned, converting (copying) only what the kernels cannot read as it is: array-likes,
// byte-swapped or misaligned data. Integer, complex, float16, bool and object inputs are refused
// with a TypeError naming `fn` and `arg`.
py::array as_float_array(const py::handle& obj, const char* fn, const char* arg);
// The same, additionally C-contiguous (a copy when it is not).
py::array as_contiguous_float_array(const py::handle& obj, const char* fn, const char* arg);

// Whether a dtype is in the host's byte order (read from the descriptor, no Python call).
bool is_native(const py::dtype& dt);

void require_ndim(const py::array& a, int ndim, const char* fn, const char* arg);
void require_same_dtype(const py::array& a, const char* an, const py::array& b, const char* bn,
                        const char* fn);
// Element stride of axis i.
int64_t estride(const py::array& a, int i);
// Whether two arrays' memory ranges may intersect (bounds check, as numpy.may_share_memory).
bool may_overlap(const py::array& a, const py::array& b);
// A new C-contiguous array of `like`'s dtype.
py::array new_array(const py::array& like, const std::vector<int64_t>& shape);
// An `out=` argument: a writable NumPy array of exactly `dtype` and `shape` (any strides). Else a
// TypeError (not an array, another dtype; byte-swapped counts as another dtype) or a ValueError
// (shape, read-only) naming fn and arg; `whose` says where the expected dtype comes from ("x's",
// "the indices'"). simdnn._opspec.check_output raises the same for the NumPy twins.
py::array output_array(const py::handle& obj, const py::dtype& dtype,
                       const std::vector<int64_t>& shape, const char* fn, const char* arg,
                       const char* whose);
// Whether a kernel may write `out` itself: C-contiguous, aligned, sharing no memory with any of
// `inputs`. Otherwise the glue has the kernel write a new array and copies it into `out`, so an
// `out` that aliases an input gets what a separate output would (NumPy's out= semantics).
bool direct_output(const py::array& out, std::initializer_list<const py::array*> inputs);
// Whether `o` is an int to the ops: a Python int or an integer with __index__ (NumPy ints), not a
// bool or a float.
bool is_int(const py::handle& o);
// An int (is_int) as int64; ValueError naming fn and arg (and showing `whole`, the argument it
// came from) when it does not fit.
int64_t int64_of(const py::handle& o, const char* fn, const char* arg, const py::handle& whole);
// A parameter given as an int or a pair of ints, as PyTorch accepts (stride, padding, ...);
// each value must be >= min_value. TypeError/ValueError name fn and arg.
std::pair<int64_t, int64_t> int_pair(const py::handle& obj, const char* fn, const char* arg,
                                     int64_t min_value);
// A shape tuple of `n` non-negative ints (x_shape, w_shape, ...).
std::vector<int64_t> shape_tuple(const py::handle& obj, size_t n, const char* fn, const char* arg);
std::string tuple_str(const std::vector<int64_t>& v);

// The one float32/float64 branch of the glue. dispatch_dtype(a, f) calls f(DtypeTag<float>{}) when
// a is float32 and f(DtypeTag<double>{}) otherwise (the argument checks have already refused every
// other dtype) and returns what f returns; for_each_dtype(f) calls both, float32 first. In f:
//   using T = typename decltype(tag)::type;
template <typename T>
struct DtypeTag {
  using type = T;
};
template <typename F>
decltype(auto) dispatch_dtype(const py::array& a, F&& f) {
  if (a.dtype().itemsize() == 4) return f(DtypeTag<float>{});
  return f(DtypeTag<double>{});
}
template <typename F>
void for_each_dtype(F&& f) {
  f(DtypeTag<float>{});
  f(DtypeTag<double>{});
}

// An array's data as T (its dtype already checked).
template <typename T>
const T* cdata(const py::array& a) {
  return static_cast<const T*>(a.data());
}
template <typename T>
T* mdata(py::array& a) {
  return static_cast<T*>(a.mutable_data());
}

void bind_runtime(py::module_& m);
void bind_gemm(py::module_& m);
void bind_conv(py::module_& m);
void bind_pool(py::module_& m);
void bind_elementwise(py::module_& m);
void bind_norm(py::module_& m);

}  // namespace simdnn::bind
