// Internal: the core's BLAS entry points shared by the areas (scipy-openblas32, `scipy_` prefix).
#pragma once

#include <cstdint>

namespace fastpaper::detail {

// Makes the core's OpenBLAS single-threaded (once per process). The kernels parallelize with
// OpenMP over tiles, rows or systems; OpenBLAS's own threads inside would oversubscribe the cores
// (and warn inside OpenMP regions). This OpenBLAS copy is private to fastpaper (numpy and scipy
// wheels ship their own), so the setting touches nothing else.
void single_threaded_blas();

// Row-major C[m, n] = op(A)[m, k] op(B)[k, n] + beta * C, op = transpose when ta / tb.
void gemm_row_major(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda,
                    const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm_row_major(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* A,
                    int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

}  // namespace fastpaper::detail
