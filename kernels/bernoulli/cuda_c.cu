// The Bernoulli likelihood on logits in CUDA C: per-example log-likelihood and its gradient in one
// pass. NumPy reference: minivae/likelihoods.py, Bernoulli.forward / Bernoulli.backward.
//
//   logp[n]      = sum_j x_nj l_nj - softplus(l_nj)
//   dlogits[n,j] = dlogp (x_nj - sigmoid(l_nj))
// dlogp is d loss / d logp[n], the same for every example (-1 / (N L) for a mean loss): the
// backward's scale is known before the forward runs, so both come from one read of x and logits.
#include "launch.cuh"
#include "reduce.cuh"

// 1: one block per example row (grid-stride over rows), block_sum for the row's log-likelihood.
// exp is only ever taken of -|l|, so neither softplus nor sigmoid overflows for any finite logit.
// blockDim.x must be a multiple of 32. x, logits, dlogits: (N, D); logp: (N,).
extern "C" __global__ void bernoulli_forward_backward(const float* __restrict__ x,
                                                      const float* __restrict__ logits,
                                                      float* __restrict__ logp, float* __restrict__ dlogits,
                                                      int n_rows, int dim, float dlogp) {
    require_whole_warps();
    for (long long row = blockIdx.x; row < n_rows; row += gridDim.x) {
        float terms = 0.0f;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            const long long i = row * dim + j;
            const float l = logits[i], xv = x[i];
            const float e = expf(-fabsf(l));
            terms += xv * l - (fmaxf(l, 0.0f) + log1pf(e));  // softplus(l) = max(l, 0) + log1p(e^-|l|)
            const float sigmoid = (l >= 0.0f ? 1.0f : e) / (1.0f + e);
            dlogits[i] = dlogp * (xv - sigmoid);
        }
        const float total = block_sum(terms);
        if (threadIdx.x == 0) logp[row] = total;
    }
}
