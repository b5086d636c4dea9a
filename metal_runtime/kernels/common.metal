// Shared helpers of the gpt-oss expert kernels (passed to mx.fast.metal_kernel as `header`).
// Kept to the MSL subset the tests' CPU harness supports: scalar code, metal:: math, as_type,
// simd_sum / simd_shuffle_xor, threadgroup arrays and threadgroup_barrier. No vector swizzles.

// Threadgroup arrays are declared through this macro: `threadgroup` is an address space on
// pointers too, and the CPU harness must give arrays shared storage but leave pointers alone.
#ifndef GPTOSS_TG_ARRAY
#define GPTOSS_TG_ARRAY(type, name, count) threadgroup type name[count]
#endif

// FP4 (E2M1) code -> value; the low nibble of a byte is the even element.
constant float GPTOSS_FP4[16] = {
    0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
    -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// E8M0 scale byte -> 2^(s - 127). Byte 0 is the subnormal 2^-127 (the shift trick would give 0).
inline float gptoss_e8m0(uint s) {
  return s == 0 ? as_type<float>(0x00400000u) : as_type<float>(s << 23);
}

// Dot product of 8 FP4 values packed in one little-endian uint32 word with xs[0..7].
inline float gptoss_dot8(uint w, threadgroup const float* xs) {
  float acc = 0.0f;
  for (int t = 0; t < 8; ++t) {
    acc += GPTOSS_FP4[(w >> (4 * t)) & 0xFu] * xs[t];
  }
  return acc;
}

// gpt-oss's clamped SwiGLU: min(g, limit) * sigmoid(alpha * g) * (clip(u, -limit, limit) + 1).
inline float gptoss_swiglu(float g, float u, float limit, float alpha) {
  g = metal::min(g, limit);
  u = metal::clamp(u, -limit, limit);
  return g / (1.0f + metal::exp(-alpha * g)) * (u + 1.0f);
}
