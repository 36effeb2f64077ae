// The masked shift-sum: the part of a masked (segmentation-aware / normalised) convolution that
// no library does.  With per-tap responses Z and a per-position tap mask A,
//
//     y[n, o, p] = sum_k A[n, k, p] * Z[n, o, k, q(p, k)]      (0 where q(p, k) is outside)
//
// where q(p, k) is the image pixel read by tap k of output p (stride, pad, dilation).  The
// channel mixing stays in cuBLAS (torch matmul) around these kernels:
//   * weighted (NormConv):  Z[n, o, k, :] = sum_c W[o, c, k] x[n, c, :]   (one GEMM), then y;
//   * depthwise, unit weights (the CRF's NormConvMeanfield): Z[n, c, k, :] = x[n, c, :], passed
//     with a tap stride of 0 (no copy).
// Z is addressed through strides (zn, zo, zk) over a contiguous H*W plane.
//
// Layouts: A (N, K, Ho, Wo), y and gy (N, O, Ho, Wo), gZ like Z (N, O, K, H, W) contiguous,
// gx (N, O, H, W) for the depthwise backward.
//
// Race review: every kernel gives each thread one output element and gathers over taps or
// channels; a pixel q is read by at most one output p per tap (p = (q - offset) / stride when
// that divides), so the backward gathers need no atomics.  No shared memory.

// One thread per y[n, o, p]: sum over taps k in increasing order (the torch path's order).
extern "C" __global__ void KNAME(mss_fwd)(
    const scalar_t* __restrict__ A, const scalar_t* __restrict__ Z, scalar_t* __restrict__ y,
    int N, int O, int H, int W, int Ho, int Wo, CC_WINDOW_PARAMS, index_t zn, index_t zo, index_t zk) {
    const int K = kh * kw;
    const index_t oplane = (index_t)Ho * Wo;
    const index_t total = (index_t)N * O * oplane;
    CC_LOOP(idx, total) {
        const int px = (int)(idx % Wo);
        const int py = (int)((idx / Wo) % Ho);
        const int o = (int)((idx / oplane) % O);
        const int n = (int)(idx / (oplane * O));
        const scalar_t* a = A + (index_t)n * K * oplane + (index_t)py * Wo + px;
        const scalar_t* z = Z + n * zn + o * zo;
        scalar_t acc = scalar_t(0);
        for (int k = 0; k < K; ++k) {
            const int qy = py * sh - ph + (k / kw) * dh, qx = px * sw - pw + (k % kw) * dw;
            if (qy < 0 || qy >= H || qx < 0 || qx >= W) continue;
            acc = cc_add(acc, cc_mul(a[k * oplane], z[k * zk + (index_t)qy * W + qx]));
        }
        y[idx] = acc;
    }
}

// One thread per gA[n, k, p] = sum_o gy[n, o, p] * Z[n, o, k, q(p, k)] (0 where q is outside).
extern "C" __global__ void KNAME(mss_bwd_mask)(
    const scalar_t* __restrict__ gy, const scalar_t* __restrict__ Z, scalar_t* __restrict__ gA,
    int N, int O, int H, int W, int Ho, int Wo, CC_WINDOW_PARAMS, index_t zn, index_t zo, index_t zk) {
    const int K = kh * kw;
    const index_t oplane = (index_t)Ho * Wo;
    const index_t total = (index_t)N * K * oplane;
    CC_LOOP(idx, total) {
        const int px = (int)(idx % Wo);
        const int py = (int)((idx / Wo) % Ho);
        const int k = (int)((idx / oplane) % K);
        const int n = (int)(idx / (oplane * K));
        const int qy = py * sh - ph + (k / kw) * dh, qx = px * sw - pw + (k % kw) * dw;
        scalar_t acc = scalar_t(0);
        if (qy >= 0 && qy < H && qx >= 0 && qx < W) {
            const scalar_t* g = gy + (index_t)n * O * oplane + (index_t)py * Wo + px;
            const scalar_t* z = Z + n * zn + k * zk + (index_t)qy * W + qx;
            for (int o = 0; o < O; ++o) acc = cc_add(acc, cc_mul(g[o * oplane], z[o * zo]));
        }
        gA[idx] = acc;
    }
}

// One thread per gZ[n, o, k, q] = A[n, k, p] * gy[n, o, p] with p the output whose tap k reads q
// (0 if none): the gradient of the per-tap responses of the weighted case.
extern "C" __global__ void KNAME(mss_bwd_taps)(
    const scalar_t* __restrict__ gy, const scalar_t* __restrict__ A, scalar_t* __restrict__ gZ,
    int N, int O, int H, int W, int Ho, int Wo, CC_WINDOW_PARAMS) {
    const int K = kh * kw;
    const index_t plane = (index_t)H * W, oplane = (index_t)Ho * Wo;
    const index_t total = (index_t)N * O * K * plane;
    CC_LOOP(idx, total) {
        const int qx = (int)(idx % W);
        const int qy = (int)((idx / W) % H);
        const int k = (int)((idx / plane) % K);
        const index_t no = idx / (plane * K);               // n * O + o
        const int n = (int)(no / O);
        const int py = cc_source_index(qy, -ph + (k / kw) * dh, sh, Ho);
        const int px = cc_source_index(qx, -pw + (k % kw) * dw, sw, Wo);
        scalar_t v = scalar_t(0);
        if (py >= 0 && px >= 0) {
            const index_t p = (index_t)py * Wo + px;
            v = cc_mul(A[((index_t)n * K + k) * oplane + p], gy[no * oplane + p]);
        }
        gZ[idx] = v;
    }
}

// One thread per gx[n, c, q] = sum_k A[n, k, p_k] * gy[n, c, p_k] over the taps k that read q
// from some output p_k: the depthwise (unit weight) backward, taps summed in increasing order.
extern "C" __global__ void KNAME(mss_bwd_depthwise)(
    const scalar_t* __restrict__ gy, const scalar_t* __restrict__ A, scalar_t* __restrict__ gx,
    int N, int C, int H, int W, int Ho, int Wo, CC_WINDOW_PARAMS) {
    const int K = kh * kw;
    const index_t plane = (index_t)H * W, oplane = (index_t)Ho * Wo;
    const index_t total = (index_t)N * C * plane;
    CC_LOOP(idx, total) {
        const int qx = (int)(idx % W);
        const int qy = (int)((idx / W) % H);
        const index_t nc = idx / plane;                     // n * C + c
        const int n = (int)(nc / C);
        scalar_t acc = scalar_t(0);
        for (int k = 0; k < K; ++k) {
            const int py = cc_source_index(qy, -ph + (k / kw) * dh, sh, Ho);
            const int px = cc_source_index(qx, -pw + (k % kw) * dw, sw, Wo);
            if (py < 0 || px < 0) continue;
            const index_t p = (index_t)py * Wo + px;
            acc = cc_add(acc, cc_mul(A[((index_t)n * K + k) * oplane + p], gy[nc * oplane + p]));
        }
        gx[idx] = acc;
    }
}
