// Experts down: y[n, :] = sum_k weights[n, k] * (down_e @ act[n, k, :] + down_bias_e),
// e = indices[n, k]; down weights uint32 [E, H, I/8], scales uint8 [E, H, I/32], bias [E, H].
// The routing-weighted sum over the K experts happens in registers: no atomics, one write.
//
// Thread mapping: grid (64 * ceil(H / 8), N, 1), threadgroup (64, 1, 1) = 2 simdgroups; a
// threadgroup serves token n and 8 output rows (4 per simdgroup). For each of the K experts the
// activation row act[n, k] (I floats) is staged in threadgroup memory between two barriers (the
// first keeps the previous expert's readers from seeing it overwritten). Lanes walk 16-value
// chunks as in experts_up and accumulate weight_k * scale * dot; one simd_sum per row at the end.
// Template: T (output dtype), H (rows), I (reduction length), K.
  GPTOSS_TG_ARRAY(float, as, I);
  const uint n = threadgroup_position_in_grid.y;
  const uint lane = thread_index_in_simdgroup;
  const uint row0 = (threadgroup_position_in_grid.x * 2u + simdgroup_index_in_threadgroup) * 4u;
  const uint words = uint(I) / 8u;
  const uint groups = uint(I) / 32u;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  float bias_sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int k = 0; k < K; ++k) {
    const uint pair = n * uint(K) + uint(k);
    const uint e = indices[pair];
    const float wk = float(weights[pair]);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint j = thread_index_in_threadgroup; j < uint(I); j += 64u) {
      as[j] = act[pair * uint(I) + j];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint c = lane; c < uint(I) / 16u; c += 32u) {
      threadgroup const float* ac = as + c * 16u;
      for (int r = 0; r < 4; ++r) {
        const uint row = (row0 + uint(r)) < uint(H) ? row0 + uint(r) : 0u;
        const ulong base = ulong(e) * ulong(H) + ulong(row);
        const uint w0 = down_weight[base * words + 2u * c];
        const uint w1 = down_weight[base * words + 2u * c + 1u];
        acc[r] += wk * gptoss_e8m0(down_scales[base * groups + c / 2u]) * (gptoss_dot8(w0, ac) + gptoss_dot8(w1, ac + 8));
      }
    }
    if (lane == 0) {
      for (int r = 0; r < 4; ++r) {
        const uint row = (row0 + uint(r)) < uint(H) ? row0 + uint(r) : 0u;
        bias_sum[r] += wk * float(down_bias[e * uint(H) + row]);
      }
    }
  }
  for (int r = 0; r < 4; ++r) {
    acc[r] = simd_sum(acc[r]);
  }
  if (lane == 0) {
    for (int r = 0; r < 4; ++r) {
      const uint row = row0 + uint(r);
      if (row < uint(H)) {
        y[n * uint(H) + row] = T(acc[r] + bias_sum[r]);
      }
    }
  }
