// The opaque recycle space U of fastpaper/krylov.h.
#include <cmath>
#include <new>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "krylov/internal.h"

namespace fastpaper::krylov {

using fastpaper::detail::fail;

Status recycle_create(Recycle** out) {
  if (out == nullptr) return fail(Status::invalid_argument, "null output pointer");
  *out = new (std::nothrow) Recycle();
  if (*out == nullptr) return fail(Status::invalid_argument, "out of memory");
  return fastpaper::detail::succeed();
}

void recycle_destroy(Recycle* r) { delete r; }

int64_t recycle_n(const Recycle* r) { return r ? r->n : 0; }
int32_t recycle_dim(const Recycle* r) { return r ? r->dim : 0; }
bool recycle_is_complex(const Recycle* r) {
  return r && (r->kind == Scalar::complex64 || r->kind == Scalar::complex128);
}
Scalar recycle_scalar(const Recycle* r) { return r ? r->kind : Scalar::float64; }

const char* detail::scalar_name(Scalar s) {
  switch (s) {
    case Scalar::float32:
      return "float32";
    case Scalar::float64:
      return "float64";
    case Scalar::complex64:
      return "complex64";
    case Scalar::complex128:
      return "complex128";
  }
  return "unknown";
}

namespace {

using detail::finite;

template <class T>
Status get_t(const Recycle* r, T* out) {
  if (r == nullptr) return fail(Status::invalid_argument, "null recycle space");
  if (r->dim > 0 && r->kind != detail::ScalarOf<T>::kind) {
    return fail(Status::invalid_argument, std::string("recycle: the space holds ") +
                                              detail::scalar_name(r->kind) + " vectors, asked for " +
                                              detail::scalar_name(detail::ScalarOf<T>::kind));
  }
  if (r->dim > 0 && out == nullptr) return fail(Status::invalid_argument, "null output buffer");
  const auto& v = const_cast<Recycle*>(r)->vec<T>();
  for (size_t i = 0; i < v.size(); ++i) out[i] = v[i];
  return fastpaper::detail::succeed();
}

template <class T>
Status set_t(Recycle* r, int64_t n, int32_t dim, const T* u) {
  if (r == nullptr) return fail(Status::invalid_argument, "null recycle space");
  if (n < 0 || dim < 0) return fail(Status::invalid_argument, "recycle: n and dim must be >= 0");
  if (dim > 0 && n > 0 && u == nullptr) return fail(Status::invalid_argument, "recycle: null U");
  const size_t size = static_cast<size_t>(n) * static_cast<size_t>(dim);
  for (size_t i = 0; i < size; ++i) {
    if (!finite(u[i])) return fail(Status::invalid_argument, "recycle: U contains NaN or infinity");
  }
  r->n = n;
  r->dim = dim;
  r->kind = detail::ScalarOf<T>::kind;
  r->clear();
  r->vec<T>().assign(u, u + size);
  return fastpaper::detail::succeed();
}

}  // namespace

Status recycle_get(const Recycle* r, float* out) { return get_t(r, out); }
Status recycle_get(const Recycle* r, double* out) { return get_t(r, out); }
Status recycle_get(const Recycle* r, C* out) { return get_t(r, out); }
Status recycle_get(const Recycle* r, Z* out) { return get_t(r, out); }
Status recycle_set(Recycle* r, int64_t n, int32_t dim, const float* u) { return set_t(r, n, dim, u); }
Status recycle_set(Recycle* r, int64_t n, int32_t dim, const double* u) { return set_t(r, n, dim, u); }
Status recycle_set(Recycle* r, int64_t n, int32_t dim, const C* u) { return set_t(r, n, dim, u); }
Status recycle_set(Recycle* r, int64_t n, int32_t dim, const Z* u) { return set_t(r, n, dim, u); }

}  // namespace fastpaper::krylov
