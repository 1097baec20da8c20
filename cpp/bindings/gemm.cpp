// GEMM glue: matmul and gemm, and the test hook that runs one registered micro-kernel.
#include "gemm/gemm.h"

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "common/parallel.h"
#include "dispatch.h"

namespace simdnn::bind {
namespace {

// ---------------------------------------------------------------------------------------------
// GEMM

// A 2-D operand after an optional transpose, as rows x cols with element strides.
struct MatView {
  const void* data;
  int64_t rows, cols, rs, cs;
};
MatView view2d(const py::array& a, bool trans) {
  MatView v{a.data(), static_cast<int64_t>(a.shape(0)), static_cast<int64_t>(a.shape(1)),
            estride(a, 0), estride(a, 1)};
  if (trans) {
    std::swap(v.rows, v.cols);
    std::swap(v.rs, v.cs);
  }
  return v;
}

// The epilogue of gemm.h: a per-column bias (null: none) and ReLU.
struct Epilogue {
  const void* bias = nullptr;
  bool relu = false;
};

template <typename T>
void run_gemm(const MatView& a, const MatView& b, T alpha, T beta, T* c, int64_t rs_c,
              const Epilogue& epi) {
  GemmArgs<T> g;
  g.m = a.rows;
  g.n = b.cols;
  g.k = a.cols;
  g.alpha = alpha;
  g.a = static_cast<const T*>(a.data);
  g.rs_a = a.rs;
  g.cs_a = a.cs;
  g.b = static_cast<const T*>(b.data);
  g.rs_b = b.rs;
  g.cs_b = b.cs;
  g.beta = beta;
  g.c = c;
  g.rs_c = rs_c;
  g.bias = static_cast<const T*>(epi.bias);
  g.relu = epi.relu;
  g.nthreads = get_num_threads();
  auto f = kernels().get<T>().gemm;
  py::gil_scoped_release release;
  KernelCallScope workspace_scope;
  f(g);
}

// c (M x N, unit column stride, row stride rs_c) = alpha * a . b + beta * c.
void dispatch_gemm(const py::array& like, const MatView& a, const MatView& b, double alpha,
                   double beta, void* c, int64_t rs_c, const Epilogue& epi = {}) {
  dispatch_dtype(like, [&](auto tag) {
    using T = typename decltype(tag)::type;
    run_gemm<T>(a, b, static_cast<T>(alpha), static_cast<T>(beta), static_cast<T*>(c), rs_c, epi);
  });
}

// Whether the kernels can write into `out` directly: unit column stride, whole-element row stride.
// Only a single column may have any column stride (the kernels never step along it). A single row
// is still written along its columns with a unit stride, so it needs one: a one-row `out` with a
// column step was filled contiguously (the wrong elements), and one with a negative column stride
// was written past its buffer's end (heap corruption).
bool writable_in_place(const py::array& out) {
  const py::ssize_t size = out.dtype().itemsize();
  const bool rows_ok = out.shape(0) <= 1 || out.strides(0) % size == 0;
  return rows_ok && (out.shape(1) <= 1 || out.strides(1) == size);
}

int64_t row_stride_of(const py::array& out) {
  // For a single row or column the unused stride is irrelevant; keep the kernels' contract
  // (unit column stride) by describing the array as row-major.
  if (out.shape(1) <= 1) return estride(out, 0);
  if (out.shape(0) <= 1) return out.shape(1);
  return estride(out, 0);
}

py::array new_matrix(const py::array& like, int64_t m, int64_t n) {
  return new_array(like, {m, n});
}

void check_gemm_operands(const py::array& a, const py::array& b, bool ta, bool tb, const char* fn) {
  require_ndim(a, 2, fn, "a");
  require_ndim(b, 2, fn, "b");
  require_same_dtype(a, "a", b, "b", fn);
  const py::ssize_t ka = ta ? a.shape(0) : a.shape(1);
  const py::ssize_t kb = tb ? b.shape(1) : b.shape(0);
  if (ka != kb) {
    std::ostringstream os;
    os << fn << ": inner dimensions differ: " << (ta ? "a.T" : "a") << " has shape ("
       << (ta ? a.shape(1) : a.shape(0)) << ", " << ka << ") and " << (tb ? "b.T" : "b")
       << " has shape (" << kb << ", " << (tb ? b.shape(0) : b.shape(1)) << ")";
    value_error(os.str());
  }
}

void check_output(const py::array& out, const py::array& like, int64_t m, int64_t n, const char* fn,
                  const char* arg, bool need_contiguous) {
  if (out.dtype().itemsize() != like.dtype().itemsize() || out.dtype().kind() != 'f') {
    type_error(std::string(fn) + ": '" + arg + "' has dtype " + dtype_str(out) + "; expected " +
               dtype_str(like) + " to match the inputs");
  }
  if (out.ndim() != 2 || out.shape(0) != m || out.shape(1) != n) {
    value_error(std::string(fn) + ": '" + arg + "' has shape " + shape_str(out) + "; expected (" +
                std::to_string(m) + ", " + std::to_string(n) + ")");
  }
  if (!out.writeable()) value_error(std::string(fn) + ": '" + arg + "' is read-only");
  if (need_contiguous && !(out.flags() & py::array::c_style)) {
    value_error(std::string(fn) + ": '" + arg +
                "' must be C-contiguous (use numpy.ascontiguousarray)");
  }
  if (!is_native(out.dtype())) {
    type_error(std::string(fn) + ": '" + arg + "' must be in native byte order");
  }
}

py::array gemm(const py::object& a_obj, const py::object& b_obj, const py::object& c_obj,
               double alpha, double beta, bool trans_a, bool trans_b, const py::object& bias_obj,
               bool relu) {
  const char* fn = "gemm";
  py::array a = as_float_array(a_obj, fn, "a");
  py::array b = as_float_array(b_obj, fn, "b");
  check_gemm_operands(a, b, trans_a, trans_b, fn);
  const MatView va = view2d(a, trans_a), vb = view2d(b, trans_b);
  const int64_t m = va.rows, n = vb.cols;
  Epilogue epi;
  epi.relu = relu;
  py::array bias;
  if (!bias_obj.is_none()) {
    bias = as_contiguous_float_array(bias_obj, fn, "bias");
    require_same_dtype(a, "a", bias, "bias", fn);
    if (bias.ndim() != 1 || bias.shape(0) != n) {
      value_error(std::string(fn) + ": 'bias' has shape " + shape_str(bias) + "; expected (" +
                  std::to_string(n) + ",), one value per column of the result");
    }
    epi.bias = bias.data();
  }
  if (c_obj.is_none()) {
    py::array c = new_matrix(a, m, n);
    if (m > 0 && n > 0) dispatch_gemm(a, va, vb, alpha, 0.0, c.mutable_data(), n, epi);
    return c;
  }
  if (!py::isinstance<py::array>(c_obj)) {
    type_error(std::string(fn) + ": 'c' must be a NumPy array or None, got " +
               py::str(py::type::of(c_obj)).cast<std::string>());
  }
  py::array c = py::reinterpret_borrow<py::array>(c_obj);
  check_output(c, a, m, n, fn, "c", true);
  if (m == 0 || n == 0) return c;
  if (may_overlap(c, a) || may_overlap(c, b) || (epi.bias && may_overlap(c, bias))) {
    // c aliases an input: compute into a copy of c, then write back.
    py::array tmp = numpy().attr("array")(c, py::arg("copy") = true, py::arg("order") = "C");
    dispatch_gemm(a, va, vb, alpha, beta, tmp.mutable_data(), n, epi);
    numpy().attr("copyto")(c, tmp);
  } else {
    dispatch_gemm(a, va, vb, alpha, beta, c.mutable_data(), n, epi);
  }
  return c;
}

py::array matmul(const py::object& a_obj, const py::object& b_obj, const py::object& out_obj) {
  const char* fn = "matmul";
  py::array a = as_float_array(a_obj, fn, "a");
  py::array b = as_float_array(b_obj, fn, "b");
  check_gemm_operands(a, b, false, false, fn);
  const MatView va = view2d(a, false), vb = view2d(b, false);
  const int64_t m = va.rows, n = vb.cols;
  if (out_obj.is_none()) {
    py::array c = new_matrix(a, m, n);
    if (m > 0 && n > 0) dispatch_gemm(a, va, vb, 1.0, 0.0, c.mutable_data(), n);
    return c;
  }
  if (!py::isinstance<py::array>(out_obj)) {
    type_error(std::string(fn) + ": 'out' must be a NumPy array or None, got " +
               py::str(py::type::of(out_obj)).cast<std::string>());
  }
  py::array out = py::reinterpret_borrow<py::array>(out_obj);
  check_output(out, a, m, n, fn, "out", false);
  if (m == 0 || n == 0) return out;
  const bool aligned = reinterpret_cast<std::uintptr_t>(out.data()) % out.dtype().itemsize() == 0;
  if (aligned && writable_in_place(out) && !may_overlap(out, a) && !may_overlap(out, b)) {
    dispatch_gemm(a, va, vb, 1.0, 0.0, out.mutable_data(), row_stride_of(out));
  } else {
    py::array tmp = new_matrix(a, m, n);
    dispatch_gemm(a, va, vb, 1.0, 0.0, tmp.mutable_data(), n);
    numpy().attr("copyto")(out, tmp);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels on their own (tests)

py::list list_ukernels() {
  int count = 0;
  const UkernelInfo* list = ukernels(&count);
  py::list out;
  for (int i = 0; i < count; ++i) {
    py::dict d;
    d["index"] = i;
    d["op"] = list[i].op;
    d["isa"] = isa_name(list[i].isa);
    d["dtype"] = list[i].dtype;
    d["mr"] = list[i].mr;
    d["nr"] = list[i].nr;
    d["name"] = list[i].name;
    d["available"] = isa_available(list[i].isa);
    out.append(d);
  }
  return out;
}

template <typename T>
void call_gemm_ukernel(const UkernelInfo& uk, const py::array& a, const py::array& b, py::array& c,
                       double alpha, double beta) {
  auto fn = reinterpret_cast<GemmUkernelFn<T>>(uk.fn);
  const int64_t m = a.shape(0), k = a.shape(1), n = b.shape(1);
  const T* pa = static_cast<const T*>(a.data());
  const T* pb = static_cast<const T*>(b.data());
  T* pc = static_cast<T*>(c.mutable_data());
  const int64_t rs_a = estride(a, 0), cs_a = estride(a, 1), rs_b = estride(b, 0),
                rs_c = estride(c, 0);
  py::gil_scoped_release release;
  KernelCallScope workspace_scope;
  fn(k, pa, rs_a, cs_a, pb, rs_b, pc, rs_c, m, n, static_cast<T>(alpha), static_cast<T>(beta));
}

// c[m, n] = alpha * a[m, k] . b[k, n] + beta * c with one micro-kernel of the registry, as the
// driver would call it: m <= MR, n <= NR, a with a unit stride on one axis, b and c with unit
// column strides.
void run_ukernel(int index, const py::array& a, const py::array& b, py::array& c, double alpha,
                 double beta) {
  int count = 0;
  const UkernelInfo* list = ukernels(&count);
  if (index < 0 || index >= count)
    value_error("run_ukernel: no micro-kernel " + std::to_string(index));
  const UkernelInfo& uk = list[index];
  if (!isa_available(uk.isa))
    value_error(std::string("run_ukernel: ") + isa_name(uk.isa) + " is not available");
  const py::ssize_t size = std::string(uk.dtype) == "float32" ? 4 : 8;
  const py::array* operands[] = {&a, &b, &c};
  for (const py::array* x : operands) {
    if (x->ndim() != 2 || x->dtype().kind() != 'f' || x->dtype().itemsize() != size) {
      type_error(std::string("run_ukernel: operands must be 2-D ") + uk.dtype);
    }
    if (x->strides(0) % size != 0 || x->strides(1) % size != 0)
      value_error("run_ukernel: bad strides");
  }
  const int64_t m = a.shape(0), k = a.shape(1), n = b.shape(1);
  if (b.shape(0) != k || c.shape(0) != m || c.shape(1) != n) value_error("run_ukernel: shapes");
  if (m < 1 || m > uk.mr || n < 1 || n > uk.nr)
    value_error("run_ukernel: tile larger than MR x NR");
  if (k > 0 && !(estride(a, 1) == 1 || estride(a, 0) == 1)) {
    value_error("run_ukernel: a needs a unit stride");
  }
  if ((k > 0 && estride(b, 1) != 1 && n > 1) || (estride(c, 1) != 1 && n > 1)) {
    value_error("run_ukernel: b and c need unit column strides");
  }
  if (!c.writeable()) value_error("run_ukernel: c is read-only");
  dispatch_dtype(a, [&](auto tag) {
    call_gemm_ukernel<typename decltype(tag)::type>(uk, a, b, c, alpha, beta);
  });
}

}  // namespace

void bind_gemm(py::module_& m) {
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("out") = py::none());
  m.def("gemm", &gemm, py::arg("a"), py::arg("b"), py::arg("c") = py::none(),
        py::arg("alpha") = 1.0, py::arg("beta") = 0.0, py::arg("trans_a") = false,
        py::arg("trans_b") = false, py::arg("bias") = py::none(), py::arg("relu") = false);
  m.def("ukernels", &list_ukernels);
  m.def("run_ukernel", &run_ukernel, py::arg("index"), py::arg("a"), py::arg("b"), py::arg("c"),
        py::arg("alpha"), py::arg("beta"));
  // Test hook: bytes of packed A a GEMM holds at once; returns the previous value.
  m.def(
      "_set_gemm_a_pack_bytes",
      [](int64_t bytes) {
        const int64_t before = gemm_a_pack_bytes();
        set_gemm_a_pack_bytes(bytes);
        return before;
      },
      py::arg("bytes"));
}

}  // namespace simdnn::bind
