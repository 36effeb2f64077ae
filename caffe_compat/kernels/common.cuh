// common.cuh -- prepended to every kernel source by caffe_compat.cuda.kernel_source().
//
// One source, two dtypes: kernel_source() appends each kernel file once per dtype, between
// `#define scalar_t float` / `#define KNAME(name) name##_f32` (or double / _f64) and the matching
// #undefs, so one translation unit may hold both instantiations.  Helpers used with scalar_t are
// therefore overloaded for float and double here.  No host headers are included: NVRTC
// (cupy.RawModule) has none, and the CPU emulator (caffe_compat/_cuda_emu) supplies its own
// definitions of the CUDA built-ins used here.
//
// Rules every kernel follows (they keep the CPU emulation faithful to a real GPU run):
//  * grid-stride loops over a flat index: any grid/block size gives the same result;
//  * every thread writes only the output elements it owns (gather formulation: backward passes
//    collect their contributions instead of scattering them), so no atomics, no shared memory,
//    no __syncthreads and no warp intrinsics are needed, and the result does not depend on the
//    order in which threads run;
//  * arithmetic that must match the torch path bit for bit uses the explicitly rounded
//    intrinsics below, so nvcc cannot contract a*b+c into an FMA.
typedef long long index_t;

__device__ __forceinline__ float cc_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double cc_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float cc_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double cc_sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float cc_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double cc_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float cc_abs(float a) { return fabsf(a); }
__device__ __forceinline__ double cc_abs(double a) { return fabs(a); }
__device__ __forceinline__ float cc_exp(float a) { return expf(a); }
__device__ __forceinline__ double cc_exp(double a) { return exp(a); }
__device__ __forceinline__ float cc_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double cc_max(double a, double b) { return fmax(a, b); }
// sign with sign(0) = 0 (the fork's GPU rule for the L1 gradient)
__device__ __forceinline__ float cc_sign(float a) { return a > 0.f ? 1.f : (a < 0.f ? -1.f : 0.f); }
__device__ __forceinline__ double cc_sign(double a) { return a > 0.0 ? 1.0 : (a < 0.0 ? -1.0 : 0.0); }

// Flat grid-stride loop over [0, n).
#define CC_LOOP(i, n)                                                                      \
    for (index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x; i < (index_t)(n);     \
         i += (index_t)blockDim.x * gridDim.x)

// Window geometry: kernel (kh, kw), stride (sh, sw), pad (ph, pw), dilation (dh, dw).
// Tap (i, j) of output (y, x) reads image pixel (y*sh - ph + i*dh, x*sw - pw + j*dw); the
// centre is tap (kh/2, kw/2).
#define CC_WINDOW_PARAMS int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw

// The output index o (in [0, n_out)) whose tap at image offset `off` (= -pad + i*dil) reads
// image index q, i.e. o*stride + off == q; -1 when there is none.
static __device__ __forceinline__ int cc_source_index(int q, int off, int stride, int n_out) {
    int t = q - off;
    if (t < 0 || t % stride != 0) return -1;
    int o = t / stride;
    return o < n_out ? o : -1;
}
