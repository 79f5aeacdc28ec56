// tbedge preprocessing kernels, compiled at run time with NVRTC (tbedge/runtime/gpu/compile.py).
//
// Every resize (area for shrinking, bilinear otherwise) is the same kernel: the host computes
// per-axis weight tables with OpenCV's formulas (tbedge/runtime/gpu/plan.py) and the kernel applies
// them, so GPU and CPU share one definition of the interpolation. Tables are CSR: destination d
// sums w[k] * src[idx[k]] over k in [start[d], start[d+1]). Horizontal pass first, float32
// accumulation, as OpenCV's resizeArea_/HResizeLinear do.
//
// No headers: NVRTC compiles this without the CUDA toolkit's include directory.

typedef unsigned char u8;
typedef unsigned short u16;

template <typename T>
__device__ __forceinline__ void resize_tables(
    const T* __restrict__ src, long long pitch,       // pitch in elements
    int x0, int y0,                                   // crop origin in the source
    const int* __restrict__ xs, const int* __restrict__ xi, const float* __restrict__ xw,
    const int* __restrict__ ys, const int* __restrict__ yi, const float* __restrict__ yw,
    float* __restrict__ dst, int dw, int dh, float scale, float offset)
{
    const int dx = blockIdx.x * blockDim.x + threadIdx.x;
    const int dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= dw || dy >= dh) return;
    const int kx0 = xs[dx], kx1 = xs[dx + 1];
    const int ky0 = ys[dy], ky1 = ys[dy + 1];
    float acc = 0.f;
    for (int ky = ky0; ky < ky1; ++ky) {
        const T* row = src + (long long)(y0 + yi[ky]) * pitch + x0;
        float h = 0.f;
        for (int kx = kx0; kx < kx1; ++kx) {
            h += (float)row[xi[kx]] * xw[kx];
        }
        acc += h * yw[ky];
    }
    // Scaling after the sum (not per sample) keeps integer inputs exact until the last step.
    dst[(long long)dy * dw + dx] = acc * scale + offset;
}

#define TBEDGE_RESIZE(NAME, T)                                                                  \
extern "C" __global__ void NAME(                                                               \
    const T* __restrict__ src, long long pitch, int x0, int y0,                                \
    const int* __restrict__ xs, const int* __restrict__ xi, const float* __restrict__ xw,      \
    const int* __restrict__ ys, const int* __restrict__ yi, const float* __restrict__ yw,      \
    float* __restrict__ dst, int dw, int dh, float scale, float offset)                        \
{                                                                                              \
    resize_tables<T>(src, pitch, x0, y0, xs, xi, xw, ys, yi, yw, dst, dw, dh, scale, offset);  \
}

TBEDGE_RESIZE(tbedge_resize_u8, u8)
TBEDGE_RESIZE(tbedge_resize_u16, u16)
TBEDGE_RESIZE(tbedge_resize_f32, float)

// Mask threshold: heat >= thr -> 1 else 0 (uint8), as lungs.threshold. Grid-stride loop.
extern "C" __global__ void tbedge_threshold(const float* __restrict__ heat, u8* __restrict__ mask,
                                            long long n, float thr)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        mask[i] = heat[i] >= thr ? (u8)1 : (u8)0;
    }
}

// -- lung-masked classifier input (lungs.classifier_input; tables and numpy reference: masked.py) ----

// The cleaned mask (model grid, uint8 0/1) on the crop grid: bilinear with a zero border, >= 0.5
// (lungs.mask_in_crop's warpAffine). Source positions (first index, fraction) come per axis from the
// host, rounded the way that host's OpenCV rounds them; the blend is OpenCV's v0 + a (v1 - v0), fused.
extern "C" __global__ void tbedge_mask_warp(
    const u8* __restrict__ mask, int mw, int mh,
    const int* __restrict__ xi, const float* __restrict__ xa,
    const int* __restrict__ yi, const float* __restrict__ ya,
    u8* __restrict__ out, int dw, int dh)
{
    const int dx = blockIdx.x * blockDim.x + threadIdx.x;
    const int dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= dw || dy >= dh) return;
    const int x = xi[dx], y = yi[dy];
    float p[4];
    for (int k = 0; k < 4; ++k) {
        const int sx = x + (k & 1), sy = y + (k >> 1);
        const bool in = sx >= 0 && sx < mw && sy >= 0 && sy < mh;
        p[k] = in ? (float)mask[(long long)sy * mw + sx] : 0.f;
    }
    const float a = xa[dx], b = ya[dy];
    const float v0 = __fmaf_rn(a, __fsub_rn(p[1], p[0]), p[0]);
    const float v1 = __fmaf_rn(a, __fsub_rn(p[3], p[2]), p[2]);
    const float v = __fmaf_rn(b, __fsub_rn(v1, v0), v0);
    out[(long long)dy * dw + dx] = v >= 0.5f ? (u8)1 : (u8)0;
}

// Binary dilation by cv2's MORPH_ELLIPSE element: 1 where any in-image pixel of the element is 1
// (pixels outside the image never count, as cv2.dilate's default border). half[r + j] is the
// element's half-width on row j (-1: empty row).
extern "C" __global__ void tbedge_dilate(const u8* __restrict__ src, u8* __restrict__ dst, int w, int h,
                                         const int* __restrict__ half, int r)
{
    const int dx = blockIdx.x * blockDim.x + threadIdx.x;
    const int dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= w || dy >= h) return;
    u8 on = 0;
    for (int j = -r; j <= r && !on; ++j) {
        const int y = dy + j, hw = half[j + r];
        if (y < 0 || y >= h || hw < 0) continue;
        const u8* row = src + (long long)y * w;
        const int x0 = max(dx - hw, 0), x1 = min(dx + hw, w - 1);
        for (int x = x0; x <= x1; ++x) {
            if (row[x]) { on = 1; break; }
        }
    }
    dst[(long long)dy * w + dx] = on;
}

// Lung pixels: clipped weight >= 0.5, i.e. raw weight >= 0.5.
__device__ __forceinline__ bool tbedge_inside(float wraw) { return wraw >= 0.5f; }

// Block-wide count of lung pixels (blockDim.x a power of two, <= 1024).
__device__ int tbedge_count_inside(const float* __restrict__ wraw, int n)
{
    __shared__ int part[1024];
    int c = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) c += tbedge_inside(wraw[i]) ? 1 : 0;
    part[threadIdx.x] = c;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    const int total = part[0];
    __syncthreads();  // part is reused by the next call
    return total;
}

// lungs.equalize: each pixel becomes (lung pixels <= it) / (lung pixels). Lung pixels: weight >= 0.5;
// every pixel when none is, or when all_inside (a fallback box). One block per crop: the lung values
// go to scratch (n2 >= n, a power of two; the rest +inf) and are sorted there by a bitonic sort in
// global memory (__syncthreads orders global writes within the block), then each pixel's count is a
// binary search (upper bound). The division is in double, as numpy's, then rounded to float.
extern "C" __global__ void __launch_bounds__(1024) tbedge_equalize(const float* __restrict__ crop, const float* __restrict__ wraw,
                                           int all_inside, float* __restrict__ scratch, float* __restrict__ out,
                                           int n, int n2)
{
    const int count = all_inside ? 0 : tbedge_count_inside(wraw, n);
    const bool every = all_inside || count == 0;
    const int m = every ? n : count;
    const float inf = __int_as_float(0x7f800000);
    for (int i = threadIdx.x; i < n2; i += blockDim.x) {
        scratch[i] = (i < n && (every || tbedge_inside(wraw[i]))) ? crop[i] : inf;
    }
    __syncthreads();
    for (int k = 2; k <= n2; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < n2; i += blockDim.x) {
                const int l = i ^ j;
                if (l > i) {
                    const float a = scratch[i], b = scratch[l];
                    const bool up = (i & k) == 0;
                    if ((a > b) == up) { scratch[i] = b; scratch[l] = a; }
                }
            }
            __syncthreads();
        }
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = crop[i];
        int lo = 0, hi = m;
        while (lo < hi) {
            const int mid = (lo + hi) >> 1;
            if (scratch[mid] <= v) lo = mid + 1; else hi = mid;
        }
        out[i] = (float)((double)lo / (double)m);
    }
}

// lungs.apply_mask + stack_input: out[2i] = crop w + fill (1 - w), out[2i + 1] = w, with w the weight
// clipped to [0, 1] (1 everywhere for a fallback box) and fill the crop's mean over the lung pixels
// (the whole crop when there are none), summed in double. Also writes w to wout (the host's copy, for
// overlays). One block per crop; blockDim.x a power of two, <= 1024 (__launch_bounds__ keeps the
// registers within what a 1024-thread block may use, so the launch cannot fail on resources).
extern "C" __global__ void __launch_bounds__(1024) tbedge_mask_blend(const float* __restrict__ crop, const float* __restrict__ wraw,
                                             int all_inside, float* __restrict__ out, float* __restrict__ wout,
                                             int n)
{
    __shared__ double s_in[1024], s_all[1024];
    __shared__ int c_in[1024];
    double a = 0.0, b = 0.0;
    int c = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = crop[i];
        b += (double)v;
        if (all_inside || tbedge_inside(wraw[i])) { a += (double)v; ++c; }
    }
    s_in[threadIdx.x] = a; s_all[threadIdx.x] = b; c_in[threadIdx.x] = c;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            s_in[threadIdx.x] += s_in[threadIdx.x + s];
            s_all[threadIdx.x] += s_all[threadIdx.x + s];
            c_in[threadIdx.x] += c_in[threadIdx.x + s];
        }
        __syncthreads();
    }
    const float fill = (float)(c_in[0] ? s_in[0] / (double)c_in[0] : s_all[0] / (double)n);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float w = all_inside ? 1.f : fminf(fmaxf(wraw[i], 0.f), 1.f);
        out[2 * i] = __fadd_rn(__fmul_rn(crop[i], w), __fmul_rn(fill, __fsub_rn(1.f, w)));
        out[2 * i + 1] = w;
        wout[i] = w;
    }
}
