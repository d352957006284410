// One Adam / AdamW step in CUDA C: a single pass over param, grad, exp_avg and exp_avg_sq.
// NumPy reference: minivae/optim.py, Adam._update (PyTorch's single-tensor rule, op for op).
//
// The host computes every step-dependent scalar in double precision, as PyTorch does, and passes
// it rounded to float32:
//   weight = 1 - beta1 (lerp weight), one_minus_weight = 1 - weight, one_minus_beta2 = 1 - beta2,
//   neg_step_size = -lr / (1 - beta1^t), bias_correction2_sqrt = sqrt(1 - beta2^t),
//   decay = 1 - lr * weight_decay (AdamW).
// weight_decay_mode: 0 none, 1 L2 added to the gradient (Adam), 2 decoupled shrink (AdamW).
#include "launch.cuh"

constexpr int WEIGHT_DECAY_L2 = 1, WEIGHT_DECAY_DECOUPLED = 2;

// 1: elementwise, grid-stride loop over the n entries. The caller's grad is only read.
extern "C" __global__ void adam_step(float* __restrict__ param, const float* __restrict__ grad,
                                     float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
                                     long long n, float weight, float one_minus_weight, float beta2,
                                     float one_minus_beta2, float neg_step_size, float bias_correction2_sqrt,
                                     float eps, float weight_decay, float decay, int weight_decay_mode) {
    require_1d_launch();
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        float p = param[i], g = grad[i];
        if (weight_decay_mode == WEIGHT_DECAY_DECOUPLED) p *= decay;
        if (weight_decay_mode == WEIGHT_DECAY_L2) g += p * weight_decay;
        // m = lerp(m, g, weight), in PyTorch's two forms (the one that keeps the smaller factor)
        const float diff = g - exp_avg[i];
        const float m = weight < 0.5f ? exp_avg[i] + diff * weight : g - diff * one_minus_weight;
        const float v = exp_avg_sq[i] * beta2 + (g * one_minus_beta2) * g;
        const float denom = sqrtf(v) / bias_correction2_sqrt + eps;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = p + (m * neg_step_size) / denom;
    }
}
