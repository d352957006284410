// The importance-weighted bound's op in CUDA C: per example, the log-mean-exp of its K log-weights
// and their softmax. NumPy reference: minivae/iwae.py, importance_weights; derivation in
// docs/derivations.md, "The importance-weighted bound".
//
//   m_n     = max_k log_w[k, n]
//   bound_n = m_n + log(sum_k exp(log_w[k, n] - m_n)) - log K
//   w[k, n] = exp(log_w[k, n] - m_n) / sum_j exp(log_w[j, n] - m_n)
// log_w, w: (K, N) C-contiguous (sample-major, as the model lays out its K decoder passes); bound:
// (N,). float32 throughout.
#include "launch.cuh"

// 1: one thread per example, grid-stride over examples; the thread walks its column's K entries
// three times (max, shifted exps and their sum, scaling). Consecutive threads read consecutive
// examples of one row of log_w, so every pass reads whole rows coalesced. K is small against N in
// training (K <= 50, N the batch), and a column's sum is one thread's: deterministic, no atomics.
// NaN propagates to the column like NumPy's max does (fmaxf would drop it).
extern "C" __global__ void importance_weights(const float* __restrict__ log_w, float* __restrict__ bound,
                                              float* __restrict__ w, int k, int n) {
    require_1d_launch();
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        float m = log_w[i];  // k >= 1; NVRTC, unlike nvcc, has no INFINITY without a header
        for (int s = 1; s < k; ++s) {
            const float v = log_w[s * static_cast<long long>(n) + i];
            if (v > m || v != v) m = v;
        }
        float total = 0.0f;
        for (int s = 0; s < k; ++s) {
            const long long e = s * static_cast<long long>(n) + i;
            const float x = expf(log_w[e] - m);
            w[e] = x;
            total += x;
        }
        bound[i] = m + logf(total) - logf(static_cast<float>(k));
        const float inv = 1.0f / total;
        for (int s = 0; s < k; ++s) w[s * static_cast<long long>(n) + i] *= inv;
    }
}
