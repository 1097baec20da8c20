// Normalisation glue: batch_norm and batch_norm_backward. Converts and checks the arguments,
// allocates the outputs and calls the active kernel table with the GIL released.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "common/parallel.h"
#include "dispatch.h"
#include "norm/batch_norm.h"

namespace simdnn::bind {
namespace {

std::vector<int64_t> shape_of(const py::array& a) {
  std::vector<int64_t> s;
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s.push_back(a.shape(i));
  return s;
}

// The (N, C, S) view of an input of shape (N, C, *spatial).
struct Ncs {
  int64_t n = 0, c = 0, s = 1;
};

Ncs ncs_of(const py::array& x, const char* fn, const char* arg) {
  if (x.ndim() < 2) {
    value_error(std::string(fn) + ": '" + arg +
                "' must have at least 2 dimensions (N, C, *spatial), got shape " + shape_str(x));
  }
  Ncs d;
  d.n = x.shape(0);
  d.c = x.shape(1);
  for (py::ssize_t i = 2; i < x.ndim(); ++i) d.s *= x.shape(i);
  return d;
}

void require_channels(const py::array& a, const char* arg, const py::array& x, int64_t c,
                      const char* fn) {
  require_same_dtype(a, arg, x, "x", fn);
  if (a.ndim() != 1 || a.shape(0) != c) {
    value_error(std::string(fn) + ": '" + arg + "' has shape " + shape_str(a) + "; expected (" +
                std::to_string(c) + ",), the channels (axis 1) of x of shape " + shape_str(x));
  }
}

// A per-channel input (weight, bias, ...): None or a (C,) array of x's dtype, made contiguous.
py::object channel_input(const py::object& obj, const char* arg, const py::array& x, int64_t c,
                         const char* fn) {
  if (obj.is_none()) return py::none();
  py::array a = as_contiguous_float_array(obj, fn, arg);
  require_channels(a, arg, x, c, fn);
  return a;
}

// A running statistic updated in place: a writeable (C,) ndarray of x's dtype. When it is not
// C-contiguous the kernel works on a contiguous copy that write_back() copies into it.
struct InPlace {
  py::object target = py::none(), work = py::none();
  void write_back() const {
    if (!work.is_none() && !target.is(work)) numpy().attr("copyto")(target, work);
  }
};

InPlace running_in_place(const py::object& obj, const char* arg, const py::array& x, int64_t c,
                         const char* fn) {
  InPlace r;
  if (obj.is_none()) return r;
  if (!py::isinstance<py::array>(obj)) {
    type_error(std::string(fn) + ": '" + arg +
               "' must be a NumPy array (it is updated in place in training), got " +
               py::str(py::type::of(obj)).cast<std::string>());
  }
  py::array t = py::reinterpret_borrow<py::array>(obj);
  r.target = t;
  const py::dtype dt = t.dtype();
  if (dt.kind() != 'f' || dt.itemsize() != x.dtype().itemsize() || !is_native(dt)) {
    type_error(std::string(fn) + ": '" + arg + "' has dtype " + dtype_str(t) + " but 'x' is " +
               dtype_str(x) + "; both must have the same dtype");
  }
  require_channels(t, arg, x, c, fn);
  if (!t.writeable()) {
    value_error(std::string(fn) + ": '" + arg +
                "' must be writeable (it is updated in place in training)");
  }
  const bool direct = (t.flags() & py::array::c_style) &&
                      reinterpret_cast<std::uintptr_t>(t.data()) % dt.itemsize() == 0;
  r.work = direct ? py::object(t)
                  : numpy().attr("array")(t, py::arg("copy") = true, py::arg("order") = "C");
  return r;
}

// Data pointers of arrays or None (nullptr).
template <typename T>
T* ptr(const py::object& a) {
  return a.is_none() ? nullptr
                     : static_cast<T*>(py::reinterpret_borrow<py::array>(a).mutable_data());
}
template <typename T>
const T* cptr(const py::object& a) {
  return a.is_none() ? nullptr : static_cast<const T*>(py::reinterpret_borrow<py::array>(a).data());
}

template <typename T>
void run_forward(const Ncs& d, const py::array& x, const py::object& w, const py::object& b,
                 const py::object& rm, const py::object& rv, const py::array& mean,
                 const py::array& invstd, const py::array& y, const BatchNormParams& p) {
  auto f = kernels().get<T>().batch_norm_forward;
  const int nt = get_num_threads();
  const T *px = cptr<T>(x), *pw = cptr<T>(w), *pb = cptr<T>(b);
  // The running statistics are written only in training, where running_in_place checked that
  // they are writeable; in eval they may be read-only arrays.
  T *prm = const_cast<T*>(cptr<T>(rm)), *prv = const_cast<T*>(cptr<T>(rv));
  T *pm = ptr<T>(mean), *pi = ptr<T>(invstd), *py_ = ptr<T>(y);
  py::gil_scoped_release r;
  KernelCallScope workspace_scope;
  f(d.n, d.c, d.s, px, pw, pb, prm, prv, pm, pi, py_, p, nt);
}

py::tuple batch_norm(const py::object& x_obj, const py::object& w_obj, const py::object& b_obj,
                     const py::object& rm_obj, const py::object& rv_obj, bool training,
                     double momentum, double eps) {
  const char* fn = "batch_norm";
  py::array x = as_contiguous_float_array(x_obj, fn, "x");
  const Ncs d = ncs_of(x, fn, "x");
  if (!(std::isfinite(eps) && eps > 0.0)) {
    value_error(std::string(fn) + ": eps must be a finite number > 0, got " +
                py::repr(py::float_(eps)).cast<std::string>());
  }
  if (!(momentum >= 0.0 && momentum <= 1.0)) {
    value_error(std::string(fn) + ": momentum must be in [0, 1], got " +
                py::repr(py::float_(momentum)).cast<std::string>());
  }
  const py::object w = channel_input(w_obj, "weight", x, d.c, fn);
  const py::object b = channel_input(b_obj, "bias", x, d.c, fn);
  InPlace rm, rv;
  if (training) {
    rm = running_in_place(rm_obj, "running_mean", x, d.c, fn);
    rv = running_in_place(rv_obj, "running_var", x, d.c, fn);
    if (d.n * d.s == 1) {
      value_error(std::string(fn) +
                  ": expected more than 1 value per channel when training, got x of shape " +
                  shape_str(x));
    }
  } else {
    if (rm_obj.is_none() || rv_obj.is_none()) {
      value_error(std::string(fn) +
                  ": training=False needs 'running_mean' and 'running_var' (got None)");
    }
    rm.work = channel_input(rm_obj, "running_mean", x, d.c, fn);
    rv.work = channel_input(rv_obj, "running_var", x, d.c, fn);
  }
  py::array y = new_array(x, shape_of(x));
  py::array mean = new_array(x, {d.c});
  py::array invstd = new_array(x, {d.c});
  BatchNormParams p;
  p.training = training;
  p.momentum = momentum;
  p.eps = eps;
  dispatch_dtype(x, [&](auto tag) {
    run_forward<typename decltype(tag)::type>(d, x, w, b, rm.work, rv.work, mean, invstd, y, p);
  });
  if (training) {
    rm.write_back();
    rv.write_back();
  }
  return py::make_tuple(y, mean, invstd);
}

template <typename T>
void run_backward(const Ncs& d, const py::array& dy, const py::array& x, const py::object& w,
                  const py::object& mean, const py::object& invstd, bool training,
                  const py::object& dx, const py::array& dw, const py::array& db) {
  auto f = kernels().get<T>().batch_norm_backward;
  const int nt = get_num_threads();
  const T *pdy = cptr<T>(dy), *px = cptr<T>(x), *pw = cptr<T>(w), *pm = cptr<T>(mean),
          *pi = cptr<T>(invstd);
  T *pdx = ptr<T>(dx), *pdw = ptr<T>(dw), *pdb = ptr<T>(db);
  py::gil_scoped_release r;
  KernelCallScope workspace_scope;
  f(d.n, d.c, d.s, pdy, px, pw, pm, pi, training, pdx, pdw, pdb, nt);
}

py::tuple batch_norm_backward(const py::object& dy_obj, const py::object& x_obj,
                              const py::object& w_obj, const py::object& mean_obj,
                              const py::object& invstd_obj, bool training, bool need_dx) {
  const char* fn = "batch_norm_backward";
  py::array dy = as_contiguous_float_array(dy_obj, fn, "dy");
  py::array x = as_contiguous_float_array(x_obj, fn, "x");
  const Ncs d = ncs_of(x, fn, "x");
  require_same_dtype(dy, "dy", x, "x", fn);
  if (shape_of(dy) != shape_of(x)) {
    value_error(std::string(fn) + ": 'dy' has shape " + shape_str(dy) + "; expected " +
                shape_str(x) + ", the shape of 'x'");
  }
  const py::object w = channel_input(w_obj, "weight", x, d.c, fn);
  if (mean_obj.is_none() || invstd_obj.is_none()) {
    value_error(std::string(fn) + ": 'save_mean' and 'save_invstd' are required (got None)");
  }
  const py::object mean = channel_input(mean_obj, "save_mean", x, d.c, fn);
  const py::object invstd = channel_input(invstd_obj, "save_invstd", x, d.c, fn);
  const py::object dx = need_dx ? py::object(new_array(x, shape_of(x))) : py::object(py::none());
  py::array dw = new_array(x, {d.c});
  py::array db = new_array(x, {d.c});
  dispatch_dtype(x, [&](auto tag) {
    run_backward<typename decltype(tag)::type>(d, dy, x, w, mean, invstd, training, dx, dw, db);
  });
  return py::make_tuple(dx, dw, db);
}

}  // namespace

void bind_norm(py::module_& m) {
  m.def("batch_norm", &batch_norm, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("running_mean"), py::arg("running_var"), py::arg("training"),
        py::arg("momentum") = 0.1, py::arg("eps") = 1e-5);
  m.def("batch_norm_backward", &batch_norm_backward, py::arg("dy"), py::arg("x"), py::arg("weight"),
        py::arg("save_mean"), py::arg("save_invstd"), py::arg("training"),
        py::arg("need_dx") = true);
}

}  // namespace simdnn::bind
