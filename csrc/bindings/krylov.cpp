// fastpaper._krylov: nanobind wrappers of fastpaper/krylov.h. fastpaper/krylov.py converts user
// input (scipy.sparse, LinearOperator, callables) into the flat arrays and callables taken here.
#include "fastpaper/krylov.h"

#include <nanobind/stl/complex.h>
#include <nanobind/stl/string.h>

#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include "bindings/common.h"

namespace nb = nanobind;
using namespace fastpaper;

namespace {

using Zc = std::complex<double>;
using Cf = std::complex<float>;
template <class T>
using Arr = nb::ndarray<T, nb::c_contig, nb::device::cpu>;
template <class T>
using ConstArr = nb::ndarray<const T, nb::c_contig, nb::device::cpu>;
using F64 = Arr<double>;
using ConstF64 = ConstArr<double>;
using AnyArray = nb::ndarray<nb::c_contig, nb::device::cpu>;

template <class T>
void check_len(const T& a, const char* name, int64_t expected) {
  if (static_cast<int64_t>(a.size()) != expected) {
    throw nb::value_error((std::string(name) + ": expected " + std::to_string(expected) +
                           " elements, got " + std::to_string(a.size())).c_str());
  }
}

krylov::Index index_of(const AnyArray& a, const char* name) {
  const auto d = a.dtype();
  if (d.lanes == 1 && d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Int)) {
    if (d.bits == 32) return krylov::Index::int32;
    if (d.bits == 64) return krylov::Index::int64;
  }
  throw nb::type_error((std::string(name) + ": expected int32 or int64 indices").c_str());
}

template <class T>
krylov::Csr<T> csr_of(int64_t rows, int64_t cols, const AnyArray& indptr,
                      const AnyArray& indices, const ConstArr<T>& values) {
  const krylov::Index ix = index_of(indptr, "A.indptr");
  if (index_of(indices, "A.indices") != ix) {
    throw nb::type_error("A.indices and A.indptr must have the same integer type");
  }
  if (rows < 0 || cols < 0) throw nb::value_error("A: shape must be >= 0");
  if (static_cast<int64_t>(indptr.size()) != rows + 1) {
    throw nb::value_error("A.indptr: expected rows + 1 entries");
  }
  if (indices.size() != values.size()) {
    throw nb::value_error("A: indices and data must have the same length");
  }
  // nnz = indptr[rows] must not exceed the arrays (the core trusts indptr for the extent).
  const int64_t nnz = ix == krylov::Index::int32
                          ? static_cast<const int32_t*>(indptr.data())[rows]
                          : static_cast<const int64_t*>(indptr.data())[rows];
  if (nnz != static_cast<int64_t>(values.size())) {
    throw nb::value_error("A: indptr[-1] must equal the number of stored entries");
  }
  krylov::Csr<T> A;
  A.rows = rows;
  A.cols = cols;
  A.index = ix;
  A.indptr = indptr.data();
  A.indices = indices.data();
  A.values = values.data();
  return A;
}

// A Python callable y = f(x) behind krylov::ApplyFn. The first exception raised is kept and
// re-raised after the solve; the solver then stops with "callback failed".
template <class T>
struct PyApply {
  nb::object fn;
  int64_t n = 0;
  std::optional<nb::python_error> error;

  static int call(void* ctx, const T* x, T* y) {
    auto* self = static_cast<PyApply*>(ctx);
    nb::gil_scoped_acquire gil;
    try {
      size_t shape[1] = {static_cast<size_t>(self->n)};
      nb::ndarray<nb::numpy, const T, nb::ndim<1>> xv(x, 1, shape, nb::handle());
      nb::object out = self->fn(xv);
      auto arr = nb::cast<ConstArr<T>>(out);
      if (static_cast<int64_t>(arr.size()) != self->n) {
        throw nb::value_error("callback returned an array of the wrong length");
      }
      const T* src = arr.data();
      for (int64_t i = 0; i < self->n; ++i) y[i] = src[i];
      return 0;
    } catch (nb::python_error& e) {
      if (!self->error) self->error.emplace(std::move(e));
      return 1;
    } catch (const std::exception& e) {
      if (!self->error) {
        try {
          throw nb::value_error(e.what());
        } catch (nb::python_error& pe) {
          self->error.emplace(std::move(pe));
        } catch (...) {
        }
      }
      return 1;
    }
  }
};

struct PyMonitor {
  nb::object fn;
  std::optional<nb::python_error> error;
  static int call(void* ctx, int64_t it, double rn) {
    auto* self = static_cast<PyMonitor*>(ctx);
    nb::gil_scoped_acquire gil;
    try {
      nb::object r = self->fn(it, rn);
      return (!r.is_none() && nb::cast<bool>(r)) ? 1 : 0;
    } catch (nb::python_error& e) {
      if (!self->error) self->error.emplace(std::move(e));
      return 1;
    }
  }
};

// Owns a krylov::Recycle.
class RecycleSpace {
 public:
  RecycleSpace() { bindings::raise_if_failed(krylov::recycle_create(&r_)); }
  ~RecycleSpace() { krylov::recycle_destroy(r_); }
  RecycleSpace(const RecycleSpace&) = delete;
  RecycleSpace& operator=(const RecycleSpace&) = delete;
  int64_t n() const { return krylov::recycle_n(r_); }
  int32_t dim() const { return krylov::recycle_dim(r_); }
  bool is_complex() const { return krylov::recycle_is_complex(r_); }
  // numpy's name of the scalar type of U
  const char* dtype() const {
    switch (krylov::recycle_scalar(r_)) {
      case krylov::Scalar::float32:
        return "float32";
      case krylov::Scalar::complex64:
        return "complex64";
      case krylov::Scalar::complex128:
        return "complex128";
      default:
        return "float64";
    }
  }
  template <class T>
  void get(Arr<T> out) {
    check_len(out, "out", bindings::checked_mul(n(), dim(), "U"));
    bindings::raise_if_failed(krylov::recycle_get(r_, out.data()));
  }
  template <class T>
  void set(int64_t n, int32_t dim, ConstArr<T> u) {
    check_len(u, "U", bindings::checked_mul(n, dim, "U"));
    bindings::raise_if_failed(krylov::recycle_set(r_, n, dim, u.data()));
  }
  krylov::Recycle* get_ptr() { return r_; }

 private:
  krylov::Recycle* r_ = nullptr;
};

// T: the solver's scalar. B: the scalar of A, b and x: T, or (mixed precision) the double type
// of the same kind, A then being a CSR matrix that the core rounds to T.
template <class T, class B = T>
nb::dict solve(const std::string& method, int64_t n, nb::object A_csr, nb::object A_fn,
               int precond, nb::object M_fn, ConstArr<B> b, Arr<B> x, int m, int k, double rtol,
               double atol, int64_t maxiter, RecycleSpace* recycle, nb::object monitor,
               F64 history) {
  constexpr bool mixed = !std::is_same_v<T, B>;
  if (method != "gcrodr" && method != "gmres") throw nb::value_error("method must be gcrodr or gmres");
  check_len(b, "b", n);
  check_len(x, "x0", n);
  krylov::OperatorT<T> op;
  krylov::Csr<B> csr;
  PyApply<T> a_cb, m_cb;
  if (!A_csr.is_none()) {
    auto t = nb::cast<nb::tuple>(A_csr);
    csr = csr_of<B>(nb::cast<int64_t>(t[0]), nb::cast<int64_t>(t[1]), nb::cast<AnyArray>(t[2]),
                    nb::cast<AnyArray>(t[3]), nb::cast<ConstArr<B>>(t[4]));
    if (csr.rows != n) throw nb::value_error("A: rows must equal len(b)");
    if constexpr (!mixed) op.csr = &csr;
  } else if (mixed) {
    throw nb::type_error("A: mixed precision needs A as a sparse or dense matrix");
  } else {
    a_cb.fn = A_fn;
    a_cb.n = n;
    op.apply = &PyApply<T>::call;
    op.ctx = &a_cb;
    op.n = n;
  }
  krylov::PreconditionerT<T> M;
  if (precond < 0 || precond > 3) throw nb::value_error("M: unknown preconditioner kind");
  M.kind = static_cast<krylov::Precond>(precond);
  if (M.kind == krylov::Precond::callback) {
    m_cb.fn = M_fn;
    m_cb.n = n;
    M.apply = &PyApply<T>::call;
    M.ctx = &m_cb;
  }
  PyMonitor mon;
  krylov::Options opt;
  opt.m = m;
  opt.k = k;
  opt.rtol = rtol;
  opt.atol = atol;
  opt.maxiter = maxiter;
  if (!monitor.is_none()) {
    mon.fn = monitor;
    opt.monitor = &PyMonitor::call;
    opt.monitor_ctx = &mon;
  }
  krylov::Result res;
  Status s;
  {
    nb::gil_scoped_release release;
    krylov::Recycle* rec = recycle ? recycle->get_ptr() : nullptr;
    const auto cap = static_cast<int64_t>(history.size());
    if constexpr (mixed) {
      s = method == "gcrodr"
              ? krylov::gcrodr_mixed(csr, M, b.data(), x.data(), opt, rec, &res, history.data(), cap)
              : krylov::gmres_mixed(csr, M, b.data(), x.data(), opt, &res, history.data(), cap);
    } else {
      s = method == "gcrodr"
              ? krylov::gcrodr(op, M, b.data(), x.data(), opt, rec, &res, history.data(), cap)
              : krylov::gmres(op, M, b.data(), x.data(), opt, &res, history.data(), cap);
    }
  }
  if (a_cb.error) {
    a_cb.error->restore();
    throw nb::python_error();
  }
  if (m_cb.error) {
    m_cb.error->restore();
    throw nb::python_error();
  }
  if (mon.error) {
    mon.error->restore();
    throw nb::python_error();
  }
  bindings::raise_if_failed(s);
  nb::dict d;
  d["iterations"] = res.iterations;
  d["matvecs"] = res.matvecs;
  d["cycles"] = res.cycles;
  d["residual_norm"] = res.residual_norm;
  d["b_norm"] = res.b_norm;
  d["converged"] = res.converged != 0;
  d["stagnated"] = res.stagnated != 0;
  d["breakdown"] = res.breakdown != 0;
  d["recycle_dim"] = res.recycle_dim;
  d["history_length"] = res.history_length;
  return d;
}

void spmv(int64_t rows, int64_t cols, AnyArray indptr, AnyArray indices, ConstF64 values,
          ConstF64 x, F64 y) {
  krylov::CsrMatrix A = csr_of<double>(rows, cols, indptr, indices, values);
  check_len(x, "x", cols);
  check_len(y, "y", rows);
  Status s;
  {
    nb::gil_scoped_release release;
    s = krylov::spmv(A, x.data(), y.data());
  }
  bindings::raise_if_failed(s);
}

}  // namespace

template <class T, class B>
void def_solve(nb::module_& mod, const std::string& name) {
  mod.def(name.c_str(), &solve<T, B>, nb::arg("method"), nb::arg("n"),
          nb::arg("A_csr").none(), nb::arg("A_fn").none(), nb::arg("precond"),
          nb::arg("M_fn").none(), nb::arg("b"), nb::arg("x"), nb::arg("m"), nb::arg("k"),
          nb::arg("rtol"), nb::arg("atol"), nb::arg("maxiter"), nb::arg("recycle").none(),
          nb::arg("monitor").none(), nb::arg("history"));
}

template <class T>
void def_scalar(nb::module_& mod, nb::class_<RecycleSpace>& cls, const char* name) {
  const std::string n(name);
  cls.def(("get_" + n).c_str(), &RecycleSpace::get<T>, nb::arg("out"))
      .def(("set_" + n).c_str(), &RecycleSpace::set<T>, nb::arg("n"), nb::arg("dim"), nb::arg("u"));
  def_solve<T, T>(mod, "solve_" + n);
}

NB_MODULE(_krylov, mod) {
  mod.doc() = "fastpaper._krylov: GMRES / GCRO-DR with recycling (see fastpaper.krylov)";
  auto cls = nb::class_<RecycleSpace>(mod, "RecycleSpace")
                 .def(nb::init<>())
                 .def_prop_ro("n", &RecycleSpace::n)
                 .def_prop_ro("dim", &RecycleSpace::dim)
                 .def_prop_ro("is_complex", &RecycleSpace::is_complex)
                 .def_prop_ro("dtype", &RecycleSpace::dtype);
  // solve_<dtype> and RecycleSpace.get_<dtype> / set_<dtype>, one per scalar type
  def_scalar<float>(mod, cls, "float32");
  def_scalar<double>(mod, cls, "float64");
  def_scalar<Cf>(mod, cls, "complex64");
  def_scalar<Zc>(mod, cls, "complex128");
  // double systems solved with a single-precision basis: solve_mixed_<type of A, b, x>
  def_solve<float, double>(mod, "solve_mixed_float64");
  def_solve<Cf, Zc>(mod, "solve_mixed_complex128");
  mod.def("spmv", &spmv, nb::arg("rows"), nb::arg("cols"), nb::arg("indptr"), nb::arg("indices"),
          nb::arg("values"), nb::arg("x"), nb::arg("y"));
}
