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
