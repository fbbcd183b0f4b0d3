// SPDX-License-Identifier: Apache-2.0
// oneDNN's convolutions (forward, input gradient, kernel gradient; grouped or not) as XLA FFI
// custom calls for the CPU. Built and loaded by resnet_jax/cpu/onednn.py, which documents why and
// when each is used.
//
// Tensors keep XLA's layouts: activations NHWC, kernels HWIO (a grouped kernel [KH, KW, C/G, O],
// its outputs group-major), float32. The kernel alone is
// reordered into the blocked layout oneDNN's AVX-512/AVX2 direct convolutions want
// (format_tag::any): with a plain HWIO kernel oneDNN falls back to im2col + sgemm, no faster than
// XLA's own. Activations stay NHWC, which those kernels read and write directly.
//
// Written for the oneDNN 2.x and 3.x C++ APIs (their primitive-descriptor constructors differ):
// run with 2.6 (Debian 12), compile-checked against 3.13's headers.

#include <cstdint>
#include <exception>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using dnnl::memory;
using Dims = std::vector<int64_t>;
using Span = ffi::Span<const int64_t>;

enum Kind : int64_t { kForward, kInputGradient, kKernelGradient };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// The three tensors as XLA lays them out (oneDNN's logical dimension order is N, C, H, W for
// activations, O, I, H, W for a kernel and G, O/G, I/G, H, W for a grouped one), strides and
// padding.
struct Problem {
  memory::desc src, weights, dst;
  memory::dims strides, pad_lo, pad_hi;
};

// XLA's HWIO kernel [KH, KW, I/G, O] read as oneDNN's grouped (G, O/G, I/G, KH, KW): output
// channel o of group g is column g * O/G + o.
memory::desc GroupedHwio(const Dims& w, int64_t groups) {
  const int64_t kh = w[0], kw = w[1], in = w[2], out = w[3], per_group = out / groups;
  return memory::desc({groups, per_group, in, kh, kw}, memory::data_type::f32,
                      {per_group, 1, out, kw * in * out, in * out});
}

Problem MakeProblem(const Dims& x, const Dims& w, const Dims& y, Span strides, Span padding,
                    int64_t groups) {
  const auto f32 = memory::data_type::f32;
  memory::desc weights = groups == 1
                             ? memory::desc({w[3], w[2], w[0], w[1]}, f32, memory::format_tag::hwio)
                             : GroupedHwio(w, groups);
  return Problem{memory::desc({x[0], x[3], x[1], x[2]}, f32, memory::format_tag::nhwc),
                 weights,
                 memory::desc({y[0], y[3], y[1], y[2]}, f32, memory::format_tag::nhwc),
                 {strides[0], strides[1]},
                 {padding[0], padding[2]},
                 {padding[1], padding[3]}};
}

memory::desc AnyLayout(const memory::desc& d) {
#if DNNL_VERSION_MAJOR >= 3
  return memory::desc(d.get_dims(), d.get_data_type(), memory::format_tag::any);
#else
  return memory::desc(d.dims(), d.data_type(), memory::format_tag::any);
#endif
}

// The caller provides the scratchpad, so primitives may run concurrently (XLA runs the programs
// of several devices at once); oneDNN's library-managed scratchpad is shared between primitives.
dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

constexpr auto kDirect = dnnl::algorithm::convolution_direct;

// The forward primitive descriptor: run for grouped convolutions, and the hint the gradient ones
// take.
dnnl::convolution_forward::primitive_desc ForwardPd(const Problem& p) {
#if DNNL_VERSION_MAJOR >= 3
  return {Engine(), dnnl::prop_kind::forward_training, kDirect, p.src, AnyLayout(p.weights),
          p.dst, p.strides, p.pad_lo, p.pad_hi, UserScratchpad()};
#else
  dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_training, kDirect, p.src,
                                    AnyLayout(p.weights), p.dst, p.strides, p.pad_lo, p.pad_hi);
  return {d, UserScratchpad(), Engine()};
#endif
}

// The primitive descriptor of a gradient convolution: Primitive is convolution_backward_data or
// convolution_backward_weights, whose descriptors take the same arguments.
template <typename Primitive>
typename Primitive::primitive_desc GradientPd(const Problem& p) {
#if DNNL_VERSION_MAJOR >= 3
  return {Engine(), kDirect, p.src, AnyLayout(p.weights), p.dst, p.strides, p.pad_lo, p.pad_hi,
          ForwardPd(p), UserScratchpad()};
#else
  typename Primitive::desc d(kDirect, p.src, AnyLayout(p.weights), p.dst, p.strides, p.pad_lo,
                             p.pad_hi);
  return {d, UserScratchpad(), Engine(), ForwardPd(p)};
#endif
}

// A primitive with the kernel layout it chose and its scratchpad size.
struct Compiled {
  dnnl::primitive primitive;
  memory::desc weights, scratchpad;
};

// Creating a primitive descriptor searches oneDNN's implementations (tens of microseconds), so
// each problem is compiled once per process.
Compiled Lookup(Kind kind, const Dims& x, const Dims& w, const Dims& y, Span strides,
                Span padding, int64_t groups, const Problem& p) {
  static std::mutex mutex;
  static std::map<Dims, Compiled> cache;
  Dims key{kind};
  for (const Dims* d : {&x, &w, &y}) key.insert(key.end(), d->begin(), d->end());
  key.insert(key.end(), strides.begin(), strides.end());
  key.insert(key.end(), padding.begin(), padding.end());
  key.push_back(groups);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  Compiled c;
  if (kind == kForward) {
    auto pd = ForwardPd(p);
    c = {dnnl::convolution_forward(pd), pd.weights_desc(), pd.scratchpad_desc()};
  } else if (kind == kInputGradient) {
    auto pd = GradientPd<dnnl::convolution_backward_data>(p);
    c = {dnnl::convolution_backward_data(pd), pd.weights_desc(), pd.scratchpad_desc()};
  } else {
    auto pd = GradientPd<dnnl::convolution_backward_weights>(p);
    c = {dnnl::convolution_backward_weights(pd), pd.diff_weights_desc(), pd.scratchpad_desc()};
  }
  cache.emplace(key, c);
  return c;
}

// Per-thread, 64-byte aligned, grown as needed and kept: slot 0 the scratchpad, 1 the kernel.
void* Buffer(int slot, size_t bytes) {
  thread_local std::vector<char> buffers[2];
  std::vector<char>& b = buffers[slot];
  if (b.size() < bytes + 64) b.resize(bytes + 64);
  return b.data() + (64 - reinterpret_cast<uintptr_t>(b.data()) % 64) % 64;
}

// Runs one convolution. `a` and `b` are the two operands, `out` the result, in the order of the
// kind: forward (x, w) -> y; input gradient (dy, w) -> dx; kernel gradient (x, dy) -> dw.
ffi::Error Run(Kind kind, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
               ffi::ResultBuffer<ffi::F32> out, Span strides, Span padding, int64_t groups) {
  try {
    Dims da(a.dimensions().begin(), a.dimensions().end());
    Dims db(b.dimensions().begin(), b.dimensions().end());
    Dims dout(out->dimensions().begin(), out->dimensions().end());
    const Dims& x = kind == kInputGradient ? dout : da;
    const Dims& w = kind == kKernelGradient ? dout : db;
    const Dims& y = kind == kForward ? dout : kind == kInputGradient ? da : db;
    if (x.size() != 4 || w.size() != 4 || y.size() != 4 || strides.size() != 2 ||
        padding.size() != 4 || groups < 1 || w[3] % groups != 0 || x[3] != w[2] * groups) {
      return ffi::Error::InvalidArgument(
          "onednn_conv: expects 4-d tensors, 2 strides, 4 pads, channels divisible by groups");
    }
    Problem p = MakeProblem(x, w, y, strides, padding, groups);
    Compiled c = Lookup(kind, x, w, y, strides, padding, groups, p);
    dnnl::stream stream(Engine());
    float* kernel = kind == kKernelGradient ? out->typed_data() : b.typed_data();
    memory user_kernel(p.weights, Engine(), kernel);
    memory kernel_mem = user_kernel;
    if (c.weights != p.weights) {
      kernel_mem = memory(c.weights, Engine(), Buffer(1, c.weights.get_size()));
      if (kind != kKernelGradient) {
        dnnl::reorder(user_kernel, kernel_mem).execute(stream, user_kernel, kernel_mem);
      }
    }
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SCRATCHPAD, memory(c.scratchpad, Engine(), Buffer(0, c.scratchpad.get_size()))}};
    if (kind == kForward) {
      args.emplace(DNNL_ARG_SRC, memory(p.src, Engine(), a.typed_data()));
      args.emplace(DNNL_ARG_WEIGHTS, kernel_mem);
      args.emplace(DNNL_ARG_DST, memory(p.dst, Engine(), out->typed_data()));
    } else if (kind == kInputGradient) {
      args.emplace(DNNL_ARG_DIFF_DST, memory(p.dst, Engine(), a.typed_data()));
      args.emplace(DNNL_ARG_WEIGHTS, kernel_mem);
      args.emplace(DNNL_ARG_DIFF_SRC, memory(p.src, Engine(), out->typed_data()));
    } else {
      args.emplace(DNNL_ARG_SRC, memory(p.src, Engine(), a.typed_data()));
      args.emplace(DNNL_ARG_DIFF_DST, memory(p.dst, Engine(), b.typed_data()));
      args.emplace(DNNL_ARG_DIFF_WEIGHTS, kernel_mem);
    }
    c.primitive.execute(stream, args);
    if (kind == kKernelGradient && c.weights != p.weights) {
      dnnl::reorder(kernel_mem, user_kernel).execute(stream, kernel_mem, user_kernel);
    }
    stream.wait();
    return ffi::Error::Success();
  } catch (const std::exception& e) {  // dnnl::error, std::bad_alloc: an XLA error, not a crash
    return ffi::Error::Internal(std::string("onednn_conv: ") + e.what());
  }
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                   Span strides, Span padding, int64_t groups) {
  return Run(kForward, x, w, y, strides, padding, groups);
}

ffi::Error InputGradient(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> dx, Span strides, Span padding,
                         int64_t groups) {
  return Run(kInputGradient, dy, w, dx, strides, padding, groups);
}

ffi::Error KernelGradient(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, Span strides, Span padding,
                          int64_t groups) {
  return Run(kKernelGradient, x, dy, dw, strides, padding, groups);
}

}  // namespace

#define RESNET_JAX_CONV_HANDLER(name, fn)                                 \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, fn,                                 \
                                ffi::Ffi::Bind()                          \
                                    .Arg<ffi::Buffer<ffi::F32>>()         \
                                    .Arg<ffi::Buffer<ffi::F32>>()         \
                                    .Ret<ffi::Buffer<ffi::F32>>()         \
                                    .Attr<Span>("strides")                \
                                    .Attr<Span>("padding")                \
                                    .Attr<int64_t>("groups"));

RESNET_JAX_CONV_HANDLER(ResnetJaxOnednnConvForward, Forward)
RESNET_JAX_CONV_HANDLER(ResnetJaxOnednnConvInputGradient, InputGradient)
RESNET_JAX_CONV_HANDLER(ResnetJaxOnednnConvKernelGradient, KernelGradient)
