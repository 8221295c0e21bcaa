// The opaque recycle space U of fastpaper/krylov.h.
#include <cmath>
#include <new>
#include <string>

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

Status recycle_get(const Recycle* r, double* out) {
  if (r == nullptr) return fail(Status::invalid_argument, "null recycle space");
  if (r->dim > 0 && out == nullptr) return fail(Status::invalid_argument, "null output buffer");
  for (size_t i = 0; i < r->u.size(); ++i) out[i] = r->u[i];
  return fastpaper::detail::succeed();
}

Status recycle_set(Recycle* r, int64_t n, int32_t dim, const double* u) {
  if (r == nullptr) return fail(Status::invalid_argument, "null recycle space");
  if (n < 0 || dim < 0) return fail(Status::invalid_argument, "recycle: n and dim must be >= 0");
  if (dim > 0 && n > 0 && u == nullptr) return fail(Status::invalid_argument, "recycle: null U");
  const size_t size = static_cast<size_t>(n) * static_cast<size_t>(dim);
  for (size_t i = 0; i < size; ++i) {
    if (!std::isfinite(u[i])) return fail(Status::invalid_argument, "recycle: U contains NaN or infinity");
  }
  r->n = n;
  r->dim = dim;
  r->u.assign(u, u + size);
  return fastpaper::detail::succeed();
}

}  // namespace fastpaper::krylov
