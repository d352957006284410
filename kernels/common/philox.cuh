// Philox4x32-10 and the standard-normal stream of minivae/philox.py, on the device.
//
// The contract is the module docstring of minivae/philox.py: element j of the stream keyed by a
// 64-bit seed is one lane of the four normals from philox4x32_10(counter = (j / 4 as two words, 0, 0),
// key = seed as two words); Box-Muller pairs (x0, x1) -> lanes 0, 1 and (x2, x3) -> lanes 2, 3, as
// r sin(theta), r cos(theta). Bit-exact with Random123's philox4x32_R(10, ...) and curand's
// Philox4_32_10. Float32 evaluation as prescribed there (error <= 1e-5 (1 + |eps|)).
#pragma once

// Round multipliers and key (Weyl) increments of Philox4x32 (Random123 philox.h).
constexpr unsigned PHILOX_M0 = 0xD2511F53u, PHILOX_M1 = 0xCD9E8D57u;
constexpr unsigned PHILOX_W0 = 0x9E3779B9u, PHILOX_W1 = 0xBB67AE85u;
// Rounds: the count Random123 recommends for Crush-resistance with margin, and curand's.
constexpr int PHILOX_ROUNDS = 10;

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
    for (int r = 0; r < PHILOX_ROUNDS; ++r) {
        if (r > 0) {
            k.x += PHILOX_W0;
            k.y += PHILOX_W1;
        }
        const unsigned hi0 = __umulhi(PHILOX_M0, c.x), lo0 = PHILOX_M0 * c.x;
        const unsigned hi1 = __umulhi(PHILOX_M1, c.z), lo1 = PHILOX_M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

// u(x) = (x + 1/2) 2^-32: in (0, 1), never 0 (the log stays finite) and never 1.
__device__ __forceinline__ float philox_uniform(unsigned x) {
    return fmaf(static_cast<float>(x), 0x1p-32f, 0x1p-33f);
}

// sqrt(-2 ln u(x)). Near u = 1 the float u is a multiple of 2^-24 and ln u would lose every digit,
// so the upper half takes log1p(-(1 - u)) with 1 - u(x) = u(0xFFFFFFFF - x), exact in integers.
__device__ __forceinline__ float box_muller_radius(unsigned x) {
    const float minus_log_u = x < 0x80000000u ? -logf(philox_uniform(x))
                                              : -log1pf(-philox_uniform(0xFFFFFFFFu - x));
    return sqrtf(2.0f * minus_log_u);
}

// eps[j] of the stream keyed by seed. A thread that owns one element computes its group's Philox
// block and keeps the pair its lane needs.
__device__ __forceinline__ float philox_normal(unsigned long long seed, unsigned long long j) {
    const unsigned long long group = j >> 2;
    const uint4 words = philox4x32_10(
        make_uint4(static_cast<unsigned>(group), static_cast<unsigned>(group >> 32), 0u, 0u),
        make_uint2(static_cast<unsigned>(seed), static_cast<unsigned>(seed >> 32)));
    const unsigned lane = static_cast<unsigned>(j) & 3u;
    const unsigned radius_word = lane < 2 ? words.x : words.z, angle_word = lane < 2 ? words.y : words.w;
    float s, c;
    sincospif(2.0f * philox_uniform(angle_word), &s, &c);  // theta = 2 pi u, as sin(pi * 2u)
    return box_muller_radius(radius_word) * ((lane & 1u) ? c : s);
}
