"""CUDA C++ source of every custom kernel, explicit so it can be checked without a GPU.

Each kernel family is one source string: ``PRELUDE`` (types and thread indexing), then templated
``__device__`` helpers and one ``extern "C" __global__`` entry point per dtype (``..._f16``, ``..._f32``,
``..._f64``). The same text is compiled three ways:

* by NVRTC for the GPU at first use (:mod:`minires.ops.cuda.launch`, through ``cupy.RawModule``);
* by NVRTC in CI, to PTX for compute_75/compute_90 and to sm_75/sm_90 CUBINs, without a GPU (``tests/test_cuda_compile.py``);
* by g++ for the host, through the shim in ``tests/cuda_host.py`` that defines ``blockIdx``/``threadIdx``
  and runs the grid as loops, so the index arithmetic is tested against NumPy on every run.

Rules that keep the host emulation faithful: every kernel is per-element (a grid-stride loop; no
shared memory, no ``__syncthreads``, no atomics), so running the threads one after the other gives
the GPU's result; reductions are CuPy's own. Indices are ``long long`` throughout, so tensors with
more than 2^31 elements index correctly. No CUDA header is included: float16 is a 16-bit struct
converted with the PTX ``cvt`` instructions (what ``cuda_fp16.h`` does), so NVRTC needs no include path.
"""

from __future__ import annotations

# (dtype name, C storage type, C accumulator type, entry-point suffix)
DTYPES: tuple[tuple[str, str, str, str], ...] = (
    ("float16", "minires_half", "float", "f16"),
    ("float32", "float", "float", "f32"),
    ("float64", "double", "double", "f64"),
)

PRELUDE = r"""
// ---- minires prelude: storage types, float16 conversions, grid-stride indexing -------------------
#ifndef MINIRES_DEVICE
#define MINIRES_DEVICE __device__ __forceinline__
#endif

struct minires_half { unsigned short bits; };  // IEEE binary16, as numpy.float16 / CUDA __half

#ifdef MINIRES_HOST_EMULATION
// The host shim (tests/cuda_host.py) supplies these through the compiler's _Float16.
float minires_host_half_to_float(unsigned short bits);
unsigned short minires_host_float_to_half(float value);
MINIRES_DEVICE float minires_half_to_float(minires_half h) { return minires_host_half_to_float(h.bits); }
MINIRES_DEVICE minires_half minires_float_to_half(float f) {
    minires_half h;
    h.bits = minires_host_float_to_half(f);
    return h;
}
#else
MINIRES_DEVICE float minires_half_to_float(minires_half h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h.bits));
    return f;
}
MINIRES_DEVICE minires_half minires_float_to_half(float f) {
    minires_half h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h.bits) : "f"(f));  // round to nearest even
    return h;
}
#endif

// Num<T>: the accumulator type of a storage type and the conversions to and from it.
template <typename T> struct Num;
template <> struct Num<float> {
    typedef float acc;
    static MINIRES_DEVICE float to_acc(float v) { return v; }
    static MINIRES_DEVICE float from_acc(float v) { return v; }
};
template <> struct Num<double> {
    typedef double acc;
    static MINIRES_DEVICE double to_acc(double v) { return v; }
    static MINIRES_DEVICE double from_acc(double v) { return v; }
};
template <> struct Num<minires_half> {
    typedef float acc;
    static MINIRES_DEVICE float to_acc(minires_half v) { return minires_half_to_float(v); }
    static MINIRES_DEVICE minires_half from_acc(float v) { return minires_float_to_half(v); }
};

// Grid-stride loop: thread t of the grid handles elements t, t + stride, t + 2 * stride, ...
MINIRES_DEVICE long long minires_first_index() {
    return (long long)blockIdx.x * (long long)blockDim.x + (long long)threadIdx.x;
}
MINIRES_DEVICE long long minires_grid_stride() { return (long long)blockDim.x * (long long)gridDim.x; }
"""

_CONV_GEOMETRY = r"""
// ---- convolution window geometry (channels-last input (N, H, W, C), columns (N*oH*oW, kH*kW*C)) ----
struct ConvGeometry {
    long long C, H, W, oH, oW, kH, kW, sH, sW, pT, pL, dH, dW;
};

#define MINIRES_GEOMETRY_PARAMS long long C, long long H, long long W, long long oH, long long oW, \
    long long kH, long long kW, long long sH, long long sW, long long pT, long long pL, long long dH, long long dW
#define MINIRES_GEOMETRY {C, H, W, oH, oW, kH, kW, sH, sW, pT, pL, dH, dW}

// Column element i = ((((n * oH + oy) * oW + ox) * kH + ki) * kW + kj) * C + c reads input pixel
// (n, oy*sH - pT + ki*dH, ox*sW - pL + kj*dW, c). Returns its flat NHWC index, or -1 in the padding.
MINIRES_DEVICE long long im2col_source_index(long long i, const ConvGeometry& g) {
    long long t = i;
    const long long c = t % g.C; t /= g.C;
    const long long kj = t % g.kW; t /= g.kW;
    const long long ki = t % g.kH; t /= g.kH;
    const long long ox = t % g.oW; t /= g.oW;
    const long long oy = t % g.oH;
    const long long n = t / g.oH;
    const long long y = oy * g.sH - g.pT + ki * g.dH;
    const long long x = ox * g.sW - g.pL + kj * g.dW;
    if (y < 0 || y >= g.H || x < 0 || x >= g.W) return -1;
    return ((n * g.H + y) * g.W + x) * g.C + c;
}

// The column entry (output pixel (n, oy, ox), kernel offset (ki, kj), channel c): its flat index.
MINIRES_DEVICE long long col2im_column_index(long long n, long long oy, long long ox, long long ki, long long kj,
                                              long long c, const ConvGeometry& g) {
    return ((n * g.oH + oy) * g.oW + ox) * (g.kH * g.kW * g.C) + (ki * g.kW + kj) * g.C + c;
}

// The output position (along one axis) whose window reads input position `pos` at kernel offset k,
// or -1 when no window does: pos + pad - k * dilation must be a non-negative multiple of the stride
// below out * stride.
MINIRES_DEVICE long long window_start(long long pos, long long k, long long pad, long long stride,
                                      long long dilation, long long out) {
    const long long shifted = pos + pad - k * dilation;
    if (shifted < 0 || shifted % stride != 0) return -1;
    const long long o = shifted / stride;
    return o < out ? o : -1;
}
"""

IM2COL = PRELUDE + _CONV_GEOMETRY + r"""
// ---- im2col: one thread per column element (channel innermost: neighbouring threads read neighbouring
// channels of one pixel, coalesced) -------------------------------------------------------------
template <typename T>
MINIRES_DEVICE void im2col_grid(const T* __restrict__ x, T* __restrict__ col, long long total, const ConvGeometry& g) {
    for (long long i = minires_first_index(); i < total; i += minires_grid_stride()) {
        const long long src = im2col_source_index(i, g);
        col[i] = src >= 0 ? x[src] : Num<T>::from_acc(0);
    }
}

#define MINIRES_IM2COL_ENTRY(SUFFIX, T) \
    extern "C" __global__ void minires_im2col_##SUFFIX(const T* x, T* col, long long total, MINIRES_GEOMETRY_PARAMS) { \
        const ConvGeometry g = MINIRES_GEOMETRY; \
        im2col_grid<T>(x, col, total, g); \
    }
MINIRES_IM2COL_ENTRY(f16, minires_half)
MINIRES_IM2COL_ENTRY(f32, float)
MINIRES_IM2COL_ENTRY(f64, double)
"""

COL2IM = PRELUDE + _CONV_GEOMETRY + r"""
// ---- col2im as a gather: one thread per input element (n, y, x, c) sums, in a fixed (ki, kj) order,
// the column entries that read it -> deterministic, no atomics ----------------------------------
template <typename T>
MINIRES_DEVICE void col2im_grid(const T* __restrict__ cols, T* __restrict__ img, long long total, const ConvGeometry& g) {
    typedef typename Num<T>::acc Acc;
    for (long long i = minires_first_index(); i < total; i += minires_grid_stride()) {
        long long t = i;
        const long long c = t % g.C; t /= g.C;
        const long long x = t % g.W; t /= g.W;
        const long long y = t % g.H;
        const long long n = t / g.H;
        Acc sum = 0;
        for (long long ki = 0; ki < g.kH; ++ki) {
            const long long oy = window_start(y, ki, g.pT, g.sH, g.dH, g.oH);
            if (oy < 0) continue;
            for (long long kj = 0; kj < g.kW; ++kj) {
                const long long ox = window_start(x, kj, g.pL, g.sW, g.dW, g.oW);
                if (ox < 0) continue;
                sum += Num<T>::to_acc(cols[col2im_column_index(n, oy, ox, ki, kj, c, g)]);
            }
        }
        img[i] = Num<T>::from_acc(sum);
    }
}

#define MINIRES_COL2IM_ENTRY(SUFFIX, T) \
    extern "C" __global__ void minires_col2im_##SUFFIX(const T* cols, T* img, long long total, MINIRES_GEOMETRY_PARAMS) { \
        const ConvGeometry g = MINIRES_GEOMETRY; \
        col2im_grid<T>(cols, img, total, g); \
    }
MINIRES_COL2IM_ENTRY(f16, minires_half)
MINIRES_COL2IM_ENTRY(f32, float)
MINIRES_COL2IM_ENTRY(f64, double)
"""

BATCH_NORM = PRELUDE + r"""
// ---- BatchNorm elementwise parts on (N, C, *) data in memory order, with channel = (i / inner) % C
// (inner = prod(spatial) for NCHW memory, 1 for channels-last). Per-channel coefficients are in the
// accumulator type (float for float16/float32, double for float64); statistics come from CuPy reductions.
MINIRES_DEVICE long long channel_of(long long i, long long channels, long long inner) { return (i / inner) % channels; }

// y = (x - mean[c]) * scale[c] + bias[c] (+ residual) (then max(., 0) when relu): BN's normalise + affine,
// the residual add and the ReLU of a post-activation block in one pass (scale = weight * invstd).
template <typename T>
MINIRES_DEVICE void bn_forward_grid(const T* __restrict__ x, const T* __restrict__ residual, T* __restrict__ y,
                                    const typename Num<T>::acc* __restrict__ mean, const typename Num<T>::acc* __restrict__ scale,
                                    const typename Num<T>::acc* __restrict__ bias, long long total, long long channels,
                                    long long inner, int has_residual, int relu) {
    typedef typename Num<T>::acc Acc;
    for (long long i = minires_first_index(); i < total; i += minires_grid_stride()) {
        const long long c = channel_of(i, channels, inner);
        Acc v = (Num<T>::to_acc(x[i]) - mean[c]) * scale[c] + bias[c];
        if (has_residual) v += Num<T>::to_acc(residual[i]);
        if (relu && !(v > 0)) v = 0;
        y[i] = Num<T>::from_acc(v);
    }
}

// dx = k[c] * (g - mean_g[c] - (x - mean[c]) * proj[c]): BN's input gradient given the per-channel
// k = weight * invstd, mean_g = sum(g) / M and proj = invstd^2 * sum(g * (x - mean)) / M (training);
// eval mode passes mean_g = proj = 0.
template <typename T>
MINIRES_DEVICE void bn_backward_grid(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ dx,
                                     const typename Num<T>::acc* __restrict__ mean, const typename Num<T>::acc* __restrict__ k,
                                     const typename Num<T>::acc* __restrict__ mean_g, const typename Num<T>::acc* __restrict__ proj,
                                     long long total, long long channels, long long inner) {
    typedef typename Num<T>::acc Acc;
    for (long long i = minires_first_index(); i < total; i += minires_grid_stride()) {
        const long long c = channel_of(i, channels, inner);
        const Acc centred = Num<T>::to_acc(x[i]) - mean[c];
        dx[i] = Num<T>::from_acc(k[c] * (Num<T>::to_acc(g[i]) - mean_g[c] - centred * proj[c]));
    }
}

#define MINIRES_BN_ENTRIES(SUFFIX, T, ACC) \
    extern "C" __global__ void minires_bn_forward_##SUFFIX(const T* x, const T* residual, T* y, const ACC* mean, \
                                                           const ACC* scale, const ACC* bias, long long total, \
                                                           long long channels, long long inner, int has_residual, int relu) { \
        bn_forward_grid<T>(x, residual, y, mean, scale, bias, total, channels, inner, has_residual, relu); \
    } \
    extern "C" __global__ void minires_bn_backward_##SUFFIX(const T* g, const T* x, T* dx, const ACC* mean, const ACC* k, \
                                                            const ACC* mean_g, const ACC* proj, long long total, \
                                                            long long channels, long long inner) { \
        bn_backward_grid<T>(g, x, dx, mean, k, mean_g, proj, total, channels, inner); \
    }
MINIRES_BN_ENTRIES(f16, minires_half, float)
MINIRES_BN_ENTRIES(f32, float, float)
MINIRES_BN_ENTRIES(f64, double, double)
"""

# kernel family -> (source, entry-point prefixes); an entry point is f"{prefix}_{suffix}".
KERNELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "im2col": (IM2COL, ("minires_im2col",)),
    "col2im": (COL2IM, ("minires_col2im",)),
    "batch_norm": (BATCH_NORM, ("minires_bn_forward", "minires_bn_backward")),
}


def suffix_of(dtype_name: str) -> str:
    """The entry-point suffix of a dtype name ("float32" -> "f32"); ValueError for dtypes without kernels."""
    for name, _, _, suffix in DTYPES:
        if name == dtype_name:
            return suffix
    raise ValueError(f"minires CUDA kernels: no kernel for dtype {dtype_name}; expected one of {[d[0] for d in DTYPES]}")


def entry_points(family: str) -> list[str]:
    """Every ``extern "C"`` kernel name a family's source defines (each prefix for each dtype)."""
    _, prefixes = KERNELS[family]
    return [f"{prefix}_{suffix}" for prefix in prefixes for *_, suffix in DTYPES]


__all__ = ["BATCH_NORM", "COL2IM", "DTYPES", "IM2COL", "KERNELS", "PRELUDE", "entry_points", "suffix_of"]
