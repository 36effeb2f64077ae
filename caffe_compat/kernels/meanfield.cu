// Softmax over axis 1 of an (N, C, S) tensor, forward and backward: the normalisation step of the
// mean-field update (NormConvMeanfield's ChannelSoftmax, P = softmax_c(Q)) and the tap softmax of
// NormConv's mask (A = softmax_k(Z)).  The rest of a mean-field iteration is the depthwise masked
// shift-sum (masked_shift_sum.cu) and three C x C matrix products (cuBLAS through torch).
//
// Caffe's rule: y = exp(x - max_c x) / sum_c exp(x - max_c x); dx = y * (dy - sum_c dy * y).
// Sums run over c in increasing order.
//
// Race review: one thread per (n, s) column owns the C entries of that column (it reads them and
// writes them, nobody else touches them); no atomics, no shared memory.
extern "C" __global__ void KNAME(softmax_axis1_fwd)(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int N, int C, index_t S) {
    const index_t total = (index_t)N * S;
    CC_LOOP(idx, total) {
        const index_t s = idx % S, n = idx / S;
        const scalar_t* xc = x + n * C * S + s;
        scalar_t* yc = y + n * C * S + s;
        scalar_t mx = xc[0];
        for (int c = 1; c < C; ++c) mx = cc_max(mx, xc[c * S]);
        scalar_t sum = scalar_t(0);
        for (int c = 0; c < C; ++c) {
            const scalar_t e = cc_exp(cc_sub(xc[c * S], mx));
            yc[c * S] = e;
            sum = cc_add(sum, e);
        }
        for (int c = 0; c < C; ++c) yc[c * S] = yc[c * S] / sum;
    }
}

extern "C" __global__ void KNAME(softmax_axis1_bwd)(
    const scalar_t* __restrict__ y, const scalar_t* __restrict__ gy, scalar_t* __restrict__ gx,
    int N, int C, index_t S) {
    const index_t total = (index_t)N * S;
    CC_LOOP(idx, total) {
        const index_t s = idx % S, n = idx / S;
        const index_t base = n * C * S + s;
        scalar_t dot = scalar_t(0);
        for (int c = 0; c < C; ++c) dot = cc_add(dot, cc_mul(gy[base + c * S], y[base + c * S]));
        for (int c = 0; c < C; ++c) gx[base + c * S] = cc_mul(y[base + c * S], cc_sub(gy[base + c * S], dot));
    }
}
