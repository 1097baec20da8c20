#include "bindings/common.h"

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace simdnn::bind {

std::string shape_str(const py::array& a) {
  std::ostringstream os;
  os << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    os << a.shape(i);
    if (a.ndim() == 1 || i + 1 < a.ndim()) os << (a.ndim() == 1 ? "," : ", ");
  }
  os << ")";
  return os.str();
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

void type_error(const std::string& msg) { throw py::type_error(msg); }
void value_error(const std::string& msg) { throw py::value_error(msg); }

// Deliberately never destroyed: a static py::object would be released by the C++ runtime after
// the interpreter has shut down, and crash the process at exit.
py::module_& numpy() {
  static py::module_* np = new py::module_(py::module_::import("numpy"));
  return *np;
}

// Returns a float32/float64 ndarray in native byte order whose strides are whole elements and whose
// data is aligned, converting (copying) only what the kernels cannot read as it is: array-likes,
// byte-swapped or misaligned data. Integer, complex, float16, bool and object inputs are refused.
py::array as_float_array(const py::handle& obj, const char* fn, const char* arg) {
  py::array a;
  if (py::isinstance<py::array>(obj)) {
    a = py::reinterpret_borrow<py::array>(obj);
  } else {
    try {
      a = numpy().attr("asarray")(obj);
    } catch (py::error_already_set&) {
      type_error(std::string(fn) + ": argument '" + arg + "' must be a NumPy array, got " +
                 py::str(py::type::of(obj)).cast<std::string>());
    }
  }
  const py::dtype dt = a.dtype();
  const char kind = dt.kind();
  const py::ssize_t size = dt.itemsize();
  if (kind != 'f' || (size != 4 && size != 8)) {
    type_error(std::string(fn) + ": argument '" + arg + "' has dtype " + dtype_str(a) +
               "; expected float32 or float64 (convert with .astype(numpy.float32))");
  }
  bool needs_copy = false;
  if (!is_native(dt)) {
    // Byte-swapped data: same values, native order.
    a = a.attr("astype")(dt.attr("newbyteorder")("="));
  } else {
    if (reinterpret_cast<std::uintptr_t>(a.data()) % size != 0) needs_copy = true;
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
      if (a.strides(i) % size != 0) needs_copy = true;
    }
  }
  if (needs_copy) a = numpy().attr("array")(a, py::arg("copy") = true, py::arg("order") = "C");
  return a;
}

void require_ndim(const py::array& a, int ndim, const char* fn, const char* arg) {
  if (a.ndim() != ndim) {
    value_error(std::string(fn) + ": argument '" + arg + "' must be " + std::to_string(ndim) +
                "-D, got shape " + shape_str(a));
  }
}

void require_same_dtype(const py::array& a, const char* an, const py::array& b, const char* bn,
                        const char* fn) {
  if (a.dtype().itemsize() != b.dtype().itemsize()) {
    type_error(std::string(fn) + ": '" + an + "' is " + dtype_str(a) + " but '" + bn + "' is " +
               dtype_str(b) + "; both must have the same dtype (convert one with .astype)");
  }
}

// Element stride of axis i.
int64_t estride(const py::array& a, int i) {
  return static_cast<int64_t>(a.strides(i) / a.dtype().itemsize());
}

// Half-open byte range that an array's elements occupy (empty arrays occupy nothing).
struct Extent {
  std::uintptr_t lo = 0, hi = 0;
};
Extent extent(const py::array& a) {
  Extent e;
  if (a.size() == 0) return e;
  std::intptr_t lo = 0, hi = 0;
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    const std::intptr_t span = static_cast<std::intptr_t>(a.shape(i) - 1) * a.strides(i);
    if (span < 0) {
      lo += span;
    } else {
      hi += span;
    }
  }
  const auto base = reinterpret_cast<std::uintptr_t>(a.data());
  e.lo = base + lo;
  e.hi = base + hi + static_cast<std::uintptr_t>(a.dtype().itemsize());
  return e;
}
bool may_overlap(const py::array& a, const py::array& b) {
  const Extent x = extent(a), y = extent(b);
  return x.lo < x.hi && y.lo < y.hi && x.lo < y.hi && y.lo < x.hi;
}

bool is_native(const py::dtype& dt) {
  const char order = dt.byteorder();
  if (order == '=' || order == '|') return true;
  const uint16_t one = 1;
  const bool little = *reinterpret_cast<const unsigned char*>(&one) == 1;
  return little ? order == '<' : order == '>';
}

py::array as_contiguous_float_array(const py::handle& obj, const char* fn, const char* arg) {
  py::array a = as_float_array(obj, fn, arg);
  if (!(a.flags() & py::array::c_style)) a = numpy().attr("ascontiguousarray")(a);
  return a;
}

py::array new_array(const py::array& like, const std::vector<int64_t>& shape) {
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  return py::array(like.dtype(), s);
}

py::array output_array(const py::handle& obj, const py::dtype& dtype,
                       const std::vector<int64_t>& shape, const char* fn, const char* arg,
                       const char* whose) {
  const std::string name = std::string(fn) + ": '" + arg + "'";
  if (!py::isinstance<py::array>(obj)) {
    type_error(name + " must be a NumPy array, got " +
               py::str(py::type::of(obj)).cast<std::string>());
  }
  py::array out = py::reinterpret_borrow<py::array>(obj);
  if (!out.dtype().equal(dtype)) {
    type_error(name + " has dtype " + dtype_str(out) + "; expected " +
               py::str(dtype).cast<std::string>() + ", " + whose + " dtype");
  }
  std::vector<int64_t> have(out.shape(), out.shape() + out.ndim());
  if (have != shape) {
    value_error(name + " has shape " + shape_str(out) + "; expected " + tuple_str(shape));
  }
  if (!out.writeable()) value_error(name + " is read-only");
  return out;
}

bool direct_output(const py::array& out, std::initializer_list<const py::array*> inputs) {
  if (!(out.flags() & py::array::c_style)) return false;
  if (reinterpret_cast<std::uintptr_t>(out.data()) % out.dtype().itemsize() != 0) return false;
  for (const py::array* in : inputs) {
    if (may_overlap(out, *in)) return false;
  }
  return true;
}

bool is_int(const py::handle& o) {
  if (py::isinstance<py::bool_>(o) || !PyIndex_Check(o.ptr())) return false;
  if (PyLong_Check(o.ptr())) return true;
  // Other types with __index__ (NumPy integer scalars and arrays): ask it. NumPy float arrays have
  // an __index__ that raises; they used to pass for ints, and int() truncated them
  // (stride=np.array(2.5) ran with stride 2).
  PyObject* index = PyNumber_Index(o.ptr());
  if (index == nullptr) {
    PyErr_Clear();
    return false;
  }
  Py_DECREF(index);
  return true;
}

// py::int_::cast<int64_t> throws pybind11's cast_error, which Python sees as a RuntimeError, for
// ints beyond int64 (stride=2**64 raised RuntimeError): such values are out of range, a
// ValueError naming the argument like any other bad value.
int64_t int64_of(const py::handle& o, const char* fn, const char* arg, const py::handle& whole) {
  // __index__, never int(): no truncation of anything that is not an int.
  const py::object v = py::reinterpret_steal<py::object>(PyNumber_Index(o.ptr()));
  if (!v) throw py::error_already_set();
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
  if (overflow != 0) {
    value_error(std::string(fn) + ": " + arg + " does not fit in a 64-bit integer, got " +
                py::repr(whole).cast<std::string>());
  }
  if (x == -1 && PyErr_Occurred()) throw py::error_already_set();
  return static_cast<int64_t>(x);
}

std::pair<int64_t, int64_t> int_pair(const py::handle& obj, const char* fn, const char* arg,
                                     int64_t min_value) {
  int64_t v[2];
  if (is_int(obj)) {
    v[0] = v[1] = int64_of(obj, fn, arg, obj);
  } else if ((py::isinstance<py::tuple>(obj) || py::isinstance<py::list>(obj)) &&
             py::len(obj) == 2 && is_int(obj[py::int_(0)]) && is_int(obj[py::int_(1)])) {
    for (int i = 0; i < 2; ++i) v[i] = int64_of(obj[py::int_(i)], fn, arg, obj);
  } else {
    type_error(std::string(fn) + ": " + arg + " must be an int or a pair of ints, got " +
               py::repr(obj).cast<std::string>());
  }
  for (int i = 0; i < 2; ++i) {
    if (v[i] < min_value) {
      value_error(std::string(fn) + ": " + arg + " must be >= " + std::to_string(min_value) +
                  ", got " + py::repr(obj).cast<std::string>());
    }
  }
  return {v[0], v[1]};
}

std::vector<int64_t> shape_tuple(const py::handle& obj, size_t n, const char* fn, const char* arg) {
  if (!(py::isinstance<py::tuple>(obj) || py::isinstance<py::list>(obj)) || py::len(obj) != n) {
    type_error(std::string(fn) + ": " + arg + " must be a tuple of " + std::to_string(n) +
               " ints, got " + py::repr(obj).cast<std::string>());
  }
  std::vector<int64_t> out;
  for (size_t i = 0; i < n; ++i) {
    py::handle e = obj[py::int_(i)];
    if (!is_int(e)) {
      type_error(std::string(fn) + ": " + arg + " must be a tuple of " + std::to_string(n) +
                 " ints, got " + py::repr(obj).cast<std::string>());
    }
    const int64_t x = int64_of(e, fn, arg, obj);
    if (x < 0) {
      value_error(std::string(fn) + ": " + arg +
                  " has a negative size: " + py::repr(obj).cast<std::string>());
    }
    out.push_back(x);
  }
  return out;
}

std::string tuple_str(const std::vector<int64_t>& v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) {
    s += std::to_string(v[i]);
    if (v.size() == 1 || i + 1 < v.size()) s += v.size() == 1 ? "," : ", ";
  }
  return s + ")";
}

}  // namespace simdnn::bind
