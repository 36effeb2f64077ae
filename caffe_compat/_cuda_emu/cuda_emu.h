// cuda_emu.h -- just enough of CUDA C for caffe_compat's kernels to build with g++ and run on the
// CPU (tests and tools only; a real GPU run goes through cupy.RawModule).
//
// A launch runs every (block, thread) of the grid serially, in order (see emu_run below).  That is
// a faithful emulation only for kernels in which each thread writes the elements it owns and reads
// nothing another thread writes, which is the rule of every kernel in caffe_compat/kernels (see
// common.cuh).  Serial execution would hide races, so the features that could have them are NOT
// provided: using __shared__, __syncthreads or a warp intrinsic in a kernel is a compile error
// here (and the kernels' race review comments say why they do not need them).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ cuda_emu_has_no_shared_memory
#define __syncthreads() cuda_emu_has_no_syncthreads()
#define __shfl_sync(...) cuda_emu_has_no_warp_intrinsics()
#define __shfl_down_sync(...) cuda_emu_has_no_warp_intrinsics()
#define __ballot_sync(...) cuda_emu_has_no_warp_intrinsics()

// Correctly rounded arithmetic (the .cu files use them to forbid FMA contraction; the launcher is
// built with -ffp-contract=off so these are plain IEEE operations).
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
// <cmath> provides exp, expf, fabs, fabsf, fmax, fmaxf and trunc in the global namespace.

// ---- launcher ----------------------------------------------------------------------------------
// Argument codes reported to Python so that every launch checks its argument types against the
// kernel's real signature (a mismatch would also be a bug on a GPU, where cupy passes raw bytes).
template <typename T> struct emu_code { static constexpr int value = -1; };
template <> struct emu_code<int> { static constexpr int value = 1; };
template <> struct emu_code<long long> { static constexpr int value = 2; };
template <> struct emu_code<float> { static constexpr int value = 3; };
template <> struct emu_code<double> { static constexpr int value = 4; };
template <> struct emu_code<float*> { static constexpr int value = 13; };
template <> struct emu_code<double*> { static constexpr int value = 14; };
template <> struct emu_code<const float*> { static constexpr int value = 13; };
template <> struct emu_code<const double*> { static constexpr int value = 14; };

template <typename... A, std::size_t... I>
static void emu_call(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

// dims = {grid.x, grid.y, grid.z, block.x, block.y, block.z}
template <typename... A>
static void emu_run(void (*f)(A...), const unsigned int* dims, void** args) {
    gridDim = dim3(dims[0], dims[1], dims[2]);
    blockDim = dim3(dims[3], dims[4], dims[5]);
    for (unsigned int bz = 0; bz < gridDim.z; ++bz)
        for (unsigned int by = 0; by < gridDim.y; ++by)
            for (unsigned int bx = 0; bx < gridDim.x; ++bx)
                for (unsigned int tz = 0; tz < blockDim.z; ++tz)
                    for (unsigned int ty = 0; ty < blockDim.y; ++ty)
                        for (unsigned int tx = 0; tx < blockDim.x; ++tx) {
                            blockIdx = uint3{bx, by, bz};
                            threadIdx = uint3{tx, ty, tz};
                            emu_call(f, args, std::index_sequence_for<A...>{});
                        }
}

// Writes the argument codes of f into out (at most cap of them); returns the argument count.
template <typename... A>
static int emu_signature(void (*)(A...), int* out, int cap) {
    const int codes[] = {emu_code<std::remove_cv_t<A>>::value..., 0};
    const int n = (int)sizeof...(A);
    for (int i = 0; i < n && i < cap; ++i) out[i] = codes[i];
    return n;
}
