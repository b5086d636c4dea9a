// Router: logits [N, E] -> top-K expert ids [N, K] (uint32) and softmax weights [N, K] (float),
// softmax over the K selected logits only. Ties go to the lower expert id; outputs are in rank
// order (largest logit first).
//
// Thread mapping: one simdgroup (32 threads) per token; grid (32, N, 1), threadgroup (32, 1, 1).
// Lane l owns experts l, l+32, l+64, ... (E up to 32 * PER_LANE). Each of the K rounds takes the
// lane-local best not-yet-taken expert, then a 5-step butterfly (simd_shuffle_xor) finds the
// simdgroup-wide best (value, id) pair; the owning lane marks it taken.
// Template: E (experts), K (experts per token), PER_LANE = ceil(E / 32).
  const uint n = threadgroup_position_in_grid.y;
  const uint lane = thread_index_in_simdgroup;
  float v[PER_LANE];
  bool taken[PER_LANE];
  for (int j = 0; j < PER_LANE; ++j) {
    const uint e = lane + 32u * uint(j);
    v[j] = e < uint(E) ? float(logits[n * uint(E) + e]) : -INFINITY;
    taken[j] = e >= uint(E);
  }
  float sel_v[K];
  uint sel_i[K];
  for (int r = 0; r < K; ++r) {
    float best = -INFINITY;
    uint best_i = 0xFFFFFFFFu;
    for (int j = 0; j < PER_LANE; ++j) {
      const uint e = lane + 32u * uint(j);
      if (!taken[j] && (v[j] > best || (v[j] == best && e < best_i))) {
        best = v[j];
        best_i = e;
      }
    }
    for (ushort off = 16; off > 0; off >>= 1) {
      const float ob = simd_shuffle_xor(best, off);
      const uint oi = simd_shuffle_xor(best_i, off);
      if (ob > best || (ob == best && oi < best_i)) {
        best = ob;
        best_i = oi;
      }
    }
    sel_v[r] = best;
    sel_i[r] = best_i;
    if (best_i % 32u == lane) {
      taken[best_i / 32u] = true;
    }
  }
  if (lane == 0) {
    float total = 0.0f;
    float ex[K];
    for (int r = 0; r < K; ++r) {
      ex[r] = metal::exp(sel_v[r] - sel_v[0]);
      total += ex[r];
    }
    for (int r = 0; r < K; ++r) {
      indices[n * uint(K) + uint(r)] = sel_i[r];
      weights[n * uint(K) + uint(r)] = ex[r] / total;
    }
  }
