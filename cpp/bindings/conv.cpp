// Convolution glue: conv2d, conv2d_backward_data, conv2d_backward_weights.
// Shape legend: x (N, C, H, W), w (K, C/groups, R, S), b (K,), y (N, K, P, Q).
#include "conv/conv.h"

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "common/parallel.h"
#include "dispatch.h"

namespace simdnn::bind {
namespace {

struct ConvArgs {
  std::pair<int64_t, int64_t> stride, padding, dilation;
  int64_t groups;
};

ConvArgs parse_args(const py::handle& stride, const py::handle& padding, const py::handle& dilation,
                    const py::handle& groups, const char* fn) {
  ConvArgs a;
  a.stride = int_pair(stride, fn, "stride", 1);
  a.padding = int_pair(padding, fn, "padding", 0);
  a.dilation = int_pair(dilation, fn, "dilation", 1);
  // Any int, as for stride and the others: groups=np.int64(2) used to be refused with a TypeError.
  if (!is_int(groups)) {
    type_error(std::string(fn) + ": groups must be an int, got " +
               py::repr(groups).cast<std::string>());
  }
  a.groups = int64_of(groups, fn, "groups", groups);
  if (a.groups < 1) {
    value_error(std::string(fn) + ": groups must be >= 1, got " + std::to_string(a.groups));
  }
  return a;
}

// Checks x_shape (N, C, H, W) against w_shape (K, C/groups, R, S) and the arguments and returns
// the full geometry, P and Q included.
Conv2d geometry(const std::vector<int64_t>& xs, const std::vector<int64_t>& ws, const ConvArgs& a,
                const char* fn, const char* x_name, const char* w_name) {
  Conv2d cv;
  cv.n = xs[0];
  cv.c = xs[1];
  cv.h = xs[2];
  cv.w = xs[3];
  cv.k = ws[0];
  cv.r = ws[2];
  cv.s = ws[3];
  cv.sh = a.stride.first;
  cv.sw = a.stride.second;
  cv.ph = a.padding.first;
  cv.pw = a.padding.second;
  cv.dh = a.dilation.first;
  cv.dw = a.dilation.second;
  cv.groups = a.groups;
  const std::string f(fn);
  if (cv.c % cv.groups != 0 || cv.k % cv.groups != 0) {
    value_error(f + ": groups=" + std::to_string(cv.groups) + " must divide both the " +
                std::to_string(cv.c) + " input channels of " + x_name + " and the " +
                std::to_string(cv.k) + " filters of " + w_name);
  }
  if (ws[1] != cv.c / cv.groups) {
    value_error(f + ": " + w_name + " has shape " + tuple_str(ws) + " but " + x_name + " has " +
                std::to_string(cv.c) + " channels and groups=" + std::to_string(cv.groups) +
                ": expected " + w_name +
                ".shape[1] == C / groups == " + std::to_string(cv.c / cv.groups));
  }
  if (cv.r < 1 || cv.s < 1) {
    value_error(f + ": the kernel size must be at least 1x1, " + w_name + " has shape " +
                tuple_str(ws));
  }
  // Padding and dilation may be any int64, so the padded input and the dilated kernel are sized
  // without overflow: wrapped around, padding=2**62 gave a negative padded size, and dilation=2**62
  // with a 5x5 kernel an "effective" kernel of 1 and a silently wrong convolution.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (cv.ph > (kMax - cv.h) / 2 || cv.pw > (kMax - cv.w) / 2) {
    value_error(f + ": padding (" + std::to_string(cv.ph) + ", " + std::to_string(cv.pw) +
                ") is too large: the padded input does not fit in a 64-bit integer");
  }
  const int64_t hp = cv.h + 2 * cv.ph, wp = cv.w + 2 * cv.pw;
  // dilation * (size - 1) + 1, or -1 when it is larger than int64 (and so than any input).
  auto dilated = [&](int64_t size, int64_t d) -> int64_t {
    return size > 1 && d > (kMax - 1) / (size - 1) ? -1 : d * (size - 1) + 1;
  };
  const int64_t eff_r = dilated(cv.r, cv.dh), eff_s = dilated(cv.s, cv.dw);
  if (eff_r < 0 || eff_s < 0 || eff_r > hp || eff_s > wp) {
    auto str = [](int64_t e) { return e < 0 ? std::string("> 2^63") : std::to_string(e); };
    value_error(f + ": the kernel (" + str(eff_r) + " x " + str(eff_s) +
                " with dilation) is larger than the padded input (" + std::to_string(hp) + " x " +
                std::to_string(wp) + ")");
  }
  cv.p = (hp - eff_r) / cv.sh + 1;
  cv.q = (wp - eff_s) / cv.sw + 1;
  cv.nthreads = get_num_threads();
  return cv;
}

// algorithm: "auto", "direct", "winograd" or "winograd_2x2"; the Winograd ones only where they can
// compute the layer.
void set_algorithm(Conv2d& cv, const py::handle& algorithm, const char* fn,
                   bool backward_data = false) {
  const std::string f(fn);
  if (!py::isinstance<py::str>(algorithm)) {
    type_error(f +
               ": algorithm must be a str ('auto', 'direct', 'winograd' or "
               "'winograd_2x2'), got " +
               py::repr(algorithm).cast<std::string>());
  }
  const std::string name = algorithm.cast<std::string>();
  if (name == "auto") {
    cv.algorithm = ConvAlgorithm::automatic;
  } else if (name == "direct") {
    cv.algorithm = ConvAlgorithm::direct;
  } else if (name == "winograd" || name == "winograd_2x2") {
    if (!winograd_eligible(cv, backward_data)) {
      auto pair = [](int64_t a, int64_t b) {
        return "(" + std::to_string(a) + ", " + std::to_string(b) + ")";
      };
      value_error(f + ": algorithm='" + name +
                  "' needs a 3x3 kernel, stride 1, dilation 1, groups=1 "
                  "and padding at most 2; got kernel " +
                  pair(cv.r, cv.s) + ", stride " + pair(cv.sh, cv.sw) + ", dilation " +
                  pair(cv.dh, cv.dw) + ", groups=" + std::to_string(cv.groups) + ", padding " +
                  pair(cv.ph, cv.pw));
    }
    cv.algorithm = name == "winograd" ? ConvAlgorithm::winograd : ConvAlgorithm::winograd_2x2;
  } else {
    value_error(f + ": algorithm must be 'auto', 'direct', 'winograd' or 'winograd_2x2', got " +
                py::repr(algorithm).cast<std::string>());
  }
}

std::vector<int64_t> shape_of(const py::array& a) {
  std::vector<int64_t> s;
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s.push_back(a.shape(i));
  return s;
}

void require_shape(const py::array& a, const std::vector<int64_t>& want, const char* fn,
                   const char* name) {
  if (shape_of(a) != want) {
    value_error(std::string(fn) + ": '" + name + "' has shape " + shape_str(a) + "; expected " +
                tuple_str(want));
  }
}

py::array conv2d(const py::object& x_obj, const py::object& w_obj, const py::object& b_obj,
                 const py::object& stride, const py::object& padding, const py::object& dilation,
                 const py::object& groups, const py::object& algorithm, const py::object& out_obj) {
  const char* fn = "conv2d";
  py::array x = as_contiguous_float_array(x_obj, fn, "x");
  py::array w = as_contiguous_float_array(w_obj, fn, "w");
  require_ndim(x, 4, fn, "x");
  require_ndim(w, 4, fn, "w");
  require_same_dtype(x, "x", w, "w", fn);
  Conv2d cv = geometry(shape_of(x), shape_of(w), parse_args(stride, padding, dilation, groups, fn),
                       fn, "x", "w");
  set_algorithm(cv, algorithm, fn);
  py::array b;
  if (!b_obj.is_none()) {
    b = as_contiguous_float_array(b_obj, fn, "b");
    require_same_dtype(x, "x", b, "b", fn);
    require_shape(b, {cv.k}, fn, "b");
  }
  const std::vector<int64_t> y_shape = {cv.n, cv.k, cv.p, cv.q};
  py::array out;
  if (!out_obj.is_none()) out = output_array(out_obj, x.dtype(), y_shape, fn, "out", "x's");
  const bool direct = !out_obj.is_none() && direct_output(out, {&x, &w, &b});
  py::array y = direct ? out : new_array(x, y_shape);
  dispatch_dtype(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto f = kernels().get<T>().conv_forward;
    const T *xp = cdata<T>(x), *wp = cdata<T>(w), *bp = b_obj.is_none() ? nullptr : cdata<T>(b);
    T* yp = mdata<T>(y);
    py::gil_scoped_release release;
    KernelCallScope workspace_scope;
    f(cv, xp, wp, bp, yp);
  });
  if (out_obj.is_none()) return y;
  if (!direct) numpy().attr("copyto")(out, y);
  return out;
}

py::array conv2d_backward_data(const py::object& dy_obj, const py::object& w_obj,
                               const py::object& x_shape, const py::object& stride,
                               const py::object& padding, const py::object& dilation,
                               const py::object& groups, const py::object& algorithm) {
  const char* fn = "conv2d_backward_data";
  py::array dy = as_contiguous_float_array(dy_obj, fn, "dy");
  py::array w = as_contiguous_float_array(w_obj, fn, "w");
  require_ndim(dy, 4, fn, "dy");
  require_ndim(w, 4, fn, "w");
  require_same_dtype(dy, "dy", w, "w", fn);
  const std::vector<int64_t> xs = shape_tuple(x_shape, 4, fn, "x_shape");
  Conv2d cv = geometry(xs, shape_of(w), parse_args(stride, padding, dilation, groups, fn), fn,
                       "x_shape", "w");
  set_algorithm(cv, algorithm, fn, true);
  require_shape(dy, {cv.n, cv.k, cv.p, cv.q}, fn, "dy");
  py::array dx = new_array(dy, xs);
  dispatch_dtype(dy, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto f = kernels().get<T>().conv_backward_data;
    const T *gp = cdata<T>(dy), *wp = cdata<T>(w);
    T* out = mdata<T>(dx);
    py::gil_scoped_release release;
    KernelCallScope workspace_scope;
    f(cv, gp, wp, out);
  });
  return dx;
}

py::tuple conv2d_backward_weights(const py::object& x_obj, const py::object& dy_obj,
                                  const py::object& w_shape, const py::object& stride,
                                  const py::object& padding, const py::object& dilation,
                                  const py::object& groups, const py::object& algorithm) {
  const char* fn = "conv2d_backward_weights";
  py::array x = as_contiguous_float_array(x_obj, fn, "x");
  py::array dy = as_contiguous_float_array(dy_obj, fn, "dy");
  require_ndim(x, 4, fn, "x");
  require_ndim(dy, 4, fn, "dy");
  require_same_dtype(x, "x", dy, "dy", fn);
  const std::vector<int64_t> ws = shape_tuple(w_shape, 4, fn, "w_shape");
  Conv2d cv = geometry(shape_of(x), ws, parse_args(stride, padding, dilation, groups, fn), fn, "x",
                       "w_shape");
  set_algorithm(cv, algorithm, fn);
  require_shape(dy, {cv.n, cv.k, cv.p, cv.q}, fn, "dy");
  py::array dw = new_array(x, ws);
  py::array db = new_array(x, {cv.k});
  dispatch_dtype(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto f = kernels().get<T>().conv_backward_weights;
    const T *xp = cdata<T>(x), *gp = cdata<T>(dy);
    T *dwp = mdata<T>(dw), *dbp = mdata<T>(db);
    py::gil_scoped_release release;
    KernelCallScope workspace_scope;
    f(cv, xp, gp, dwp, dbp);
  });
  return py::make_tuple(dw, db);
}

}  // namespace

void bind_conv(py::module_& m) {
  m.def("conv2d", &conv2d, py::arg("x"), py::arg("w"), py::arg("b") = py::none(),
        py::arg("stride") = 1, py::arg("padding") = 0, py::arg("dilation") = 1,
        py::arg("groups") = 1, py::arg("algorithm") = "auto", py::arg("out") = py::none());
  m.def("conv2d_backward_data", &conv2d_backward_data, py::arg("dy"), py::arg("w"),
        py::arg("x_shape"), py::arg("stride") = 1, py::arg("padding") = 0, py::arg("dilation") = 1,
        py::arg("groups") = 1, py::arg("algorithm") = "auto");
  m.def("conv2d_backward_weights", &conv2d_backward_weights, py::arg("x"), py::arg("dy"),
        py::arg("w_shape"), py::arg("stride") = 1, py::arg("padding") = 0, py::arg("dilation") = 1,
        py::arg("groups") = 1, py::arg("algorithm") = "auto");
}

}  // namespace simdnn::bind
