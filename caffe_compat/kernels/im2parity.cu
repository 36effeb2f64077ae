// Im2parity: does each window neighbour carry the centre's label?  (Forward only: the fork's
// Backward is NOT_IMPLEMENTED and labels get no gradient, so there is no backward kernel.)
//
// Layouts: labels (N, C, H, W), only the last channel is read (the fork's later channels
// overwrite earlier ones); out (N, K, Ho, Wo).  Semantics: caffe_compat/ops/im2parity.py.
// Labels compare as C truncations (trunc in double holds every C int exactly); an out-of-image
// neighbour has label 0; with has_ignore, a pair involving `ignore` and every column whose centre
// is outside the image give `ignore`.
//
// Race review: one thread per output entry, inputs read-only; no atomics, no shared memory.
extern "C" __global__ void KNAME(im2parity_fwd)(
    const scalar_t* __restrict__ labels, scalar_t* __restrict__ out, int N, int C, int H, int W,
    int Ho, int Wo, CC_WINDOW_PARAMS, int has_ignore, double ignore) {
    const int K = kh * kw;
    const index_t total = (index_t)N * K * Ho * Wo;
    CC_LOOP(idx, total) {
        const int x = (int)(idx % Wo);
        const int y = (int)((idx / Wo) % Ho);
        const int k = (int)((idx / ((index_t)Wo * Ho)) % K);
        const int n = (int)(idx / ((index_t)Wo * Ho * K));
        const scalar_t* lab = labels + ((index_t)n * C + (C - 1)) * H * W;
        const int cy = y * sh - ph + (kh / 2) * dh, cx = x * sw - pw + (kw / 2) * dw;
        const int ny = y * sh - ph + (k / kw) * dh, nx = x * sw - pw + (k % kw) * dw;
        double v;
        if (cy < 0 || cy >= H || cx < 0 || cx >= W) {
            v = has_ignore ? ignore : 0.0;    // the Python wrapper refuses this case without ignore
        } else {
            const double lc = trunc((double)lab[(index_t)cy * W + cx]);
            const bool inside = ny >= 0 && ny < H && nx >= 0 && nx < W;
            const double ln = inside ? trunc((double)lab[(index_t)ny * W + nx]) : 0.0;
            if (has_ignore && (lc == ignore || ln == ignore)) v = ignore;
            else v = (lc == ln) ? 1.0 : 0.0;
        }
        out[idx] = (scalar_t)v;
    }
}
