// Window distances (the fork's Im2dist; also the distances of NormConv / NormConvMeanfield).
//
// Layouts (contiguous, NCHW): emb (N, E, H, W); D and gD (N, K, Ho, Wo) with K = kh*kw,
// tap k = i*kw + j.  Semantics: caffe_compat/ops/norm_conv.py (window_distances and
// window_distances_backward), which are the torch reference these kernels are tested against.
//
// Race review: window_dist_fwd gives each thread one D entry; window_dist_bwd gives each thread
// one gemb entry and *gathers* the contributions of every window that reads that pixel as a
// centre or as a neighbour (the torch path scatters them).  Every global write therefore has
// exactly one writer; inputs are read-only.  No atomics, no shared memory.

// One thread per D[n, k, y, x].  L2 = 0.5 * sum_e d^2 ("half squared"), L1 = sum_e |d|, with
// d = emb[centre] - emb[neighbour] summed in increasing e from 0 (the fork's order: the float32
// result is bit-identical to the torch path's).
extern "C" __global__ void KNAME(window_dist_fwd)(
    const scalar_t* __restrict__ emb, scalar_t* __restrict__ D, int N, int E, int H, int W,
    int Ho, int Wo, CC_WINDOW_PARAMS, int l1, int remove_center, int remove_bounds, scalar_t big) {
    const int K = kh * kw;
    const index_t total = (index_t)N * K * Ho * Wo;
    CC_LOOP(idx, total) {
        const int x = (int)(idx % Wo);
        const int y = (int)((idx / Wo) % Ho);
        const int k = (int)((idx / ((index_t)Wo * Ho)) % K);
        const int n = (int)(idx / ((index_t)Wo * Ho * K));
        const int i = k / kw, j = k % kw;
        const int cy = y * sh - ph + (kh / 2) * dh, cx = x * sw - pw + (kw / 2) * dw;
        const int ny = y * sh - ph + i * dh, nx = x * sw - pw + j * dw;
        scalar_t out = scalar_t(0);
        if (cy >= 0 && cy < H && cx >= 0 && cx < W) {      // centre outside -> 0, whatever the flags
            if (ny == cy && nx == cx) {                     // the centre's own position
                if (remove_center) out = big;
            } else if (ny < 0 || ny >= H || nx < 0 || nx >= W) {
                if (remove_bounds) out = big;               // else 0: the missing neighbour adds nothing
            } else {
                const index_t plane = (index_t)H * W;
                const scalar_t* c = emb + (index_t)n * E * plane + (index_t)cy * W + cx;
                const scalar_t* q = emb + (index_t)n * E * plane + (index_t)ny * W + nx;
                scalar_t acc = scalar_t(0);
                for (int e = 0; e < E; ++e) {
                    const scalar_t d = cc_sub(c[e * plane], q[e * plane]);
                    acc = l1 ? cc_add(acc, cc_abs(d)) : cc_add(acc, cc_mul(scalar_t(0.5), cc_mul(d, d)));
                }
                out = acc;
            }
        }
        D[idx] = out;
    }
}

// One thread per gemb[n, e, qy, qx].  Contributions (s = d for L2, sign(d) with sign(0) = 0 for
// L1, d = emb[centre] - emb[neighbour], g = gD of the entry), only for entries whose centre and
// neighbour are both inside the image and at different positions (all others are constants):
//   as the centre of output (y, x):     + s * g[k, y, x] for every such tap k;
//   as the neighbour of tap k of (y, x): - s * g[k, y, x] (at most one (y, x) per tap).
extern "C" __global__ void KNAME(window_dist_bwd)(
    const scalar_t* __restrict__ emb, const scalar_t* __restrict__ gD, scalar_t* __restrict__ gemb,
    int N, int E, int H, int W, int Ho, int Wo, CC_WINDOW_PARAMS, int l1) {
    const int K = kh * kw;
    const index_t plane = (index_t)H * W;
    const index_t oplane = (index_t)Ho * Wo;
    const index_t total = (index_t)N * E * plane;
    const int ci = kh / 2, cj = kw / 2;
    CC_LOOP(idx, total) {
        const int qx = (int)(idx % W);
        const int qy = (int)((idx / W) % H);
        const index_t ne = idx / plane;                     // n * E + e
        const int n = (int)(ne / E);
        const scalar_t* e_plane = emb + ne * plane;
        const scalar_t* g_img = gD + (index_t)n * K * oplane;
        const scalar_t vq = e_plane[(index_t)qy * W + qx];
        scalar_t acc = scalar_t(0);
        // q as the centre of output (y, x)
        const int y = cc_source_index(qy, -ph + ci * dh, sh, Ho);
        const int x = cc_source_index(qx, -pw + cj * dw, sw, Wo);
        if (y >= 0 && x >= 0) {
            for (int k = 0; k < K; ++k) {
                const int ny = y * sh - ph + (k / kw) * dh, nx = x * sw - pw + (k % kw) * dw;
                if ((ny == qy && nx == qx) || ny < 0 || ny >= H || nx < 0 || nx >= W) continue;
                const scalar_t d = cc_sub(vq, e_plane[(index_t)ny * W + nx]);
                const scalar_t g = g_img[(index_t)k * oplane + (index_t)y * Wo + x];
                acc = cc_add(acc, cc_mul(l1 ? cc_sign(d) : d, g));
            }
        }
        // q as the neighbour of tap k of output (y, x)
        for (int k = 0; k < K; ++k) {
            const int ty = cc_source_index(qy, -ph + (k / kw) * dh, sh, Ho);
            const int tx = cc_source_index(qx, -pw + (k % kw) * dw, sw, Wo);
            if (ty < 0 || tx < 0) continue;
            const int cy = ty * sh - ph + ci * dh, cx = tx * sw - pw + cj * dw;
            if ((cy == qy && cx == qx) || cy < 0 || cy >= H || cx < 0 || cx >= W) continue;
            const scalar_t d = cc_sub(e_plane[(index_t)cy * W + cx], vq);
            const scalar_t g = g_img[(index_t)k * oplane + (index_t)ty * Wo + tx];
            acc = cc_sub(acc, cc_mul(l1 ? cc_sign(d) : d, g));
        }
        gemb[idx] = acc;
    }
}
