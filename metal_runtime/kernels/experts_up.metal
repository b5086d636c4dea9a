// Experts up: for each (token n, slot k) with expert e = indices[n, k]:
//   act[n, k, :] = swiglu(gate_e @ x_n + gate_bias_e, up_e @ x_n + up_bias_e)      (float32)
// reading the runtime layout directly: weights uint32 [E, I, H/8] (8 FP4 codes per word, low
// nibble first), scales uint8 [E, I, H/32] (E8M0), biases [E, I].
//
// Thread mapping: grid (64 * ceil(I / 8), N * K, 1), threadgroup (64, 1, 1) = 2 simdgroups.
// A threadgroup serves one (n, k) pair and 8 output rows (4 per simdgroup, gate and up each).
// x_n is staged once in threadgroup memory (H floats) behind a barrier. Lane l of a simdgroup
// walks 16-value chunks c = l, l + 32, ... < H/16: two words per row, one scale per chunk
// (applied once per 16 values), so any H that is a multiple of 32 works (H = 2880 -> 180 chunks).
// simd_sum reduces the 32 partial sums; lane 0 adds biases, applies SwiGLU and writes.
// Rows past I (ragged edge) compute on row 0 but do not write, keeping control flow uniform.
// Template: H, I (rows), K (experts per token), LIMIT_X1000 and ALPHA_X1000 (swiglu limit and
// alpha * 1000; both config fields).
  GPTOSS_TG_ARRAY(float, xs, H);
  const uint pair = threadgroup_position_in_grid.y;
  const uint n = pair / uint(K);
  const uint e = indices[pair];
  for (uint j = thread_index_in_threadgroup; j < uint(H); j += 64u) {
    xs[j] = float(x[n * uint(H) + j]);
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  const uint lane = thread_index_in_simdgroup;
  const uint row0 = (threadgroup_position_in_grid.x * 2u + simdgroup_index_in_threadgroup) * 4u;
  const uint words = uint(H) / 8u;
  const uint groups = uint(H) / 32u;
  float g[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  float u[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (uint c = lane; c < uint(H) / 16u; c += 32u) {
    threadgroup const float* xc = xs + c * 16u;
    for (int r = 0; r < 4; ++r) {
      const uint row = (row0 + uint(r)) < uint(I) ? row0 + uint(r) : 0u;
      const ulong base = ulong(e) * ulong(I) + ulong(row);
      const uint gw0 = gate_weight[base * words + 2u * c];
      const uint gw1 = gate_weight[base * words + 2u * c + 1u];
      const uint uw0 = up_weight[base * words + 2u * c];
      const uint uw1 = up_weight[base * words + 2u * c + 1u];
      g[r] += gptoss_e8m0(gate_scales[base * groups + c / 2u]) * (gptoss_dot8(gw0, xc) + gptoss_dot8(gw1, xc + 8));
      u[r] += gptoss_e8m0(up_scales[base * groups + c / 2u]) * (gptoss_dot8(uw0, xc) + gptoss_dot8(uw1, xc + 8));
    }
  }
  for (int r = 0; r < 4; ++r) {
    g[r] = simd_sum(g[r]);
    u[r] = simd_sum(u[r]);
  }
  if (lane == 0) {
    const float limit = float(LIMIT_X1000) / 1000.0f;
    const float alpha = float(ALPHA_X1000) / 1000.0f;
    for (int r = 0; r < 4; ++r) {
      const uint row = row0 + uint(r);
      if (row < uint(I)) {
        const float gv = g[r] + float(gate_bias[e * uint(I) + row]);
        const float uv = u[r] + float(up_bias[e * uint(I) + row]);
        act[pair * uint(I) + row] = gptoss_swiglu(gv, uv, limit, alpha);
      }
    }
  }
