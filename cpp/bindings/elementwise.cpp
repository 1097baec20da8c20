// Elementwise glue: relu, relu_backward, bias_backward, softmax_cross_entropy, and the in-place
// optimiser updates.
#include "elementwise/elementwise.h"

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "bindings/common.h"
#include "common/parallel.h"
#include "dispatch.h"

namespace simdnn::bind {
namespace {

std::vector<int64_t> shape_of(const py::array& a) {
  std::vector<int64_t> s;
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s.push_back(a.shape(i));
  return s;
}

void require_like(const py::array& a, const char* an, const py::array& ref, const char* rn,
                  const char* fn) {
  require_same_dtype(ref, rn, a, an, fn);
  if (shape_of(a) != shape_of(ref)) {
    value_error(std::string(fn) + ": '" + an + "' has shape " + shape_str(a) + " but '" + rn +
                "' has shape " + shape_str(ref) + "; they must match");
  }
}

// An array updated in place: it must already be float32/float64, C-contiguous and writeable.
py::array in_place(const py::object& obj, const char* fn, const char* arg) {
  if (!py::isinstance<py::array>(obj)) {
    type_error(std::string(fn) + ": '" + arg + "' must be a NumPy array, updated in place");
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  const py::dtype dt = a.dtype();
  if (dt.kind() != 'f' || (dt.itemsize() != 4 && dt.itemsize() != 8) || !is_native(dt)) {
    type_error(std::string(fn) + ": '" + arg + "' has dtype " + dtype_str(a) +
               "; expected float32 or float64");
  }
  if (!(a.flags() & py::array::c_style) || !a.writeable()) {
    value_error(std::string(fn) + ": '" + arg +
                "' must be a writeable C-contiguous array (it is updated in place)");
  }
  return a;
}

py::array relu(const py::object& x_obj) {
  py::array x = as_contiguous_float_array(x_obj, "relu", "x");
  py::array y = new_array(x, shape_of(x));
  const int64_t n = x.size();
  const int nt = get_num_threads();
  dispatch_dtype(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto f = kernels().get<T>().relu;
    py::gil_scoped_release r;
    KernelCallScope workspace_scope;
    f(n, cdata<T>(x), mdata<T>(y), nt);
  });
  return y;
}

py::array relu_backward(const py::object& dy_obj, const py::object& x_obj) {
  const char* fn = "relu_backward";
  py::array dy = as_contiguous_float_array(dy_obj, fn, "dy");
  py::array x = as_contiguous_float_array(x_obj, fn, "x");
  require_like(dy, "dy", x, "x", fn);
  py::array dx = new_array(x, shape_of(x));
  const int64_t n = x.size();
  const int nt = get_num_threads();
  dispatch_dtype(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto f = kernels().get<T>().relu_backward;
    py::gil_scoped_release r;
    KernelCallScope workspace_scope;
    f(n, cdata<T>(dy), cdata<T>(x), mdata<T>(dx), nt);
  });
  return dx;
}

// dy (M, N) [, y (M, N)] -> (dx, db): dx = dy * (y > 0) (dy itself without y), db (N,) its column
// sums, written into `db` when given (added to it with accumulate; NumPy's out= semantics).
py::tuple bias_backward(const py::object& dy_obj, const py::object& y_obj, const py::object& db_obj,
                        bool accumulate) {
  const char* fn = "bias_backward";
  py::array dy = as_contiguous_float_array(dy_obj, fn, "dy");
  require_ndim(dy, 2, fn, "dy");
  const int64_t m = dy.shape(0), n = dy.shape(1);
  py::array y, dx = dy;
  if (!y_obj.is_none()) {
    y = as_contiguous_float_array(y_obj, fn, "y");
    require_like(y, "y", dy, "dy", fn);
    dx = new_array(dy, {m, n});
  }
  if (accumulate && db_obj.is_none()) {
    value_error(std::string(fn) + ": accumulate=True needs 'db', the array to add to");
  }
  py::array db = db_obj.is_none() ? new_array(dy, {n})
                                  : output_array(db_obj, dy.dtype(), {n}, fn, "db", "dy's");
  // A db that is not C-contiguous or shares memory with dy or y: summed aside (from a copy of
  // it when accumulating), then copied in.
  bool direct = true;
  if (!db_obj.is_none()) {
    direct = y_obj.is_none() ? direct_output(db, {&dy}) : direct_output(db, {&dy, &y});
  }
  py::array sums = db;
  if (!direct) {
    sums = accumulate ? py::array(numpy().attr("array")(db, py::arg("order") = "C"))
                      : new_array(dy, {n});
  }
  const int nt = get_num_threads();
  dispatch_dtype(dy, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto f = kernels().get<T>().bias_backward;
    const T* yp = y_obj.is_none() ? nullptr : cdata<T>(y);
    T* dxp = y_obj.is_none() ? nullptr : mdata<T>(dx);
    py::gil_scoped_release r;
    KernelCallScope workspace_scope;
    f(m, n, cdata<T>(dy), yp, dxp, mdata<T>(sums), accumulate, nt);
  });
  if (!direct) numpy().attr("copyto")(db, sums);
  return py::make_tuple(dx, db);
}

// logits (N, D), labels (N,) integers in [0, D) -> (loss, a 0-d array of the logits' dtype; grad
// (N, D) of the mean loss). simdnn._opspec.cross_entropy_labels raises the same errors.
py::tuple softmax_cross_entropy(const py::object& logits_obj, const py::object& labels_obj) {
  const char* fn = "softmax_cross_entropy";
  py::array x = as_contiguous_float_array(logits_obj, fn, "logits");
  require_ndim(x, 2, fn, "logits");
  const int64_t n = x.shape(0), d = x.shape(1);
  py::array given = numpy().attr("asarray")(labels_obj);
  const char kind = given.dtype().kind();
  if (kind != 'i' && kind != 'u') {
    type_error(std::string(fn) + ": 'labels' must be integers (class indices), got dtype " +
               dtype_str(given));
  }
  if (given.ndim() != 1) {
    value_error(std::string(fn) + ": 'labels' must be 1-D (N,), got shape " + shape_str(given));
  }
  if (given.shape(0) != n) {
    value_error(std::string(fn) + ": " + std::to_string(n) + " rows of logits but " +
                std::to_string(given.shape(0)) + " labels; they must match");
  }
  // int64 whatever the integer type (a uint64 label past 2^63 wraps negative: refused below).
  py::array_t<int64_t, py::array::c_style | py::array::forcecast> labels(given);
  const int64_t* t = labels.data();
  for (int64_t i = 0; i < n; ++i) {
    if (t[i] < 0 || t[i] >= d) {
      const std::string classes = std::to_string(d);
      value_error(std::string(fn) + ": labels must be in [0, " + classes + ") for " + classes +
                  " classes, found " + py::str(given[py::int_(i)]).cast<std::string>());
    }
  }
  py::array grad = new_array(x, {n, d});
  double loss = 0;
  const int nt = get_num_threads();
  dispatch_dtype(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto f = kernels().get<T>().softmax_cross_entropy;
    py::gil_scoped_release r;
    KernelCallScope workspace_scope;
    f(n, d, cdata<T>(x), t, mdata<T>(grad), &loss, nt);
  });
  return py::make_tuple(numpy().attr("asarray")(loss, x.dtype()), grad);
}

// The updates take one array or lists of arrays (every parameter of a model in one call: the
// per-call overhead of six separate calls was most of an MLP's fused SGD step).
std::vector<py::object> as_list(const py::object& obj) {
  std::vector<py::object> out;
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    for (py::handle h : obj) out.push_back(py::reinterpret_borrow<py::object>(h));
  } else {
    out.push_back(obj);
  }
  return out;
}

void sgd_update(const py::object& p_obj, const py::object& g_obj, const py::object& v_obj,
                double lr, double momentum, bool nesterov, double weight_decay) {
  const char* fn = "sgd_update";
  const std::vector<py::object> ps = as_list(p_obj), gs = as_list(g_obj);
  const std::vector<py::object> vs =
      v_obj.is_none() ? std::vector<py::object>(ps.size(), py::none()) : as_list(v_obj);
  if (gs.size() != ps.size() || vs.size() != ps.size()) {
    value_error("sgd_update: param, grad and velocity must be arrays or lists of one length");
  }
  SgdParams s;
  s.lr = lr;
  s.momentum = momentum;
  s.nesterov = nesterov;
  s.weight_decay = weight_decay;
  std::vector<py::array> keep;  // holds converted grads alive while the GIL is released
  std::tuple<std::vector<SgdJob<float>>, std::vector<SgdJob<double>>> jobs;
  for (size_t i = 0; i < ps.size(); ++i) {
    py::array p = in_place(ps[i], fn, "param");
    py::array g = as_contiguous_float_array(gs[i], fn, "grad");
    require_like(g, "grad", p, "param", fn);
    py::array v;
    if (momentum != 0.0) {
      if (vs[i].is_none()) value_error("sgd_update: momentum needs a 'velocity' array");
      v = in_place(vs[i], fn, "velocity");
      require_like(v, "velocity", p, "param", fn);
    }
    dispatch_dtype(p, [&](auto tag) {
      using T = typename decltype(tag)::type;
      std::get<std::vector<SgdJob<T>>>(jobs).push_back({mdata<T>(p), cdata<T>(g),
                                                        momentum != 0.0 ? mdata<T>(v) : nullptr,
                                                        static_cast<int64_t>(p.size())});
    });
    keep.push_back(p);
    keep.push_back(g);
    if (momentum != 0.0) keep.push_back(v);
  }
  const int nt = get_num_threads();
  const KernelTable& kt = kernels();
  py::gil_scoped_release r;
  KernelCallScope workspace_scope;
  for_each_dtype([&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto& list = std::get<std::vector<SgdJob<T>>>(jobs);
    if (!list.empty()) kt.get<T>().sgd(list.data(), static_cast<int64_t>(list.size()), s, nt);
  });
}

void adam_update(const py::object& p_obj, const py::object& g_obj, const py::object& m_obj,
                 const py::object& v_obj, double lr, double beta1, double beta2, double eps,
                 double weight_decay, int64_t step) {
  const char* fn = "adam_update";
  const std::vector<py::object> ps = as_list(p_obj), gs = as_list(g_obj), ms = as_list(m_obj),
                                vs = as_list(v_obj);
  if (gs.size() != ps.size() || ms.size() != ps.size() || vs.size() != ps.size()) {
    value_error(
        "adam_update: param, grad, exp_avg and exp_avg_sq must be arrays or lists of "
        "one length");
  }
  if (step < 1) value_error("adam_update: step must be >= 1, got " + std::to_string(step));
  AdamParams a;
  a.lr = lr;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.weight_decay = weight_decay;
  adam_set_step(&a, step);
  std::vector<py::array> keep;
  std::tuple<std::vector<AdamJob<float>>, std::vector<AdamJob<double>>> jobs;
  for (size_t i = 0; i < ps.size(); ++i) {
    py::array p = in_place(ps[i], fn, "param");
    py::array g = as_contiguous_float_array(gs[i], fn, "grad");
    py::array m = in_place(ms[i], fn, "exp_avg");
    py::array v = in_place(vs[i], fn, "exp_avg_sq");
    require_like(g, "grad", p, "param", fn);
    require_like(m, "exp_avg", p, "param", fn);
    require_like(v, "exp_avg_sq", p, "param", fn);
    dispatch_dtype(p, [&](auto tag) {
      using T = typename decltype(tag)::type;
      std::get<std::vector<AdamJob<T>>>(jobs).push_back(
          {mdata<T>(p), cdata<T>(g), mdata<T>(m), mdata<T>(v), static_cast<int64_t>(p.size())});
    });
    keep.push_back(p);
    keep.push_back(g);
    keep.push_back(m);
    keep.push_back(v);
  }
  const int nt = get_num_threads();
  const KernelTable& kt = kernels();
  py::gil_scoped_release r;
  KernelCallScope workspace_scope;
  for_each_dtype([&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto& list = std::get<std::vector<AdamJob<T>>>(jobs);
    if (!list.empty()) kt.get<T>().adam(list.data(), static_cast<int64_t>(list.size()), a, nt);
  });
}

}  // namespace

void bind_elementwise(py::module_& m) {
  m.def("relu", &relu, py::arg("x"));
  m.def("relu_backward", &relu_backward, py::arg("dy"), py::arg("x"));
  m.def("bias_backward", &bias_backward, py::arg("dy"), py::arg("y") = py::none(),
        py::arg("db") = py::none(), py::arg("accumulate") = false);
  m.def("softmax_cross_entropy", &softmax_cross_entropy, py::arg("logits"), py::arg("labels"));
  m.def("sgd_update", &sgd_update, py::arg("param"), py::arg("grad"), py::arg("velocity"),
        py::arg("lr"), py::arg("momentum"), py::arg("nesterov"), py::arg("weight_decay"));
  m.def("adam_update", &adam_update, py::arg("param"), py::arg("grad"), py::arg("exp_avg"),
        py::arg("exp_avg_sq"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("step"));
}

}  // namespace simdnn::bind
