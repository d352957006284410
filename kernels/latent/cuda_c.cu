// The latent step of a VAE in CUDA C: reparameterized samples and the KL term, fused, forward and
// backward. NumPy reference: minivae/latent.py (reparameterize_*, kl_*); derivations in
// docs/derivations.md, "Reparameterization" and "KL term".
//
// eps is never stored: element e of z (its C-order flat index in (L, N, d)) uses eps[offset + e] of
// the Philox stream keyed by seed (minivae/philox.py), and the backward regenerates the very same
// value. Shapes: N examples (rows), d latent dimensions, L samples per example; float32 throughout.
// mu, logvar (and the backward's dmu, dlogvar) are row-strided: row r starts ld_* elements after
// row r - 1, so the encoder's head h = [mu | logvar] (N, 2d) is read, and dh = [dmu | dlogvar]
// written, in place (mu = h, logvar = h + d, both with ld = 2d): one read of the latent statistics
// per direction, no copies. z, kl and dz are C-contiguous.
#include "launch.cuh"
#include "philox.cuh"
#include "reduce.cuh"

// 1: forward. One block per example row (grid-stride over rows, so any grid size works): the block
// reads the row's mu and logvar once, writes the row's L samples of z = mu + exp(logvar / 2) eps,
// and sums the row's KL terms with block_sum (deterministic: no atomics). blockDim.x must be a
// multiple of 32. Outputs: z (L, N, d), kl (N,).
extern "C" __global__ void latent_forward(const float* __restrict__ mu, int ld_mu,
                                          const float* __restrict__ logvar, int ld_logvar,
                                          float* __restrict__ z, float* __restrict__ kl, int n_rows,
                                          int dim, int samples, unsigned long long seed,
                                          unsigned long long offset) {
    require_whole_warps();
    const long long plane = static_cast<long long>(n_rows) * dim;  // elements of one sample of z
    for (long long row = blockIdx.x; row < n_rows; row += gridDim.x) {
        float terms = 0.0f;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            const long long i = row * dim + j;  // in z's plane
            const float m = mu[row * ld_mu + j], lv = logvar[row * ld_logvar + j];
            const float sd = expf(0.5f * lv);
            terms += m * m + expm1f(lv) - lv;  // KL = 1/2 sum_j (mu^2 + e^logvar - 1 - logvar)
            for (int l = 0; l < samples; ++l) {
                const long long e = l * plane + i;
                z[e] = m + sd * philox_normal(seed, offset + static_cast<unsigned long long>(e));
            }
        }
        const float total = block_sum(terms);
        if (threadIdx.x == 0) kl[row] = 0.5f * total;
    }
}

// 1: backward, elementwise over (N, d) with a grid-stride loop; eps regenerated from (seed, offset).
// With w = d loss / d KL for every example (beta times the loss scale):
//   dmu     = sum_l dz_l + w mu
//   dlogvar = (sum_l dz_l eps_l) exp(logvar / 2) / 2 + w (exp(logvar) - 1) / 2
// dz: (L, N, d) (L = 1 for an (N, d) dz); dmu, dlogvar: (N, d).
extern "C" __global__ void latent_backward(const float* __restrict__ dz, const float* __restrict__ mu,
                                           int ld_mu, const float* __restrict__ logvar, int ld_logvar,
                                           float* __restrict__ dmu, int ld_dmu, float* __restrict__ dlogvar,
                                           int ld_dlogvar, int n_rows, int dim, int samples,
                                           unsigned long long seed, unsigned long long offset,
                                           float kl_weight) {
    require_1d_launch();
    const long long plane = static_cast<long long>(n_rows) * dim;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < plane; i += stride) {
        const long long row = i / dim, j = i - row * dim;  // i indexes dz's (and eps's) plane
        const float m = mu[row * ld_mu + j], lv = logvar[row * ld_logvar + j];
        float sum_dz = 0.0f, sum_dz_eps = 0.0f;
        for (int l = 0; l < samples; ++l) {
            const long long e = l * plane + i;
            const float g = dz[e];
            sum_dz += g;
            sum_dz_eps += g * philox_normal(seed, offset + static_cast<unsigned long long>(e));
        }
        dmu[row * ld_dmu + j] = sum_dz + kl_weight * m;
        dlogvar[row * ld_dlogvar + j] = sum_dz_eps * (0.5f * expf(0.5f * lv)) + kl_weight * (0.5f * expm1f(lv));
    }
}
