// The core's shared BLAS entry points (core/blas.h).
#include "core/blas.h"

#include <cblas.h>

namespace fastpaper::detail {
namespace {
inline blasint I(int64_t v) { return static_cast<blasint>(v); }
inline CBLAS_TRANSPOSE Tr(bool t) { return t ? CblasTrans : CblasNoTrans; }
}  // namespace

void single_threaded_blas() {
  static const bool once = [] {
    scipy_openblas_set_num_threads(1);
    return true;
  }();
  (void)once;
}

void gemm_row_major(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda,
                    const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, Tr(ta), Tr(tb), I(m), I(n), I(k), 1.0f, A, I(lda), B, I(ldb),
                    beta, C, I(ldc));
}

void gemm_row_major(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* A,
                    int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  scipy_cblas_dgemm(CblasRowMajor, Tr(ta), Tr(tb), I(m), I(n), I(k), 1.0, A, I(lda), B, I(ldb),
                    beta, C, I(ldc));
}

}  // namespace fastpaper::detail
