// Per-channel sums for BatchNorm's training pass on XLA:CPU, as XLA FFI custom calls.
//
// XLA:CPU computes BatchNorm's statistics in four passes over the activations: it writes the
// shifted copy x - shift (a broadcast operand, which its YNNPACK reductions do not take), then
// reduces that copy twice. The backward pass writes x_hat to reduce dy * x_hat. These kernels read
// their operands once and write C pairs of sums (resnet_jax/models/batch_norm.py; timings in
// PERFORMANCE.md).
//
// Both take [..., C] float32 tensors (rows of C channels, NHWC flattened) and return [2, C]:
//   ResnetJaxChannelMoments(x, shift):         sum(x - shift), sum((x - shift)^2)
//   ResnetJaxChannelGradientSums(dy, x, mean): sum(dy),        sum(dy * (x - mean))
// Rows are summed in float32 within fixed blocks of 64 and the block sums in float64 in block
// order, so a result depends on the shapes alone, not on the number of threads (OpenMP splits
// the blocks): one and several processes give bitwise the same statistics. The float32 error is
// that of 64-term sums, as small as XLA's own reductions' (tests/test_channel_sums.py).

#include <algorithm>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlockRows = 64;
// Below this many elements a call runs on its own thread: a parallel region costs more.
constexpr int64_t kParallelElements = 1 << 16;

// One block of `rows` rows: sums into acc0 and acc1 (C each). Vectorised over channels; compiled
// for AVX-512, AVX2 and the baseline, picked at load time.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void BlockSums(bool gradient, const float* __restrict__ a, const float* __restrict__ b,
               const float* __restrict__ shift, int64_t rows, int64_t c,
               float* __restrict__ acc0, float* __restrict__ acc1) {
  std::fill(acc0, acc0 + c, 0.0f);
  std::fill(acc1, acc1 + c, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* ar = a + r * c;
    if (gradient) {
      const float* br = b + r * c;
      for (int64_t j = 0; j < c; ++j) {
        acc0[j] += ar[j];
        acc1[j] += ar[j] * (br[j] - shift[j]);
      }
    } else {
      for (int64_t j = 0; j < c; ++j) {
        const float d = ar[j] - shift[j];
        acc0[j] += d;
        acc1[j] += d * d;
      }
    }
  }
}

ffi::Error Sums(bool gradient, ffi::AnyBuffer::Dimensions dims, const float* a, const float* b,
                const float* shift, float* out) {
  try {
    const int64_t c = dims.size() ? dims.back() : 1;
    int64_t count = 1;
    for (int64_t d : dims) count *= d;
    const int64_t rows = c ? count / c : 0;
    const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
    std::vector<float> partial(2 * blocks * c);
#pragma omp parallel for schedule(static) if (count >= kParallelElements)
    for (int64_t k = 0; k < blocks; ++k) {
      const int64_t first = k * kBlockRows;
      BlockSums(gradient, a + first * c, gradient ? b + first * c : nullptr, shift,
                std::min(kBlockRows, rows - first), c, &partial[2 * k * c],
                &partial[(2 * k + 1) * c]);
    }
    std::vector<double> total(2 * c, 0.0);
    for (int64_t k = 0; k < blocks; ++k) {
      for (int64_t j = 0; j < 2 * c; ++j) total[j] += partial[2 * k * c + j];
    }
    for (int64_t j = 0; j < 2 * c; ++j) out[j] = static_cast<float>(total[j]);
    return ffi::Error::Success();
  } catch (const std::exception& e) {  // std::bad_alloc: an XLA error, not a crash
    return ffi::Error::Internal(std::string("channel_sums: ") + e.what());
  }
}

ffi::Error Moments(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> shift,
                   ffi::ResultBuffer<ffi::F32> out) {
  return Sums(false, x.dimensions(), x.typed_data(), nullptr, shift.typed_data(),
              out->typed_data());
}

ffi::Error GradientSums(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> x,
                        ffi::Buffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> out) {
  if (!(dy.dimensions() == x.dimensions())) {
    return ffi::Error::InvalidArgument("channel_sums: dy and x differ in shape");
  }
  return Sums(true, dy.dimensions(), dy.typed_data(), x.typed_data(), mean.typed_data(),
              out->typed_data());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxChannelMoments, Moments,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxChannelGradientSums, GradientSums,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
