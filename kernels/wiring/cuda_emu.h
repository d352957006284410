// cuda_emu.h -- run CUDA C kernels on the CPU, unchanged, as C++20 (g++ -include cuda_emu.h).
//
// Why: CI has no GPU, yet the .cu source a GPU runs should be checked against the NumPy reference
// on every commit. This header maps the CUDA C that minivae's kernels use onto threads:
//
// * A launch runs the grid one block at a time, with one std::thread per CUDA thread (a pool of
//   blockDim threads that walks the blocks in order, x fastest).
// * __syncthreads() is a per-block std::barrier. When a thread's kernel body returns (early or not)
//   it calls arrive_and_drop(), so the threads still running no longer wait for it: the rule GPUs
//   apply to exited threads. After the last thread of a block leaves, a barrier that is never dropped
//   ("block_end") rebuilds the per-block state for the next block.
// * __shared__ is `static`: a kernel's shared arrays become function-local statics, one instance
//   that every thread of the running block sees. That is per-block storage only because blocks never
//   overlap in time (the previous block has fully ended at block_end before the next starts) and
//   launches are serialised by a process-wide mutex. Limitation: no two blocks ever run at once, so
//   races *between* blocks (two blocks storing to one address without atomics) are not exercised.
//   Shared memory starts zeroed and keeps the previous block's values, where a GPU's is undefined.
// * Warp intrinsics (shuffles, votes, __syncwarp) go through a per-warp exchange: each lane stores
//   its value in a 32-slot buffer, waits on the warp's std::barrier, then reads the slot it wants.
//   Two buffers alternate, so one barrier per intrinsic suffices: a lane rewrites buffer b two
//   rounds later, after the next round's barrier, which no lane passes before all have read round b.
//   Every lane also stamps its round number; a lane missing from a round (exited, or absent from a
//   partial warp) is reported, as is any mask other than 0xffffffff.
// * __trap() throws out of the thread's kernel body; the launch then reports launch_failure (719,
//   cudaErrorLaunchFailure) and skips the remaining blocks.
//
// What it cannot emulate, and how each fails: partial-mask warp intrinsics (launch error);
// tensor-core instructions (wmma/mma: compile error), inline PTX (asm: the host assembler rejects
// it), grid-wide sync and other cooperative groups (compile error), dynamic `extern __shared__`
// arrays (compile error: `extern static`). Undefined behaviour stays undefined: __syncthreads() in
// divergent code, or the lanes of a warp meeting different intrinsics, may hang or mismatch here.
// Nothing emulates the GPU's rounding: nvcc contracts a*b+c into fma and its libdevice math differs
// by ulps from glibc, so compare with tolerances. Cost: 1-2 us per thread per barrier (measured on
// 2 cores, blocks of 32-128; more at 512); keep shapes small. A GPU run is the final word.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

// A kernel may keep a path the emulator cannot run (inline PTX, tensor cores) behind
// #ifndef CUDA_EMU, beside a portable one the emulator checks; minivae's kernels need none.
#define CUDA_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

// ---- built-in types and variables -------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) uint2 { unsigned x, y; };
struct __align__(16) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;

// ---- math: glibc supplies expf, logf, log1pf, expm1f, sqrtf, fmaxf, sincosf, ...; these are the
// CUDA-only names. The fast intrinsics (__expf, ...) map to the accurate functions: CPU results are
// then *closer* to the reference than a GPU's, so tolerances must be set for the GPU.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0
// sin(pi x), cos(pi x): the product pi * x is formed in double, so the result is the float rounding
// of a value accurate to ~1e-16, well inside CUDA's 1-ulp bound for sincospif.
inline void sincospif(float x, float* s, float* c) {
    const double a = 3.14159265358979323846 * static_cast<double>(x);
    *s = static_cast<float>(std::sin(a));
    *c = static_cast<float>(std::cos(a));
}
inline unsigned __umulhi(unsigned a, unsigned b) {
    return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline int __popc(unsigned x) { return std::popcount(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
template <class T> inline T __ldg(const T* p) { return *p; }
// CUDA's min/max are overloaded for every arithmetic pair; the common type is what they return.
template <class A, class B> inline std::common_type_t<A, B> min(A a, B b) {
    using T = std::common_type_t<A, B>;
    return static_cast<T>(b) < static_cast<T>(a) ? static_cast<T>(b) : static_cast<T>(a);
}
template <class A, class B> inline std::common_type_t<A, B> max(A a, B b) {
    using T = std::common_type_t<A, B>;
    return static_cast<T>(a) < static_cast<T>(b) ? static_cast<T>(b) : static_cast<T>(a);
}

// ---- atomics: std::atomic_ref on the caller's memory (C++20 has fetch_add for float and double);
// atomicAdd is the one minivae's kernels use; others are a line each.
template <class T> inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- the launch machinery ------------------------------------------------------------------------
namespace emu {
enum Status : int { ok = 0, invalid_configuration = 9, launch_failure = 719 };  // cudaError_t values

namespace detail {
constexpr unsigned FULL_MASK = 0xffffffffu;
struct Trap {};

struct Warp {
    std::optional<std::barrier<>> bar;
    unsigned long long value[2][32];  // double-buffered exchange, one slot per lane
    unsigned long long stamp[2][32];  // round number each lane last took part in
};

struct Launch {
    dim3 grid, block;
    unsigned nthreads, nwarps;
    unsigned long long nblocks;
    std::optional<std::barrier<>> block_bar;
    std::unique_ptr<Warp[]> warps;
    std::mutex error_mutex;
    int status = ok;
    std::string message;

    Launch(dim3 g, dim3 b)
        : grid(g), block(b), nthreads(b.x * b.y * b.z), nwarps((nthreads + 31) / 32),
          nblocks(1ull * g.x * g.y * g.z), warps(new Warp[nwarps]) { reset_block(); }
    void reset_block() {  // runs with every thread of the pool parked at block_end
        block_bar.emplace(nthreads);
        for (unsigned w = 0; w < nwarps; ++w) {
            warps[w].bar.emplace(std::min(32u, nthreads - 32 * w));
            std::memset(warps[w].stamp, 0, sizeof warps[w].stamp);
        }
    }
    void fail(int code, const std::string& why) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (status == ok) { status = code; message = why; }
    }
};
struct ResetBlock {
    Launch* launch;
    void operator()() noexcept { launch->reset_block(); }
};
struct Self { Launch* launch; unsigned lane, warp, round; };
inline thread_local Self self;

inline std::string where() {
    char buf[96];
    std::snprintf(buf, sizeof buf, "thread (%u,%u,%u) of block (%u,%u,%u)", threadIdx.x, threadIdx.y,
                  threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z);
    return buf;
}

// One round of the warp exchange: publish `mine`, wait for the warp, return all 32 slots.
inline const unsigned long long* exchange(unsigned mask, unsigned long long mine, const char* what) {
    Launch& L = *self.launch;
    Warp& w = L.warps[self.warp];
    if (mask != FULL_MASK)
        L.fail(launch_failure, std::string(what) + " with a partial mask (not emulated) in " + where());
    const unsigned b = self.round++ & 1;
    w.value[b][self.lane] = mine;
    w.stamp[b][self.lane] = self.round;
    w.bar->arrive_and_wait();
    for (unsigned lane = 0; lane < 32; ++lane)
        if (w.stamp[b][lane] != self.round) {
            L.fail(launch_failure, std::string(what) + ": lane " + std::to_string(lane) +
                   " of the warp did not take part (it exited, or the block is not a whole number "
                   "of warps) in " + where());
            break;
        }
    return w.value[b];
}

enum ShuffleMode { IDX, UP, DOWN, BFLY };
// The PTX rule of shfl.sync for source lane and clamp, with c = ((32 - width) << 8) | (up ? 0 : 31).
template <class T> T shuffle(unsigned mask, T var, int b, int width, ShuffleMode mode, const char* what) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of a 1-8 byte value");
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
        self.launch->fail(launch_failure, std::string(what) + ": width must be a power of 2 <= 32");
    unsigned long long mine = 0;
    std::memcpy(&mine, &var, sizeof(T));
    const unsigned long long* slots = exchange(mask, mine, what);
    const int lane = static_cast<int>(self.lane), bval = b & 31;
    const int segmask = (32 - width) & 31, cval = mode == UP ? 0 : 31;
    const int max_lane = (lane & segmask) | (cval & ~segmask), min_lane = lane & segmask;
    int j = lane;
    bool valid = true;
    switch (mode) {
        case IDX: j = min_lane | (bval & ~segmask); valid = j <= max_lane; break;
        case UP: j = lane - bval; valid = j >= max_lane; break;
        case DOWN: j = lane + bval; valid = j <= max_lane; break;
        case BFLY: j = lane ^ bval; valid = j <= max_lane; break;
    }
    T out;
    std::memcpy(&out, &slots[valid ? j : lane], sizeof(T));
    return out;
}
inline unsigned ballot(unsigned mask, int pred, const char* what) {
    const unsigned long long* slots = exchange(mask, pred != 0, what);
    unsigned bits = 0;
    for (unsigned lane = 0; lane < 32; ++lane) bits |= static_cast<unsigned>(slots[lane] != 0) << lane;
    return bits;
}

inline std::mutex& launch_mutex() { static std::mutex m; return m; }

inline std::string check_config(dim3 g, dim3 b) {
    const unsigned long long threads = 1ull * b.x * b.y * b.z;
    if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024)
        return "block (" + std::to_string(b.x) + "," + std::to_string(b.y) + "," + std::to_string(b.z) +
               ") must be >= 1 in each dimension, at most (1024,1024,64), and at most 1024 threads";
    if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535)
        return "grid (" + std::to_string(g.x) + "," + std::to_string(g.y) + "," + std::to_string(g.z) +
               ") must be >= 1 in each dimension and at most (2^31-1,65535,65535)";
    return {};
}

template <class Kernel, class Args>
void run_thread(Launch& L, unsigned tid, Kernel kernel, const Args& args,
                std::barrier<ResetBlock>& block_end, std::latch& start, const bool& abort) {
    start.wait();
    if (abort) return;
    self = {&L, tid % 32, tid / 32, 0};
    threadIdx = {tid % L.block.x, tid / L.block.x % L.block.y, tid / (L.block.x * L.block.y)};
    blockDim = L.block;
    gridDim = L.grid;
    for (unsigned long long b = 0; b < L.nblocks; ++b) {
        blockIdx = {static_cast<unsigned>(b % L.grid.x), static_cast<unsigned>(b / L.grid.x % L.grid.y),
                    static_cast<unsigned>(b / (1ull * L.grid.x * L.grid.y))};
        self.round = 0;
        try {
            std::apply(kernel, args);
        } catch (const Trap&) {
            L.fail(launch_failure, "__trap() called by " + where());
        }
        L.warps[self.warp].bar->arrive_and_drop();  // a finished thread no longer holds back
        L.block_bar->arrive_and_drop();              // its warp or its block
        block_end.arrive_and_wait();
        if (L.status != ok) return;  // written before block_end by the failing thread: race-free
    }
}

template <class... P, class... A>
int launch_impl(void (*kernel)(P...), dim3 grid, dim3 block, std::string* message, A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "launch: wrong number of kernel arguments");
    std::lock_guard<std::mutex> lock(launch_mutex());
    if (std::string why = check_config(grid, block); !why.empty()) {
        *message = why;
        return invalid_configuration;
    }
    Launch L(grid, block);
    const std::tuple<std::decay_t<P>...> params(static_cast<std::decay_t<P>>(args)...);
    std::barrier<ResetBlock> block_end(L.nthreads, ResetBlock{&L});
    std::latch start(1);
    bool abort = false;
    std::vector<std::thread> pool;
    try {
        for (unsigned t = 0; t < L.nthreads; ++t)
            pool.emplace_back(run_thread<void (*)(P...), decltype(params)>, std::ref(L), t, kernel,
                              std::cref(params), std::ref(block_end), std::ref(start), std::cref(abort));
    } catch (const std::system_error& e) {
        abort = true;  // the threads made so far leave before touching any barrier
        L.fail(launch_failure, std::string("could not start a thread per CUDA thread: ") + e.what());
    }
    start.count_down();
    for (std::thread& t : pool) t.join();
    *message = L.message;
    return L.status;
}
}  // namespace detail

// Run kernel<<<grid, block>>>(args...) to completion; a failure's reason goes to stderr.
template <class... P, class... A> int launch(void (*kernel)(P...), dim3 grid, dim3 block, A&&... args) {
    std::string message;
    const int status = detail::launch_impl(kernel, grid, block, &message, std::forward<A>(args)...);
    if (status != ok) std::fprintf(stderr, "emu::launch: %s\n", message.c_str());
    return status;
}

// cuLaunchKernel's convention: cfg = {grid.x, grid.y, grid.z, block.x, block.y, block.z} and
// args[i] points at the value of parameter i; the reason for a failure goes into err.
template <class... P, std::size_t... I>
int launch_packed_impl(void (*kernel)(P...), const unsigned* cfg, void** args, char* err, std::size_t errlen,
                       std::index_sequence<I...>) {
    std::string message;
    const int status = detail::launch_impl(kernel, dim3(cfg[0], cfg[1], cfg[2]), dim3(cfg[3], cfg[4], cfg[5]),
                                           &message, *static_cast<std::decay_t<P>*>(args[I])...);
    if (errlen) std::snprintf(err, errlen, "%s", message.c_str());
    return status;
}
template <class... P>
int launch_packed(void (*kernel)(P...), const unsigned* cfg, void** args, char* err, std::size_t errlen) {
    return launch_packed_impl(kernel, cfg, args, err, errlen, std::index_sequence_for<P...>{});
}
}  // namespace emu

// ---- the device-side intrinsics ------------------------------------------------------------------
inline void __syncthreads() { emu::detail::self.launch->block_bar->arrive_and_wait(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::detail::exchange(mask, 0, "__syncwarp"); }
[[noreturn]] inline void __trap() { throw emu::detail::Trap{}; }
template <class T> T __shfl_sync(unsigned mask, T v, int src, int width = warpSize) {
    return emu::detail::shuffle(mask, v, src, width, emu::detail::IDX, "__shfl_sync");
}
template <class T> T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    return emu::detail::shuffle(mask, v, static_cast<int>(delta), width, emu::detail::UP, "__shfl_up_sync");
}
template <class T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    return emu::detail::shuffle(mask, v, static_cast<int>(delta), width, emu::detail::DOWN,
                                "__shfl_down_sync");
}
template <class T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
    return emu::detail::shuffle(mask, v, lane_mask, width, emu::detail::BFLY, "__shfl_xor_sync");
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return emu::detail::ballot(mask, pred, "__ballot_sync"); }
inline int __any_sync(unsigned mask, int pred) { return emu::detail::ballot(mask, pred, "__any_sync") != 0; }
inline int __all_sync(unsigned mask, int pred) {
    return emu::detail::ballot(mask, pred, "__all_sync") == emu::detail::FULL_MASK;
}
