// Gaussian rows for the Gibbs sampler (jaxcf/conjugate.py), an XLA:CPU
// kernel called through jax.ffi:
//
//   jaxcf_gaussian_rows   x_r = L_r^-T (L_r^-1 h_r + z_r),  P_r = L_r L_r^T
//
// for precisions P [..., k, k] (symmetrised as (P + P^T) / 2, as
// jnp.linalg.cholesky does), shifts h and standard normal noise z [..., k]:
// a draw of N(P_r^-1 h_r, P_r^-1) per row. A row whose P is not positive
// definite comes out NaN. float32 throughout, as in LAPACK (sums: Dots).
//
// The batch is many small matrices, so the arithmetic runs across them: 8
// matrices at once, interleaved as vectors of 8 lanes (one per matrix), so
// each scalar operation of one matrix's Cholesky is one SIMD operation for
// all 8. 8 x 8 transposes move rows in and out. A group's lower triangle is
// packed row by row with h as an extra row k: the Cholesky of
// [[P, h], [h^T, .]] gives L in rows 0..k-1 and y = L^-1 h in row k, so the
// forward solve is part of the factorisation. Columns go two at a time,
// each entry a dot product of two rows (left-looking), with 4 rows x 2
// columns of accumulators. The build assumes only the baseline ISA; on
// x86-64 an AVX2+FMA version is picked at run time where the CPU has them.

#include <algorithm>
#include <cstdint>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#define INLINE inline __attribute__((always_inline))

constexpr int kLanes = 8;
constexpr int64_t kChunk = 8;
typedef float V __attribute__((vector_size(32)));
typedef int32_t M __attribute__((vector_size(32)));
typedef float U __attribute__((vector_size(32), aligned(4)));  // unaligned
typedef float V4 __attribute__((vector_size(16)));
typedef int32_t M4 __attribute__((vector_size(16)));

// Lanes of two vectors by constant indices (GCC has no
// __builtin_shufflevector before 12, Clang no __builtin_shuffle).
#if defined(__clang__)
#define SHUFFLE(Mask, a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(Mask, a, b, ...) __builtin_shuffle(a, b, Mask{__VA_ARGS__})
#endif

// Where row i of the packed lower triangle starts (rows 0..k).
INLINE int64_t Row(int64_t i) { return i * (i + 1) / 2; }

INLINE V Sqrt(V d) {
  V r;
  for (int l = 0; l < kLanes; ++l) r[l] = __builtin_sqrtf(d[l]);
  return r;
}

// acc[r][c] = sum_{p < j} a[i0 + r][p] * a[j + c][p], in float32 but summed
// by chunks of kChunk terms: errors grow with ~kChunk + j / kChunk terms
// rather than j, as LAPACK's blocked sums do (the draws' error against
// float64 fell 1.5x, to LAPACK's, for ~8% more time at 50 factors).
template <int R, int C>
INLINE void Dots(const V* a, int64_t i0, int64_t j, V (&acc)[R][C]) {
  const V* rows[R];
  const V* cols[C];
  for (int r = 0; r < R; ++r) rows[r] = a + Row(i0 + r);
  for (int c = 0; c < C; ++c) cols[c] = a + Row(j + c);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = V{};
  for (int64_t p0 = 0; p0 < j; p0 += kChunk) {
    V part[R][C] = {};
    for (int64_t p = p0; p < std::min(j, p0 + kChunk); ++p) {
      V col[C];
      for (int c = 0; c < C; ++c) col[c] = cols[c][p];
      for (int r = 0; r < R; ++r) {
        const V x = rows[r][p];
        for (int c = 0; c < C; ++c) part[r][c] += x * col[c];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] += part[r][c];
  }
}

// Columns j..j+C-1 of rows i0..i0+R-1, all below the diagonal block.
template <int R, int C>
INLINE void Below(V* a, const V* inv, int64_t i0, int64_t j) {
  V acc[R][C];
  Dots<R, C>(a, i0, j, acc);
  for (int r = 0; r < R; ++r) {
    V* row = a + Row(i0 + r);
    row[j] = (row[j] - acc[r][0]) * inv[j];
    if (C == 2) {
      row[j + 1] = (row[j + 1] - acc[r][C - 1] - row[j] * a[Row(j + 1) + j]) *
                   inv[j + 1];
    }
  }
}

// One diagonal entry from what is left of it; a lane whose pivot is not
// positive (or is NaN) is marked and goes on with 1, staying finite.
INLINE void Pivot(V d, V* diag, V* inv, M* ok) {
  const M good = d > 0.0f;
  *ok &= good;
  const V l = Sqrt(good ? d : V{} + 1.0f);
  *diag = l;
  *inv = 1.0f / l;
}

// Columns j..j+C-1 of rows j..j+R-1: the diagonal block, R > C.
template <int R, int C>
INLINE void Diagonal(V* a, V* inv, M* ok, int64_t j) {
  V acc[R][C];
  Dots<R, C>(a, j, j, acc);
  V* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = a + Row(j + r);
  Pivot(rows[0][j] - acc[0][0], &rows[0][j], &inv[j], ok);
  for (int r = 1; r < R; ++r) rows[r][j] = (rows[r][j] - acc[r][0]) * inv[j];
  if (C == 2) {
    const V l10 = rows[1][j];
    Pivot(rows[1][j + 1] - acc[1][C - 1] - l10 * l10, &rows[1][j + 1],
          &inv[j + 1], ok);
    for (int r = 2; r < R; ++r) {
      rows[r][j + 1] =
          (rows[r][j + 1] - acc[r][C - 1] - rows[r][j] * l10) * inv[j + 1];
    }
  }
}

// Columns j..j+C-1 of every row j..k (row k: y).
template <int C>
INLINE void Columns(V* a, V* inv, M* ok, int64_t k, int64_t j) {
  switch (std::min<int64_t>(4, k + 1 - j)) {  // at least C + 1: row k
    case 2: Diagonal<2, C>(a, inv, ok, j); break;
    case 3: Diagonal<3, C>(a, inv, ok, j); break;
    default: Diagonal<4, C>(a, inv, ok, j);
  }
  int64_t i = j + 4;
  for (; i + 4 <= k + 1; i += 4) Below<4, C>(a, inv, i, j);
  switch (k + 1 - i) {
    case 1: Below<1, C>(a, inv, i, j); break;
    case 2: Below<2, C>(a, inv, i, j); break;
    case 3: Below<3, C>(a, inv, i, j); break;
    default: break;
  }
}

// c[j][l] = r[l][j], 8 x 8, with 256-bit shuffles (AVX).
struct Wide {
  static INLINE void Transpose(const V (&r)[8], V (&c)[8]) {
    V t[8], u[8];
    for (int q = 0; q < 8; q += 2) {
      t[q] = SHUFFLE(M, r[q], r[q + 1], 0, 8, 1, 9, 4, 12, 5, 13);
      t[q + 1] = SHUFFLE(M, r[q], r[q + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int q = 0; q < 8; q += 4) {
      for (int s = q; s < q + 2; ++s) {
        u[q + 2 * (s - q)] =
            SHUFFLE(M, t[s], t[s + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[q + 2 * (s - q) + 1] =
            SHUFFLE(M, t[s], t[s + 2], 2, 3, 10, 11, 6, 7, 14, 15);
      }
    }
    for (int q = 0; q < 4; ++q) {
      c[q] = SHUFFLE(M, u[q], u[q + 4], 0, 1, 2, 3, 8, 9, 10, 11);
      c[q + 4] = SHUFFLE(M, u[q], u[q + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
  }
};

// The same as four 4 x 4 transposes of 128-bit halves: SSE2 and NEON have
// no 256-bit shuffles, and GCC lowers Wide's to scalar moves there.
struct Narrow {
  static INLINE void Transpose4(const V4* r, V4* c) {
    const V4 t0 = SHUFFLE(M4, r[0], r[1], 0, 4, 1, 5);
    const V4 t1 = SHUFFLE(M4, r[0], r[1], 2, 6, 3, 7);
    const V4 t2 = SHUFFLE(M4, r[2], r[3], 0, 4, 1, 5);
    const V4 t3 = SHUFFLE(M4, r[2], r[3], 2, 6, 3, 7);
    c[0] = SHUFFLE(M4, t0, t2, 0, 1, 4, 5);
    c[1] = SHUFFLE(M4, t0, t2, 2, 3, 6, 7);
    c[2] = SHUFFLE(M4, t1, t3, 0, 1, 4, 5);
    c[3] = SHUFFLE(M4, t1, t3, 2, 3, 6, 7);
  }

  static INLINE void Transpose(const V (&r)[8], V (&c)[8]) {
    const V4* in = reinterpret_cast<const V4*>(r);  // [lane][column half]
    V4* out = reinterpret_cast<V4*>(c);             // [column][lane half]
    for (int lh = 0; lh < 2; ++lh) {
      for (int ch = 0; ch < 2; ++ch) {
        const V4* x = in + 8 * lh + ch;
        const V4 t[4] = {x[0], x[2], x[4], x[6]};
        V4 u[4];
        Transpose4(t, u);
        for (int q = 0; q < 4; ++q) out[2 * (4 * ch + q) + lh] = u[q];
      }
    }
  }
};

// out[j] = lane l's src_l[j] for j < k: src_l = src + rows[l] * stride.
template <class T>
INLINE void Interleave(const float* src, const int64_t (&rows)[8],
                       int64_t stride, int64_t k, V* out) {
  if (k < kLanes) {
    for (int64_t j = 0; j < k; ++j)
      for (int l = 0; l < kLanes; ++l) out[j][l] = src[rows[l] * stride + j];
    return;
  }
  for (int64_t j0 = 0; j0 < k; j0 += kLanes) {
    const int64_t j = std::min(j0, k - kLanes);  // the last block overlaps
    V r[8], c[8];
#pragma GCC unroll 8
    for (int l = 0; l < kLanes; ++l) {
      r[l] = *reinterpret_cast<const U*>(src + rows[l] * stride + j);
    }
    T::Transpose(r, c);
    for (int q = 0; q < kLanes; ++q) out[j + q] = c[q];
  }
}

// The inverse: dst_l[j] = lane l's in[j], for the first `count` lanes.
template <class T>
INLINE void Deinterleave(const V* in, int64_t k, int64_t count, float* dst) {
  if (k < kLanes) {
    for (int64_t l = 0; l < count; ++l)
      for (int64_t j = 0; j < k; ++j) dst[l * k + j] = in[j][l];
    return;
  }
  for (int64_t j0 = 0; j0 < k; j0 += kLanes) {
    const int64_t j = std::min(j0, k - kLanes);
    V r[8], c[8];
    for (int q = 0; q < kLanes; ++q) r[q] = in[j + q];
    T::Transpose(r, c);
    for (int64_t l = 0; l < count; ++l) {
      *reinterpret_cast<U*>(dst + l * k + j) = c[l];
    }
  }
}

// Rows [first, first + count) of the batch, count <= 8. Scratch: a, Row(k)
// + k vectors; full, k * k; w and inv, k each.
template <class T>
INLINE void Group(const float* p, const float* h, const float* z, float* x,
                  int64_t k, int64_t first, int64_t count, V* a, V* full,
                  V* w, V* inv) {
  int64_t rows[8];
  for (int l = 0; l < kLanes; ++l) {
    rows[l] = first + std::min<int64_t>(l, count - 1);  // pad with a copy
  }
  for (int64_t i = 0; i < k; ++i) {
    Interleave<T>(p + i * k, rows, k * k, k, full + i * k);
  }
  for (int64_t i = 0; i < k; ++i) {
    V* row = a + Row(i);
    for (int64_t j = 0; j <= i; ++j) {
      row[j] = 0.5f * (full[i * k + j] + full[j * k + i]);
    }
  }
  Interleave<T>(h, rows, k, k, a + Row(k));
  Interleave<T>(z, rows, k, k, w);
  M ok = M{} == 0;
  int64_t j = 0;
  for (; j + 2 <= k; j += 2) Columns<2>(a, inv, &ok, k, j);
  if (j < k) Columns<1>(a, inv, &ok, k, j);
  const V* y = a + Row(k);
  for (int64_t i = 0; i < k; ++i) w[i] += y[i];
  for (int64_t i = k - 1; i >= 0; --i) {  // L^T x = y + z, x over w
    const V xi = w[i] * inv[i];
    w[i] = xi;
    const V* row = a + Row(i);
    for (int64_t q = 0; q < i; ++q) w[q] -= row[q] * xi;
  }
  const V nan = V{} + __builtin_nanf("");
  for (int64_t i = 0; i < k; ++i) w[i] = ok ? w[i] : nan;
  Deinterleave<T>(w, k, count, x + first * k);
}

template <class T>
INLINE void AllRows(const float* p, const float* h, const float* z, float* x,
                    int64_t n, int64_t k) {
  const int64_t packed = Row(k) + k;
  std::unique_ptr<V[]> a(new V[packed + k * k + 2 * k]);
  for (int64_t first = 0; first < n; first += kLanes) {
    Group<T>(p, h, z, x, k, first, std::min<int64_t>(kLanes, n - first),
             a.get(), a.get() + packed, a.get() + packed + k * k,
             a.get() + packed + k * k + k);
  }
}

using Kernel = void (*)(const float*, const float*, const float*, float*,
                        int64_t, int64_t);

// Baseline: each 8-lane vector is two SSE2 (x86-64) or NEON registers.
void Baseline(const float* p, const float* h, const float* z, float* x,
              int64_t n, int64_t k) {
  AllRows<Narrow>(p, h, z, x, n, k);
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void Avx2(
    const float* p, const float* h, const float* z, float* x, int64_t n,
    int64_t k) {
  AllRows<Wide>(p, h, z, x, n, k);
}
#endif

// variant: 0 the best this CPU runs, 1 baseline, 2 AVX2 (the tests run
// each); null when this CPU cannot run it. (An AVX-512 build of the same
// 8 lanes measured no faster on an AMD EPYC.)
Kernel Pick(int32_t variant) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    if (variant == 0 || variant == 2) return Avx2;
  }
#endif
  return variant == 0 || variant == 1 ? Baseline : nullptr;
}

ffi::Error GaussianRows(ffi::Buffer<ffi::F32> precision,
                        ffi::Buffer<ffi::F32> shift,
                        ffi::Buffer<ffi::F32> noise,
                        ffi::ResultBuffer<ffi::F32> out, int32_t variant) {
  const auto dims = precision.dimensions();
  const size_t rank = dims.size();
  if (rank < 2 || dims[rank - 1] != dims[rank - 2] ||
      shift.dimensions().size() != rank - 1 ||
      !std::equal(dims.begin(), dims.end() - 1, shift.dimensions().begin()) ||
      noise.element_count() != shift.element_count() ||
      out->element_count() != shift.element_count()) {
    return ffi::Error::InvalidArgument(
        "expected precision [..., k, k], shift, noise and out [..., k]");
  }
  const int64_t k = dims[rank - 1];
  const int64_t n = k ? shift.element_count() / k : 0;
  const Kernel kernel = Pick(variant);
  if (!kernel) return ffi::Error::InvalidArgument("no such variant here");
  if (n) {
    kernel(precision.typed_data(), shift.typed_data(), noise.typed_data(),
           out->typed_data(), n, k);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcfGaussianRows, GaussianRows,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("variant"));
