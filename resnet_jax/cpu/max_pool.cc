// The ImageNet stem's 3x3 max pool (stride 2, padding 1; torch's MaxPool2d(3, 2, 1)) on XLA:CPU,
// as XLA FFI custom calls over NHWC float32 tensors.
//
//   ResnetJaxMaxPoolForward(x) -> y
//   ResnetJaxMaxPoolBackward(x, y, dy) -> dx: each output's gradient goes to the first input of
//     its window (row-major) that equals its maximum, torch's and XLA's choice among ties.
//
// XLA:CPU ran the pool as a reduce-window and its gradient (models/stem.py's gather of four phases)
// as several passes that recompute the padded input: ~12% of ResNet-18's CPU train step
// (PERFORMANCE.md). Here each output pixel is one pass over its window's channels, vectorised
// over channels, images split over OpenMP threads. Values equal lax's bitwise; gradients are
// sums of the same terms, added per input pixel in output order (at most four).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Image = ffi::Buffer<ffi::F32, 4>;  // NHWC
using ImageResult = ffi::ResultBuffer<ffi::F32, 4>;

// Output rows and columns of a 3x3, stride-2, padding-1 pool over `size` inputs.
int64_t PooledSize(int64_t size) { return (size - 1) / 2 + 1; }

// The window of output (i, j): input rows [r0, r1) and columns [c0, c1), clipped to the image.
struct Window {
  int64_t r0, r1, c0, c1;
};

Window WindowOf(int64_t i, int64_t j, int64_t h, int64_t w) {
  return {std::max<int64_t>(2 * i - 1, 0), std::min<int64_t>(2 * i + 2, h),
          std::max<int64_t>(2 * j - 1, 0), std::min<int64_t>(2 * j + 2, w)};
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void PoolImage(const float* __restrict__ x, float* __restrict__ y, int64_t h, int64_t w,
               int64_t c) {
  const int64_t ho = PooledSize(h), wo = PooledSize(w);
  for (int64_t i = 0; i < ho; ++i) {
    for (int64_t j = 0; j < wo; ++j) {
      const Window win = WindowOf(i, j, h, w);
      float* out = y + (i * wo + j) * c;
      std::memcpy(out, x + (win.r0 * w + win.c0) * c, c * sizeof(float));
      for (int64_t r = win.r0; r < win.r1; ++r) {
        for (int64_t s = win.c0; s < win.c1; ++s) {
          const float* in = x + (r * w + s) * c;
          // NaN propagates, as in XLA's max.
          for (int64_t k = 0; k < c; ++k) {
            out[k] = (in[k] > out[k] || in[k] != in[k]) ? in[k] : out[k];
          }
        }
      }
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void PoolGradientImage(const float* __restrict__ x, const float* __restrict__ y,
                       const float* __restrict__ dy, float* __restrict__ dx, int64_t h, int64_t w,
                       int64_t c, uint32_t* __restrict__ taken) {
  const int64_t ho = PooledSize(h), wo = PooledSize(w);
  std::fill(dx, dx + h * w * c, 0.0f);
  for (int64_t i = 0; i < ho; ++i) {
    for (int64_t j = 0; j < wo; ++j) {
      const Window win = WindowOf(i, j, h, w);
      const float* top = y + (i * wo + j) * c;
      const float* grad = dy + (i * wo + j) * c;
      std::fill(taken, taken + c, 0);
      for (int64_t r = win.r0; r < win.r1; ++r) {
        for (int64_t s = win.c0; s < win.c1; ++s) {
          const float* in = x + (r * w + s) * c;
          float* out = dx + (r * w + s) * c;
          for (int64_t k = 0; k < c; ++k) {
            const uint32_t first = (taken[k] == 0) & (in[k] == top[k]);
            out[k] += first ? grad[k] : 0.0f;
            taken[k] |= first;
          }
        }
      }
    }
  }
}

ffi::Error Forward(Image x, ImageResult y) {
  const auto d = x.dimensions();
  const int64_t n = d[0], h = d[1], w = d[2], c = d[3];
  const int64_t in_size = h * w * c, out_size = PooledSize(h) * PooledSize(w) * c;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n; ++b) {
    PoolImage(x.typed_data() + b * in_size, y->typed_data() + b * out_size, h, w, c);
  }
  return ffi::Error::Success();
}

ffi::Error Backward(Image x, Image y, Image dy, ImageResult dx) {
  try {
    const auto d = x.dimensions();
    const int64_t n = d[0], h = d[1], w = d[2], c = d[3];
    const int64_t in_size = h * w * c, out_size = PooledSize(h) * PooledSize(w) * c;
    std::vector<uint32_t> taken(n * c);  // per image: which channels found their maximum
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n; ++b) {
      PoolGradientImage(x.typed_data() + b * in_size, y.typed_data() + b * out_size,
                        dy.typed_data() + b * out_size, dx->typed_data() + b * in_size, h, w, c,
                        taken.data() + b * c);
    }
    return ffi::Error::Success();
  } catch (const std::exception& e) {  // std::bad_alloc: an XLA error, not a crash
    return ffi::Error::Internal(std::string("max_pool: ") + e.what());
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxMaxPoolForward, Forward,
                              ffi::Ffi::Bind().Arg<Image>().Ret<Image>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxMaxPoolBackward, Backward,
                              ffi::Ffi::Bind().Arg<Image>().Arg<Image>().Arg<Image>().Ret<Image>());
