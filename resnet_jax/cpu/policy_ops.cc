// SPDX-License-Identifier: Apache-2.0
// The augmentation policies' ops as one TensorFlow op: an example's drawn ops, in order, on its
// uint8 [H, W, 3] crop, with PIL's arithmetic. Built and loaded by resnet_jax/data/policy_kernel.py,
// which says why; resnet_jax/data/policy_ops.py holds the same ops as TensorFlow graphs, and
// tests/test_auto_augment.py checks both against PIL pixel for pixel.
//
// Every op is the arithmetic of PIL's C code (and of policy_ops.py), in its order of operations:
// float32 blends, float64 resampling, 16.16 fixed point for the nearest-neighbour affine. Built
// with -ffp-contract=off: a fused multiply-add would round once where PIL rounds twice.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

// Op ids: the order of resnet_jax.data.auto_augment.OPS.
enum Op : int32_t {
  kIdentity,
  kShearX,
  kShearY,
  kTranslateX,
  kTranslateY,
  kRotate,
  kBrightness,
  kColor,
  kContrast,
  kSharpness,
  kPosterize,
  kSolarize,
  kAutoContrast,
  kEqualize,
  kInvert,
  kSolarizeAdd,
};
enum Resample : int32_t { kNearest, kBilinear, kBicubic };  // auto_augment.RESAMPLING

struct Image {
  int64_t h, w;
  const uint8_t* in;
  uint8_t* out;
  int64_t size() const { return h * w * 3; }
};

// PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16.
inline uint8_t Luminance(const uint8_t* p) {
  return (p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16;
}

// PIL's ImagingBlend: degenerate + alpha * (image - degenerate) in float32, clipped, truncated.
inline uint8_t Blend(int32_t degenerate, int32_t value, float alpha) {
  const float product = alpha * static_cast<float>(value - degenerate);
  const float v = static_cast<float>(degenerate) + product;
  return static_cast<uint8_t>(static_cast<int32_t>(std::min(std::max(v, 0.0f), 255.0f)));
}

// ``out[i] = f(in[i])`` for every value. The pointers are copied to locals declared unaliased:
// a uint8 store may alias anything, so through ``im`` the compiler would reload the pointers and
// size after every store and not vectorise (5x slower).
template <typename F>
void Map(const Image& im, F f) {
  const uint8_t* __restrict in = im.in;
  uint8_t* __restrict out = im.out;
  const int64_t n = im.size();
  for (int64_t i = 0; i < n; ++i) out[i] = f(in[i]);
}

// ``out[i] = Blend(degenerate[i], in[i], factor)``, vectorised as ``Map``.
void BlendAll(const uint8_t* __restrict degenerate, const Image& im, float factor) {
  const uint8_t* __restrict in = im.in;
  uint8_t* __restrict out = im.out;
  const int64_t n = im.size();
  for (int64_t i = 0; i < n; ++i) out[i] = Blend(degenerate[i], in[i], factor);
}

void Brightness(const Image& im, float factor) {
  Map(im, [factor](uint8_t v) { return Blend(0, v, factor); });
}

void Color(const Image& im, float factor) {
  std::vector<uint8_t> gray(im.size());
  const uint8_t* __restrict in = im.in;
  uint8_t* __restrict out = gray.data();
  const int64_t n = im.size();
  for (int64_t i = 0; i < n; i += 3) out[i] = out[i + 1] = out[i + 2] = Luminance(in + i);
  BlendAll(gray.data(), im, factor);
}

void Contrast(const Image& im, float factor) {
  int64_t sum = 0;
  for (int64_t p = 0; p < im.h * im.w; ++p) sum += Luminance(im.in + 3 * p);
  // ImageStat's mean of the L image (an exact sum), + 0.5, truncated.
  const int32_t mean =
      static_cast<int32_t>(static_cast<double>(sum) / static_cast<double>(im.h * im.w) + 0.5);
  Map(im, [mean, factor](uint8_t v) { return Blend(mean, v, factor); });
}

// PIL's ImageFilter.SMOOTH (1 1 1 / 1 5 1 / 1 1 1 over 13, rounded; border pixels kept) blended.
void Sharpness(const Image& im, float factor) {
  const int64_t h = im.h, row = 3 * im.w;
  std::vector<uint8_t> smooth(im.in, im.in + im.size());
  for (int64_t y = 1; y + 1 < h; ++y) {
    const uint8_t* up = im.in + (y - 1) * row;
    const uint8_t* mid = up + row;
    const uint8_t* down = mid + row;
    uint8_t* target = smooth.data() + y * row;
    for (int64_t i = 3; i + 3 < row; ++i) {  // interleaved channels: a neighbour is 3 away
      const int32_t total = up[i - 3] + up[i] + up[i + 3] + mid[i - 3] + 5 * mid[i] + mid[i + 3] +
                            down[i - 3] + down[i] + down[i + 3];
      target[i] = static_cast<uint8_t>((2 * total + 13) / 26);
    }
  }
  BlendAll(smooth.data(), im, factor);
}

void ApplyLuts(const Image& im, const uint8_t luts[3][256]) {
  const uint8_t* __restrict in = im.in;
  uint8_t* __restrict out = im.out;
  const int64_t n = im.size();
  for (int64_t i = 0; i < n; i += 3) {
    out[i] = luts[0][in[i]];
    out[i + 1] = luts[1][in[i + 1]];
    out[i + 2] = luts[2][in[i + 2]];
  }
}

void Histograms(const Image& im, int64_t hist[3][256]) {
  std::memset(hist, 0, sizeof(int64_t) * 3 * 256);
  const uint8_t* __restrict in = im.in;
  const int64_t n = im.size();
  for (int64_t i = 0; i < n; i += 3) {
    ++hist[0][in[i]];
    ++hist[1][in[i + 1]];
    ++hist[2][in[i + 2]];
  }
}

// PIL's ImageOps.autocontrast (no cutoff): [lo, hi] stretched to [0, 255] in float64, truncated.
void AutoContrast(const Image& im) {
  int64_t hist[3][256];
  uint8_t luts[3][256];
  Histograms(im, hist);
  for (int c = 0; c < 3; ++c) {
    int lo = 255, hi = 0;
    for (int v = 0; v < 256; ++v) {
      if (hist[c][v]) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
    const double scale = 255.0 / static_cast<double>(std::max(hi - lo, 1));
    const double offset = -static_cast<double>(lo) * scale;
    for (int v = 0; v < 256; ++v) {
      int64_t stretched = static_cast<int64_t>(static_cast<double>(v) * scale + offset);
      luts[c][v] = hi > lo ? static_cast<uint8_t>(std::clamp<int64_t>(stretched, 0, 255)) : v;
    }
  }
  ApplyLuts(im, luts);
}

// PIL's ImageOps.equalize: step = (pixels - count of the last present value) // 255,
// lut[i] = (step // 2 + pixels below i) // step; a channel with step 0 unchanged.
void Equalize(const Image& im) {
  int64_t hist[3][256];
  uint8_t luts[3][256];
  Histograms(im, hist);
  for (int c = 0; c < 3; ++c) {
    int last = -1;
    int64_t total = 0;
    for (int v = 0; v < 256; ++v) {
      total += hist[c][v];
      if (hist[c][v]) last = v;
    }
    const int64_t step = (total - (last >= 0 ? hist[c][last] : 0)) / 255;
    int64_t below = 0;
    for (int v = 0; v < 256; ++v) {
      luts[c][v] = step > 0 ? static_cast<uint8_t>(std::min<int64_t>((step / 2 + below) / step, 255))
                            : v;
      below += hist[c][v];
    }
  }
  ApplyLuts(im, luts);
}

void Posterize(const Image& im, float magnitude) {
  const int32_t bits = static_cast<int32_t>(magnitude);
  const uint8_t mask = static_cast<uint8_t>(~((1 << (8 - bits)) - 1));
  Map(im, [mask](uint8_t v) -> uint8_t { return v & mask; });
}

void Solarize(const Image& im, float magnitude) {
  const int32_t threshold = static_cast<int32_t>(std::ceil(magnitude));
  Map(im, [threshold](uint8_t v) -> uint8_t { return v >= threshold ? 255 - v : v; });
}

void SolarizeAdd(const Image& im, float magnitude) {
  const int32_t addend = static_cast<int32_t>(magnitude);
  Map(im, [addend](uint8_t v) -> uint8_t {
    return v < 128 ? static_cast<uint8_t>(std::min(v + addend, 255)) : v;
  });
}

void Invert(const Image& im) {
  Map(im, [](uint8_t v) -> uint8_t { return 255 - v; });
}

// PIL's nearest-neighbour affine (``affine_fixed``): 16.16 fixed point, the half-pixel offsets
// folded into the offsets, int32 sums (wrapping, as PIL's and TensorFlow's int32).
void AffineNearest(const Image& im, const double* a, const uint8_t* fill) {
  auto fix = [](double v) { return static_cast<int32_t>(std::floor(v * 65536.0 + 0.5)); };
  const uint32_t m0 = fix(a[0]), m1 = fix(a[1]), m3 = fix(a[3]), m4 = fix(a[4]);
  const uint32_t m2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5);
  const uint32_t m5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5);
  for (int64_t y = 0; y < im.h; ++y) {
    for (int64_t x = 0; x < im.w; ++x) {
      const uint32_t ux = static_cast<uint32_t>(x), uy = static_cast<uint32_t>(y);
      const int32_t xin = static_cast<int32_t>(m2 + ux * m0 + uy * m1) >> 16;
      const int32_t yin = static_cast<int32_t>(m5 + ux * m3 + uy * m4) >> 16;
      const bool inside = xin >= 0 && xin < im.w && yin >= 0 && yin < im.h;
      const uint8_t* src = inside ? im.in + (yin * im.w + xin) * 3 : fill;
      std::memcpy(im.out + (y * im.w + x) * 3, src, 3);
    }
  }
}

// The interpolating resampler works on a pixel's three channels at once as one vector of four
// doubles (the fourth lane unused): lane for lane the same IEEE operations as PIL's per-band
// code, so the same values. Built for AVX2 and for the baseline, chosen when loaded.
#define RESNET_JAX_HOT __attribute__((target_clones("avx2", "default")))
typedef double Rgb __attribute__((vector_size(32)));
typedef int32_t Ints4 __attribute__((vector_size(16)));

// PIL's BICUBIC macro (a = -1 cubic convolution), in its order of operations.
inline Rgb Cubic(Rgb v1, Rgb v2, Rgb v3, Rgb v4, double d) {
  const Rgb p2 = -v1 + v3;
  const Rgb p3 = 2.0 * (v1 - v2) + v3 - v4;
  const Rgb p4 = -v1 + v2 - v3 + v4;
  return v2 + d * (p2 + d * (p3 + d * p4));
}

// PIL's bilinear or bicubic affine (``ImagingGenericTransform``) in float64: an output pixel
// centre maps to (m0 (x + .5) + m1 (y + .5) + m2, ...); outside the image it takes ``fill``;
// inside, the 2 x 2 or 4 x 4 source pixels around it (indices clamped) are interpolated along
// rows, then down the column, and truncated (bicubic clipped to [0, 255] first).
RESNET_JAX_HOT void AffineInterpolated(const Image& im, const double* a, bool cubic,
                                       const uint8_t* fill) {
  const int64_t h = im.h, w = im.w;
  const int taps = cubic ? 4 : 2, first = cubic ? -1 : 0;
  // The source as doubles once (each pixel is read by up to 16 outputs): the interpolation's
  // loads are then whole vectors, not bytes converted lane by lane.
  std::vector<double> storage(4 * h * w + 4);  // aligned to 32 bytes by hand below
  Rgb* pixels = reinterpret_cast<Rgb*>(storage.data() +
                                       (4 - reinterpret_cast<uintptr_t>(storage.data()) / 8 % 4) % 4);
  for (int64_t p = 0; p < h * w; ++p) {
    const uint8_t* px = im.in + 3 * p;
    pixels[p] = Rgb{static_cast<double>(px[0]), static_cast<double>(px[1]),
                    static_cast<double>(px[2]), 0.0};
  }
  for (int64_t y = 0; y < h; ++y) {
    const double fy = static_cast<double>(y) + 0.5;
    const double row_x = a[1] * fy, row_y = a[4] * fy;
    for (int64_t x = 0; x < w; ++x) {
      const double fx = static_cast<double>(x) + 0.5;
      const double xx = a[0] * fx + row_x + a[2];
      const double yy = a[3] * fx + row_y + a[5];
      uint8_t* out = im.out + (y * w + x) * 3;
      if (!(xx >= 0.0 && xx < static_cast<double>(w) && yy >= 0.0 && yy < static_cast<double>(h))) {
        std::memcpy(out, fill, 3);
        continue;
      }
      const double xs = xx - 0.5, ys = yy - 0.5;
      const double x0 = std::floor(xs), y0 = std::floor(ys);
      const double dx = xs - x0, dy = ys - y0;
      const int64_t left = static_cast<int64_t>(x0) + first, top = static_cast<int64_t>(y0) + first;
      int64_t cols[4];
      const Rgb* rows[4];
      for (int k = 0; k < taps; ++k) {
        cols[k] = std::clamp<int64_t>(left + k, 0, w - 1);
        rows[k] = pixels + w * std::clamp<int64_t>(top + k, 0, h - 1);
      }
      // A zero fraction makes its pass exact copies (v2 + 0 * finite = v2): along a row when
      // dx is 0, down the column when dy is 0; the shears and translations have one of them for
      // every pixel, and skip that pass's arithmetic (the values are the same).
      Rgb value;
      if (cubic) {
        auto along = [&](int r) {
          const Rgb* row = rows[r];
          if (dx == 0.0) return row[cols[1]];
          return Cubic(row[cols[0]], row[cols[1]], row[cols[2]], row[cols[3]], dx);
        };
        value = dy == 0.0 ? along(1) : Cubic(along(0), along(1), along(2), along(3), dy);
        value = value < 0.0 ? Rgb{} : value;
        value = value > 255.0 ? Rgb{} + 255.0 : value;
      } else {
        auto along = [&](int r) {
          const Rgb l = rows[r][cols[0]];
          if (dx == 0.0) return l;
          const Rgb right = rows[r][cols[1]];
          return l + (right - l) * dx;
        };
        const Rgb top_row = along(0);
        value = dy == 0.0 ? top_row : top_row + (along(1) - top_row) * dy;
      }
      const Ints4 truncated = __builtin_convertvector(value, Ints4);
      for (int c = 0; c < 3; ++c) out[c] = static_cast<uint8_t>(truncated[c]);
    }
  }
}

// One op on ``im.in`` into ``im.out`` (distinct buffers). False for an unknown op id.
bool ApplyOp(const Image& im, int32_t op, float magnitude, const double* matrix, int32_t resample,
             const uint8_t* fill) {
  switch (op) {
    case kIdentity:
      std::memcpy(im.out, im.in, im.size());
      return true;
    case kShearX:
    case kShearY:
    case kTranslateX:
    case kTranslateY:
    case kRotate:
      if (resample == kNearest) {
        AffineNearest(im, matrix, fill);
      } else {
        AffineInterpolated(im, matrix, resample == kBicubic, fill);
      }
      return resample >= kNearest && resample <= kBicubic;
    case kBrightness:
      Brightness(im, magnitude);
      return true;
    case kColor:
      Color(im, magnitude);
      return true;
    case kContrast:
      Contrast(im, magnitude);
      return true;
    case kSharpness:
      Sharpness(im, magnitude);
      return true;
    case kPosterize:
      Posterize(im, magnitude);
      return true;
    case kSolarize:
      Solarize(im, magnitude);
      return true;
    case kAutoContrast:
      AutoContrast(im);
      return true;
    case kEqualize:
      Equalize(im);
      return true;
    case kInvert:
      Invert(im);
      return true;
    case kSolarizeAdd:
      SolarizeAdd(im, magnitude);
      return true;
  }
  return false;
}

class PolicyOp : public OpKernel {
 public:
  explicit PolicyOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& image = context->input(0);
    const Tensor& op = context->input(1);
    const Tensor& magnitude = context->input(2);
    const Tensor& matrix = context->input(3);
    const Tensor& resample = context->input(4);
    const Tensor& fill = context->input(5);
    OP_REQUIRES(context, image.dims() == 3 && image.dim_size(2) == 3,
                absl::InvalidArgumentError("policy: the image must be uint8 [H, W, 3]"));
    const int64_t slots = op.NumElements();
    OP_REQUIRES(context,
                op.dims() == 1 && magnitude.NumElements() == slots &&
                    matrix.NumElements() == 6 * slots && resample.NumElements() == slots &&
                    fill.NumElements() == 3,
                absl::InvalidArgumentError(
                    "policy: op, magnitude, resample [S], matrix [S, 6] and fill [3]"));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, image.shape(), &output));
    const int64_t h = image.dim_size(0), w = image.dim_size(1), size = h * w * 3;
    const auto ops = op.flat<int32_t>();
    const auto magnitudes = magnitude.flat<float>();
    const double* matrices = matrix.flat<double>().data();
    const auto filters = resample.flat<int32_t>();
    const uint8_t* fill_colour = fill.flat<uint8_t>().data();
    uint8_t* result = output->flat<uint8_t>().data();
    // Ping-pong between the output and one scratch image: each op reads one, writes the other.
    std::vector<uint8_t> scratch(slots > 1 ? size : 0);
    const uint8_t* current = image.flat<uint8_t>().data();
    for (int64_t s = 0; s < slots; ++s) {
      uint8_t* target = (slots - 1 - s) % 2 == 0 ? result : scratch.data();
      Image im{h, w, current, target};
      OP_REQUIRES(context,
                  ApplyOp(im, ops(s), magnitudes(s), matrices + 6 * s, filters(s), fill_colour),
                  absl::InvalidArgumentError("policy: an unknown op or resampling filter"));
      current = target;
    }
    if (slots == 0) std::memcpy(result, current, size);
  }
};

}  // namespace

REGISTER_OP("ResnetJaxPolicy")
    .Input("image: uint8")
    .Input("op: int32")
    .Input("magnitude: float")
    .Input("matrix: double")
    .Input("resample: int32")
    .Input("fill: uint8")
    .Output("output: uint8")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("ResnetJaxPolicy").Device(tensorflow::DEVICE_CPU), PolicyOp);
