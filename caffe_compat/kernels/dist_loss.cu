// DistLoss: the fork's contrastive hinge on window distances.
//
// Layouts: dist, parity, m, g: any shape, flat and contiguous, `per_image` entries per image.
// Semantics: caffe_compat/ops/dist_loss.py (dist_loss_terms).  With p = trunc(parity):
//   skipped (0)          if has_ignore and p == ignore, or first_image_only and the entry is
//                        not in image 0 (the fork's GPU bug, opt-in);
//   similar (p != 0):    m = max(dist - alpha, 0), g = +m;
//   dissimilar (p == 0): m = max(beta - dist, 0),  g = -m.
// dist_loss_fwd writes m (the loss is sum(m) / count, reduced by torch); dist_loss_bwd writes
// g * inv_count (the fork multiplies by Dtype(1)/count and ignores the top gradient).
//
// Race review: elementwise, one thread per entry, inputs read-only; no atomics (the reduction is
// left to torch), no shared memory.

__device__ __forceinline__ scalar_t cc_dist_loss_term(scalar_t dist, scalar_t parity, index_t idx,
                                                      index_t per_image, scalar_t alpha, scalar_t beta,
                                                      int has_ignore, double ignore,
                                                      int first_image_only, bool signed_gradient) {
    const double p = trunc((double)parity);
    if ((has_ignore && p == ignore) || (first_image_only && idx >= per_image)) return scalar_t(0);
    if (p != 0.0) {
        const scalar_t m = cc_sub(dist, alpha);
        return m > scalar_t(0) ? m : scalar_t(0);
    }
    scalar_t m = cc_sub(beta, dist);
    m = m > scalar_t(0) ? m : scalar_t(0);
    return signed_gradient ? -m : m;
}

extern "C" __global__ void KNAME(dist_loss_fwd)(
    const scalar_t* __restrict__ dist, const scalar_t* __restrict__ parity, scalar_t* __restrict__ m,
    index_t total, index_t per_image, scalar_t alpha, scalar_t beta, int has_ignore, double ignore,
    int first_image_only) {
    CC_LOOP(idx, total) {
        m[idx] = cc_dist_loss_term(dist[idx], parity[idx], idx, per_image, alpha, beta, has_ignore,
                                   ignore, first_image_only, false);
    }
}

extern "C" __global__ void KNAME(dist_loss_bwd)(
    const scalar_t* __restrict__ dist, const scalar_t* __restrict__ parity, scalar_t* __restrict__ g,
    index_t total, index_t per_image, scalar_t alpha, scalar_t beta, int has_ignore, double ignore,
    int first_image_only, scalar_t inv_count) {
    CC_LOOP(idx, total) {
        g[idx] = cc_mul(cc_dist_loss_term(dist[idx], parity[idx], idx, per_image, alpha, beta,
                                          has_ignore, ignore, first_image_only, true),
                        inv_count);
    }
}
