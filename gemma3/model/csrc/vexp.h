// Shared by the kernels in this folder: exp for loops the compiler vectorises (no libm call in the loop body).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

namespace gemma3 {

// exp(x) for the vectorised loops: x = k ln2 + r, |r| <= ln2 / 2, exp(r) by Cephes' degree-6 polynomial (relative
// error ~1e-7), times 2^k built in the exponent bits. The input is clamped to [-87, 88] (exp(-87) ~ 1.6e-38: a
// decay that small is 0 to fp32 arithmetic either way).
inline float vexp(float x) {
  x = std::max(-87.0f, std::min(x, 88.0f));
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float k = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

}  // namespace gemma3
