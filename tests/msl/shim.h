// MSL-on-CPU shim: compiles the Metal kernels given to mx.fast.metal_kernel as C++ (g++ >= 10)
// and runs each threadgroup's threads as cooperative fibers on one OS thread.
//
// Supported MSL subset (the gpt-oss kernels stay inside it):
// - address spaces `device`, `constant`, `threadgroup` on pointers/references (erased);
//   threadgroup arrays declared with GPTOSS_TG_ARRAY(type, name, count) (shared by the threads
//   of a threadgroup, poisoned with 0xFF bytes before every threadgroup);
// - scalar types uint/ushort/uchar/ulong/half/bfloat16_t/float16_t/float/int..., uint3 (x, y, z);
// - as_type<T>(v); metal::exp/min/max/clamp/fabs/sqrt/rsqrt/precise::exp; INFINITY;
// - simd_sum/simd_max/simd_min (float, int, uint), simd_shuffle_xor/simd_shuffle/
//   simd_broadcast/simd_shuffle_down/simd_shuffle_up (any 1-8 byte scalar), simd width 32;
// - threadgroup_barrier(mem_flags::...);
// - the 20 thread attributes MLX can pass.
// Not supported: vector types and swizzles, address-space overloads, atomics, textures,
// simdgroup matrices, MLX's own Metal prelude.
//
// Scheduling: a fiber runs until it reaches a collective or a barrier (or returns). A collective
// resolves when every live lane of its simdgroup waits at the same call site; a barrier when every
// live thread of the threadgroup does. Anything else is reported as divergence/deadlock. Lanes
// are started and resumed in a chosen order (forward, reverse, or seeded random), so a missing
// barrier shows up as a difference between schedules.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <type_traits>
#include <vector>

#define kernel
#define device
#define constant
#define threadgroup
#define GPTOSS_TG_ARRAY(type, name, count) static type name[count] __attribute__((section("gptoss_tg")))

typedef uint32_t uint;
typedef uint16_t ushort;
typedef uint8_t uchar;
typedef unsigned long ulong;
typedef _Float16 half;
typedef _Float16 float16_t;

struct uint3 {
  uint x, y, z;
};

struct bfloat16_t {
  uint16_t bits;
  bfloat16_t() = default;
  bfloat16_t(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x7FFFFFu)) {
      bits = uint16_t((u >> 16) | 0x40);  // quiet NaN
    } else {
      bits = uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }
  }
  operator float() const {
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
static_assert(sizeof(bfloat16_t) == 2, "bfloat16_t must be 2 bytes");

template <typename T, typename U>
inline T as_type(U v) {
  static_assert(sizeof(T) == sizeof(U), "as_type needs equal sizes");
  T t;
  std::memcpy(&t, &v, sizeof(T));
  return t;
}

namespace metal {
inline float exp(float x) { return std::exp(x); }
inline float fabs(float x) { return std::fabs(x); }
inline float sqrt(float x) { return std::sqrt(x); }
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
template <typename T>
inline T min(T a, T b) { return b < a ? b : a; }
template <typename T>
inline T max(T a, T b) { return a < b ? b : a; }
template <typename T>
inline T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
namespace precise {
inline float exp(float x) { return std::exp(x); }
}
}  // namespace metal

enum mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };

namespace gptoss_sim {

constexpr int SIMD = 32;
enum State { READY, WAIT_COLLECTIVE, WAIT_BARRIER, DONE };
enum Op { SUM, MAX, MIN, SHUFFLE_XOR, SHUFFLE, SHUFFLE_DOWN, SHUFFLE_UP };
enum Kind { FLOAT32, FLOAT64, SIGNED, UNSIGNED, RAW };

struct Attrs {
  uint3 thread_position_in_grid, thread_position_in_threadgroup, threadgroup_position_in_grid;
  uint3 threads_per_threadgroup, threads_per_grid, threadgroups_per_grid, grid_size, grid_origin;
  uint3 dispatch_threads_per_threadgroup;
  uint thread_index_in_threadgroup, thread_index_in_simdgroup, simdgroup_index_in_threadgroup;
  uint simdgroups_per_threadgroup, threads_per_simdgroup, thread_execution_width;
  uint quadgroup_index_in_threadgroup, quadgroups_per_threadgroup, thread_index_in_quadgroup;
  uint dispatch_simdgroups_per_threadgroup, dispatch_quadgroups_per_threadgroup;
};

struct Lane {
  ucontext_t ctx;
  std::vector<char> stack;  // allocated once per launch, reused by every threadgroup
  bool active = false;      // this thread exists in the current threadgroup (edge groups are partial)
  State state = DONE;
  int site = 0;
  Op op = SUM;
  Kind kind = RAW;
  int size = 0;
  uint64_t in = 0, arg = 0, out = 0;
  Attrs attrs;
};

struct Sim {
  ucontext_t main;
  std::vector<Lane> lanes;  // indexed by thread_index_in_threadgroup
  int current = -1;
  int error = 0;
  const std::function<void(const Attrs&)>* body = nullptr;
};

inline Sim*& sim() {
  static Sim* s = nullptr;
  return s;
}

inline void trampoline() {
  Sim* s = sim();
  Lane& l = s->lanes[s->current];
  (*s->body)(l.attrs);
  l.state = DONE;
  swapcontext(&l.ctx, &s->main);
}

inline void yield(State st, int site) {
  Sim* s = sim();
  Lane& l = s->lanes[s->current];
  l.state = st;
  l.site = site;
  swapcontext(&l.ctx, &s->main);
}

template <typename T>
inline Kind kind_of() {
  if (std::is_same<T, float>::value) return FLOAT32;
  if (std::is_same<T, double>::value) return FLOAT64;
  if (std::is_integral<T>::value && std::is_signed<T>::value) return SIGNED;
  if (std::is_integral<T>::value) return UNSIGNED;
  return RAW;
}

template <typename T>
inline T collective(Op op, T v, uint64_t arg, int site) {
  static_assert(sizeof(T) <= 8, "collectives take scalars");
  Sim* s = sim();
  Lane& l = s->lanes[s->current];
  l.op = op;
  l.kind = kind_of<T>();
  l.size = sizeof(T);
  l.in = 0;
  std::memcpy(&l.in, &v, sizeof(T));
  l.arg = arg;
  yield(WAIT_COLLECTIVE, site);
  T r;
  std::memcpy(&r, &l.out, sizeof(T));
  return r;
}

inline double as_number(const Lane& l) {
  switch (l.kind) {
    case FLOAT32: { float f; std::memcpy(&f, &l.in, 4); return f; }
    case FLOAT64: { double d; std::memcpy(&d, &l.in, 8); return d; }
    case SIGNED: {
      int64_t v = 0;
      if (l.size == 4) { int32_t t; std::memcpy(&t, &l.in, 4); v = t; }
      else if (l.size == 8) std::memcpy(&v, &l.in, 8);
      else if (l.size == 2) { int16_t t; std::memcpy(&t, &l.in, 2); v = t; }
      else { int8_t t; std::memcpy(&t, &l.in, 1); v = t; }
      return double(v);
    }
    default: return double(l.in);
  }
}

inline uint64_t from_number(const Lane& l, double v) {
  uint64_t out = 0;
  switch (l.kind) {
    case FLOAT32: { float f = float(v); std::memcpy(&out, &f, 4); break; }
    case FLOAT64: std::memcpy(&out, &v, 8); break;
    case SIGNED: { int64_t t = int64_t(v); std::memcpy(&out, &t, l.size); break; }
    default: { uint64_t t = uint64_t(v); std::memcpy(&out, &t, l.size); break; }
  }
  return out;
}

// Resolve the collective of one simdgroup (lanes [first, first + 32) of the threadgroup).
inline void resolve(Sim& s, int first) {
  const int end = std::min<int>(first + SIMD, int(s.lanes.size()));
  auto alive = [&](int i) { return i < end && s.lanes[i].active && s.lanes[i].state != DONE; };
  const uint64_t poison = ~uint64_t(0);
  for (int i = first; i < end; ++i) {
    Lane& l = s.lanes[i];
    if (l.state != WAIT_COLLECTIVE) continue;
    if (l.op == SUM || l.op == MAX || l.op == MIN) {
      double acc = l.op == SUM ? 0.0 : as_number(l);
      bool use_float = l.kind == FLOAT32 || l.kind == FLOAT64;
      float facc = l.op == SUM ? 0.0f : float(as_number(l));
      for (int j = first; j < end; ++j) {
        if (!alive(j)) continue;
        double v = as_number(s.lanes[j]);
        if (l.op == SUM) { acc += v; facc += float(v); }
        if (l.op == MAX) acc = std::max(acc, v);
        if (l.op == MIN) acc = std::min(acc, v);
      }
      // float sums accumulate in float, as the hardware does
      l.out = (l.op == SUM && use_float && l.kind == FLOAT32) ? from_number(l, facc) : from_number(l, acc);
    } else {
      const int lane = i - first;
      int src = lane;
      switch (l.op) {
        case SHUFFLE_XOR: src = lane ^ int(l.arg & 31u); break;
        case SHUFFLE: src = int(l.arg & 31u); break;
        case SHUFFLE_DOWN: src = lane + int(l.arg); break;
        case SHUFFLE_UP: src = lane - int(l.arg); break;
        default: break;
      }
      if ((l.op == SHUFFLE_DOWN || l.op == SHUFFLE_UP) && (src < 0 || src >= SIMD)) src = lane;
      const int j = first + src;
      l.out = alive(j) ? s.lanes[j].in : poison;
    }
  }
  for (int i = first; i < end; ++i) {
    if (s.lanes[i].state == WAIT_COLLECTIVE) s.lanes[i].state = READY;
  }
}

// Error codes: 1 = a simdgroup's lanes wait at different collectives (divergence),
// 2 = a barrier not reached by every live thread / nothing can proceed (deadlock).
inline int run_threadgroup(Sim& s, int schedule, std::mt19937& rng) {
  const int n = int(s.lanes.size());
  std::vector<int> order;
  for (int i = 0; i < n; ++i)
    if (s.lanes[i].active) order.push_back(i);
  if (schedule == 1) std::reverse(order.begin(), order.end());
  while (true) {
    if (schedule == 2) std::shuffle(order.begin(), order.end(), rng);
    bool ran = false;
    for (int i : order) {
      if (s.lanes[i].state != READY) continue;
      s.current = i;
      swapcontext(&s.main, &s.lanes[i].ctx);
      ran = true;
    }
    bool all_done = true, released = false;
    for (int i : order) all_done = all_done && s.lanes[i].state == DONE;
    if (all_done) return 0;
    if (ran) continue;
    // simdgroups whose live lanes all wait at one collective call site
    for (int first = 0; first < n; first += SIMD) {
      int site = -1;
      bool ok = false, mixed = false;
      for (int i = first; i < std::min(first + SIMD, n); ++i) {
        const Lane& l = s.lanes[i];
        if (!l.active || l.state == DONE) continue;
        if (l.state != WAIT_COLLECTIVE) { mixed = true; break; }
        if (site == -1) site = l.site;
        if (l.site != site) return 1;
        ok = true;
      }
      if (ok && !mixed) {
        resolve(s, first);
        released = true;
      }
    }
    if (released) continue;
    int site = -1;
    for (int i : order) {
      const Lane& l = s.lanes[i];
      if (l.state == DONE) continue;
      if (l.state != WAIT_BARRIER) return 1;
      if (site == -1) site = l.site;
      if (l.site != site) return 2;
    }
    // a barrier that only part of the threadgroup reaches (others returned) deadlocks on a GPU
    for (int i : order)
      if (s.lanes[i].state == DONE) return 2;
    for (int i : order) s.lanes[i].state = READY;
  }
}

extern "C" char __start_gptoss_tg[] __attribute__((weak));
extern "C" char __stop_gptoss_tg[] __attribute__((weak));

inline int launch(const int grid[3], const int tg[3], int schedule, unsigned seed,
                  const std::function<void(const Attrs&)>& body) {
  Sim s;
  s.body = &body;
  sim() = &s;
  std::mt19937 rng(seed);
  const int tg_threads = tg[0] * tg[1] * tg[2];
  s.lanes.resize(tg_threads);
  for (Lane& l : s.lanes) l.stack.resize(256 * 1024);
  const uint3 ngroups = {uint((grid[0] + tg[0] - 1) / tg[0]), uint((grid[1] + tg[1] - 1) / tg[1]),
                         uint((grid[2] + tg[2] - 1) / tg[2])};
  for (uint gz = 0; gz < ngroups.z; ++gz)
    for (uint gy = 0; gy < ngroups.y; ++gy)
      for (uint gx = 0; gx < ngroups.x; ++gx) {
        if (__start_gptoss_tg != nullptr && __stop_gptoss_tg != nullptr)
          std::memset(__start_gptoss_tg, 0xFF, size_t(__stop_gptoss_tg - __start_gptoss_tg));
        const uint3 dispatch = {uint(std::min<int>(tg[0], grid[0] - int(gx) * tg[0])),
                                uint(std::min<int>(tg[1], grid[1] - int(gy) * tg[1])),
                                uint(std::min<int>(tg[2], grid[2] - int(gz) * tg[2]))};
        for (int lin = 0; lin < tg_threads; ++lin) {
          Lane& l = s.lanes[lin];
          const uint lx = uint(lin % tg[0]), ly = uint((lin / tg[0]) % tg[1]), lz = uint(lin / (tg[0] * tg[1]));
          const uint3 pos = {gx * uint(tg[0]) + lx, gy * uint(tg[1]) + ly, gz * uint(tg[2]) + lz};
          if (int(pos.x) >= grid[0] || int(pos.y) >= grid[1] || int(pos.z) >= grid[2]) {
            l.active = false;  // not part of the grid: no thread
            l.state = DONE;
            continue;
          }
          Attrs& a = l.attrs;
          a.thread_position_in_grid = pos;
          a.thread_position_in_threadgroup = {lx, ly, lz};
          a.threadgroup_position_in_grid = {gx, gy, gz};
          a.threads_per_threadgroup = {uint(tg[0]), uint(tg[1]), uint(tg[2])};
          a.dispatch_threads_per_threadgroup = dispatch;
          a.threads_per_grid = {uint(grid[0]), uint(grid[1]), uint(grid[2])};
          a.grid_size = a.threads_per_grid;
          a.grid_origin = {0, 0, 0};
          a.threadgroups_per_grid = ngroups;
          a.thread_index_in_threadgroup = uint(lin);
          a.thread_index_in_simdgroup = uint(lin % SIMD);
          a.simdgroup_index_in_threadgroup = uint(lin / SIMD);
          a.simdgroups_per_threadgroup = uint((tg_threads + SIMD - 1) / SIMD);
          a.dispatch_simdgroups_per_threadgroup = uint((dispatch.x * dispatch.y * dispatch.z + SIMD - 1) / SIMD);
          a.threads_per_simdgroup = SIMD;
          a.thread_execution_width = SIMD;
          a.quadgroup_index_in_threadgroup = uint(lin / 4);
          a.quadgroups_per_threadgroup = uint((tg_threads + 3) / 4);
          a.dispatch_quadgroups_per_threadgroup = uint((dispatch.x * dispatch.y * dispatch.z + 3) / 4);
          a.thread_index_in_quadgroup = uint(lin % 4);
          l.active = true;
          l.state = READY;
          getcontext(&l.ctx);
          l.ctx.uc_stack.ss_sp = l.stack.data();
          l.ctx.uc_stack.ss_size = l.stack.size();
          l.ctx.uc_link = nullptr;
          makecontext(&l.ctx, trampoline, 0);
        }
        const int err = run_threadgroup(s, schedule, rng);
        if (err) {
          sim() = nullptr;
          return err;
        }
      }
  sim() = nullptr;
  return 0;
}

}  // namespace gptoss_sim

// -- Metal built-ins in terms of the simulator ----------------------------------------------------

#define simd_sum(v) gptoss_sim::collective(gptoss_sim::SUM, (v), 0, __LINE__ * 64 + __COUNTER__ % 64)
#define simd_max(v) gptoss_sim::collective(gptoss_sim::MAX, (v), 0, __LINE__ * 64 + __COUNTER__ % 64)
#define simd_min(v) gptoss_sim::collective(gptoss_sim::MIN, (v), 0, __LINE__ * 64 + __COUNTER__ % 64)
#define simd_shuffle_xor(v, m) gptoss_sim::collective(gptoss_sim::SHUFFLE_XOR, (v), uint64_t(m), __LINE__ * 64 + __COUNTER__ % 64)
#define simd_shuffle(v, l) gptoss_sim::collective(gptoss_sim::SHUFFLE, (v), uint64_t(l), __LINE__ * 64 + __COUNTER__ % 64)
#define simd_broadcast(v, l) gptoss_sim::collective(gptoss_sim::SHUFFLE, (v), uint64_t(l), __LINE__ * 64 + __COUNTER__ % 64)
#define simd_shuffle_down(v, d) gptoss_sim::collective(gptoss_sim::SHUFFLE_DOWN, (v), uint64_t(d), __LINE__ * 64 + __COUNTER__ % 64)
#define simd_shuffle_up(v, d) gptoss_sim::collective(gptoss_sim::SHUFFLE_UP, (v), uint64_t(d), __LINE__ * 64 + __COUNTER__ % 64)
#define threadgroup_barrier(flags) gptoss_sim::yield(gptoss_sim::WAIT_BARRIER, __LINE__ * 64 + __COUNTER__ % 64)
