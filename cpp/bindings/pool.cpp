// Pooling glue: max_pool2d, avg_pool2d and their backward passes. Every argument is checked here
// (TypeError for types and dtypes, ValueError for shapes and values, each naming the function and
// the argument); the kernels (cpp/pool) trust what they get, except the max-pool indices, whose
// bad entries they count.
//
// Shape legend: x (N, C, H, W), window R x S, y (N, C, P, Q), P = (H + 2*ph - R) / sh + 1.
#include "pool/pool.h"

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "bindings/common.h"
#include "common/parallel.h"
#include "dispatch.h"

namespace simdnn::bind {
namespace {

std::string pair_str(int64_t a, int64_t b) {
  return "(" + std::to_string(a) + ", " + std::to_string(b) + ")";
}

struct Window {
  int64_t r, s, sh, sw, ph, pw;
};

// kernel_size, stride (None: the kernel size) and padding, as PyTorch accepts and checks them.
Window parse_window(const py::object& kernel_size, const py::object& stride,
                    const py::object& padding, const char* fn) {
  Window w{};
  std::tie(w.r, w.s) = int_pair(kernel_size, fn, "kernel_size", 1);
  if (stride.is_none()) {
    w.sh = w.r;
    w.sw = w.s;
  } else {
    std::tie(w.sh, w.sw) = int_pair(stride, fn, "stride", 1);
  }
  std::tie(w.ph, w.pw) = int_pair(padding, fn, "padding", 0);
  if (w.ph > w.r / 2 || w.pw > w.s / 2) {
    value_error(std::string(fn) + ": padding must be at most half of kernel_size, got padding " +
                pair_str(w.ph, w.pw) + " with kernel_size " + pair_str(w.r, w.s));
  }
  // Max-pool indices are int32 positions inside the window.
  constexpr int64_t kMaxPositions = 0x7fffffff;
  if (w.r > kMaxPositions / w.s) {
    value_error(std::string(fn) + ": kernel_size " + pair_str(w.r, w.s) +
                " has more than 2^31 - 1 positions");
  }
  return w;
}

// The Pool2d of an input of shape x_shape (N, C, H, W) under window w; x_desc names the input in
// messages ("x of shape (...)" or "x_shape (...)").
Pool2d make_pool(const std::vector<int64_t>& x_shape, const Window& w, const char* fn,
                 const std::string& x_desc) {
  const int64_t h = x_shape[2], wd = x_shape[3];
  if (h == 0 || wd == 0) {
    value_error(std::string(fn) + ": " + x_desc + " must have a non-zero height and width");
  }
  // x_shape may hold any int64: padding (at most 2^30, half a window of < 2^31 positions) must not
  // wrap a huge height around.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (h > kMax - 2 * w.ph || wd > kMax - 2 * w.pw) {
    value_error(std::string(fn) + ": " + x_desc + " is too large to pad");
  }
  if (h + 2 * w.ph < w.r || wd + 2 * w.pw < w.s) {
    value_error(std::string(fn) + ": kernel_size " + pair_str(w.r, w.s) +
                " is larger than the padded input " + pair_str(h + 2 * w.ph, wd + 2 * w.pw) + " (" +
                x_desc + ", padding " + pair_str(w.ph, w.pw) + "); the output would be empty");
  }
  Pool2d pl;
  pl.n = x_shape[0];
  pl.c = x_shape[1];
  pl.h = h;
  pl.w = wd;
  pl.r = w.r;
  pl.s = w.s;
  pl.sh = w.sh;
  pl.sw = w.sw;
  pl.ph = w.ph;
  pl.pw = w.pw;
  pl.p = (h + 2 * w.ph - w.r) / w.sh + 1;
  pl.q = (wd + 2 * w.pw - w.s) / w.sw + 1;
  pl.nthreads = get_num_threads();
  return pl;
}

std::vector<int64_t> shape_of(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

std::vector<int64_t> out_shape(const Pool2d& pl) { return {pl.n, pl.c, pl.p, pl.q}; }

std::string window_desc(const Pool2d& pl) {
  return "kernel_size " + pair_str(pl.r, pl.s) + ", stride " + pair_str(pl.sh, pl.sw) +
         ", padding " + pair_str(pl.ph, pl.pw);
}

// dy (and the indices) of a backward pass must have the forward output's shape.
void require_out_shape(const py::array& a, const char* arg, const Pool2d& pl, const char* fn) {
  if (shape_of(a) != out_shape(pl)) {
    value_error(std::string(fn) + ": '" + arg + "' has shape " + shape_str(a) + "; expected " +
                tuple_str(out_shape(pl)) + ", the output of pooling x_shape " +
                tuple_str({pl.n, pl.c, pl.h, pl.w}) + " with " + window_desc(pl));
  }
}

py::dtype index_dtype(const Pool2d& pl) {
  return pool_index_is_u8(pl) ? py::dtype::of<uint8_t>() : py::dtype::of<int32_t>();
}

// ---------------------------------------------------------------------------------------------

py::tuple max_pool2d(const py::object& x_obj, const py::object& kernel_size,
                     const py::object& stride, const py::object& padding,
                     const py::object& out_obj) {
  const char* fn = "max_pool2d";
  py::array x = as_contiguous_float_array(x_obj, fn, "x");
  require_ndim(x, 4, fn, "x");
  const Window w = parse_window(kernel_size, stride, padding, fn);
  const Pool2d pl = make_pool(shape_of(x), w, fn, "x of shape " + shape_str(x));
  const std::vector<int64_t> shape = out_shape(pl);
  py::array out_y, out_idx;
  if (!out_obj.is_none()) {
    if (!py::isinstance<py::tuple>(out_obj) || py::len(out_obj) != 2) {
      type_error(std::string(fn) +
                 ": 'out' must be a tuple (y, indices) of two NumPy arrays, got " +
                 (py::isinstance<py::tuple>(out_obj)
                      ? "a tuple of length " + std::to_string(py::len(out_obj))
                      : py::str(py::type::of(out_obj)).cast<std::string>()));
    }
    const py::tuple pair = py::reinterpret_borrow<py::tuple>(out_obj);
    out_y = output_array(pair[0], x.dtype(), shape, fn, "out[0]", "x's");
    out_idx = output_array(pair[1], index_dtype(pl), shape, fn, "out[1]", "the indices'");
    if (may_overlap(out_y, out_idx)) {
      value_error(std::string(fn) + ": 'out[0]' and 'out[1]' share memory");
    }
  }
  const bool direct =
      !out_obj.is_none() && direct_output(out_y, {&x}) && direct_output(out_idx, {&x});
  const std::vector<py::ssize_t> s(shape.begin(), shape.end());
  py::array y = direct ? out_y : new_array(x, shape);
  py::array idx = direct ? out_idx : py::array(index_dtype(pl), s);
  if (y.size() > 0) {
    dispatch_dtype(x, [&](auto tag) {
      using T = typename decltype(tag)::type;
      auto f = kernels().get<T>().max_pool_forward;
      const T* px = cdata<T>(x);
      T* py_ = mdata<T>(y);
      void* pi = idx.mutable_data();
      py::gil_scoped_release release;
      KernelCallScope workspace_scope;
      f(pl, px, py_, pi);
    });
  }
  if (out_obj.is_none()) return py::make_tuple(y, idx);
  if (!direct) {
    numpy().attr("copyto")(out_y, y);
    numpy().attr("copyto")(out_idx, idx);
  }
  return py::make_tuple(out_y, out_idx);
}

py::array max_pool2d_backward(const py::object& dy_obj, const py::object& idx_obj,
                              const py::object& x_shape_obj, const py::object& kernel_size,
                              const py::object& stride, const py::object& padding) {
  const char* fn = "max_pool2d_backward";
  py::array dy = as_contiguous_float_array(dy_obj, fn, "dy");
  require_ndim(dy, 4, fn, "dy");
  const std::vector<int64_t> x_shape = shape_tuple(x_shape_obj, 4, fn, "x_shape");
  const Window w = parse_window(kernel_size, stride, padding, fn);
  const Pool2d pl = make_pool(x_shape, w, fn, "x_shape " + tuple_str(x_shape));
  require_out_shape(dy, "dy", pl, fn);

  if (!py::isinstance<py::array>(idx_obj)) {
    type_error(std::string(fn) + ": 'indices' must be a NumPy array (as returned by max_pool2d), " +
               "got " + py::str(py::type::of(idx_obj)).cast<std::string>());
  }
  py::array idx = py::reinterpret_borrow<py::array>(idx_obj);
  const bool u8 = pool_index_is_u8(pl);
  const char kind = idx.dtype().kind();
  if (!(u8 ? (kind == 'u' && idx.dtype().itemsize() == 1)
           : (kind == 'i' && idx.dtype().itemsize() == 4))) {
    type_error(std::string(fn) + ": 'indices' has dtype " + dtype_str(idx) + "; expected " +
               (u8 ? "uint8" : "int32") + " for a " + std::to_string(pl.r) + "x" +
               std::to_string(pl.s) +
               " window (uint8 when R * S <= 256, else int32), as returned by max_pool2d");
  }
  require_ndim(idx, 4, fn, "indices");
  require_out_shape(idx, "indices", pl, fn);
  // Native byte order, C order, aligned: copy only what is not.
  idx = numpy().attr("ascontiguousarray")(idx, py::arg("dtype") = index_dtype(pl));
  if (!idx.attr("flags").attr("aligned").cast<bool>()) {
    idx = numpy().attr("array")(idx, py::arg("copy") = true, py::arg("order") = "C");
  }

  py::array dx = new_array(dy, x_shape);
  if (dx.size() == 0) return dx;
  const int64_t bad = dispatch_dtype(dy, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto f = kernels().get<T>().max_pool_backward;
    const T* pdy = cdata<T>(dy);
    const void* pi = idx.data();
    T* pdx = mdata<T>(dx);
    py::gil_scoped_release release;
    KernelCallScope workspace_scope;
    return f(pl, pdy, pi, pdx);
  });
  if (bad != 0) {
    value_error(std::string(fn) + ": " + std::to_string(bad) + " of " + std::to_string(idx.size()) +
                " indices out of range: each entry of 'indices' " +
                "must be a position r * S + s < " + std::to_string(pl.r * pl.s) + " of its " +
                std::to_string(pl.r) + "x" + std::to_string(pl.s) +
                " window that lies inside the input, not in the padding (as max_pool2d returns)");
  }
  return dx;
}

py::array avg_pool2d(const py::object& x_obj, const py::object& kernel_size,
                     const py::object& stride, const py::object& padding, bool count_include_pad) {
  const char* fn = "avg_pool2d";
  py::array x = as_contiguous_float_array(x_obj, fn, "x");
  require_ndim(x, 4, fn, "x");
  const Window w = parse_window(kernel_size, stride, padding, fn);
  const Pool2d pl = make_pool(shape_of(x), w, fn, "x of shape " + shape_str(x));
  py::array y = new_array(x, out_shape(pl));
  if (y.size() > 0) {
    dispatch_dtype(x, [&](auto tag) {
      using T = typename decltype(tag)::type;
      auto f = kernels().get<T>().avg_pool_forward;
      const T* px = cdata<T>(x);
      T* py_ = mdata<T>(y);
      py::gil_scoped_release release;
      KernelCallScope workspace_scope;
      f(pl, count_include_pad, px, py_);
    });
  }
  return y;
}

py::array avg_pool2d_backward(const py::object& dy_obj, const py::object& x_shape_obj,
                              const py::object& kernel_size, const py::object& stride,
                              const py::object& padding, bool count_include_pad) {
  const char* fn = "avg_pool2d_backward";
  py::array dy = as_contiguous_float_array(dy_obj, fn, "dy");
  require_ndim(dy, 4, fn, "dy");
  const std::vector<int64_t> x_shape = shape_tuple(x_shape_obj, 4, fn, "x_shape");
  const Window w = parse_window(kernel_size, stride, padding, fn);
  const Pool2d pl = make_pool(x_shape, w, fn, "x_shape " + tuple_str(x_shape));
  require_out_shape(dy, "dy", pl, fn);
  py::array dx = new_array(dy, x_shape);
  if (dx.size() == 0) return dx;
  dispatch_dtype(dy, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto f = kernels().get<T>().avg_pool_backward;
    const T* pdy = cdata<T>(dy);
    T* pdx = mdata<T>(dx);
    py::gil_scoped_release release;
    KernelCallScope workspace_scope;
    f(pl, count_include_pad, pdy, pdx);
  });
  return dx;
}

}  // namespace

void bind_pool(py::module_& m) {
  m.def("max_pool2d", &max_pool2d, py::arg("x"), py::arg("kernel_size"),
        py::arg("stride") = py::none(), py::arg("padding") = 0, py::arg("out") = py::none());
  m.def("max_pool2d_backward", &max_pool2d_backward, py::arg("dy"), py::arg("indices"),
        py::arg("x_shape"), py::arg("kernel_size"), py::arg("stride") = py::none(),
        py::arg("padding") = 0);
  m.def("avg_pool2d", &avg_pool2d, py::arg("x"), py::arg("kernel_size"),
        py::arg("stride") = py::none(), py::arg("padding") = 0,
        py::arg("count_include_pad") = true);
  m.def("avg_pool2d_backward", &avg_pool2d_backward, py::arg("dy"), py::arg("x_shape"),
        py::arg("kernel_size"), py::arg("stride") = py::none(), py::arg("padding") = 0,
        py::arg("count_include_pad") = true);
}

}  // namespace simdnn::bind
