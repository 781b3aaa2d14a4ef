// q8's decode-step kernel (step_kernel.py builds it here, for this CPU, and checks it against fbgemm): a step's
// few rows of activations through int8 weights, each weight read once for all the rows, in the order it lies; and
// `decode_layers`, a pass of few tokens through every layer in one call (fused_step.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#if !defined(__AVX512VNNI__) && !defined(__AVXVNNI__)
#error "the step kernel needs VNNI (AVX-512 or AVX): elsewhere fbgemm reads the steps"
#endif

namespace {

constexpr int64_t BLOCK = 4;         // weight rows read together, stored interleaved 64 bytes at a time
constexpr int64_t ROWS = 4;          // activation rows a weight is read once for
constexpr int64_t PREFETCH = 2048;   // bytes ahead of the reads: 67-71 ms over gpt2-xl's matrices against 75-79 at 512

// out[m * N + n] = sum_k x[m, k] * w[n, k] over a group of `M` activation rows (x: uint8, w: int8).
template <int M>
void dots(const uint8_t* x, int64_t K, const int8_t* w, int64_t n0, int64_t n1, int32_t* out, int64_t N) {
  for (int64_t n = n0; n < n1; n += BLOCK) {
    const int8_t* block = w + n * K;
#if defined(__AVX512VNNI__)
    __m512i acc[M][BLOCK];
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < BLOCK; ++j) acc[m][j] = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 64) {
      const int8_t* at = block + k * BLOCK;
      for (int j = 0; j < BLOCK; ++j) _mm_prefetch(reinterpret_cast<const char*>(at + PREFETCH + 64 * j), _MM_HINT_T0);
      __m512i wv[BLOCK];
      for (int j = 0; j < BLOCK; ++j) wv[j] = _mm512_loadu_si512(at + 64 * j);
      for (int m = 0; m < M; ++m) {
        const __m512i xv = _mm512_loadu_si512(x + m * K + k);
        for (int j = 0; j < BLOCK; ++j) acc[m][j] = _mm512_dpbusd_epi32(acc[m][j], xv, wv[j]);
      }
    }
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < BLOCK; ++j) out[m * N + n + j] = _mm512_reduce_add_epi32(acc[m][j]);
#else  // AVX-VNNI: the same on 32 bytes at a time
    __m256i acc[M][BLOCK];
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < BLOCK; ++j) acc[m][j] = _mm256_setzero_si256();
    for (int64_t k = 0; k < K; k += 64) {
      const int8_t* at = block + k * BLOCK;
      for (int j = 0; j < BLOCK; ++j) _mm_prefetch(reinterpret_cast<const char*>(at + PREFETCH + 64 * j), _MM_HINT_T0);
      for (int half = 0; half < 2; ++half) {
        __m256i wv[BLOCK];
        for (int j = 0; j < BLOCK; ++j)
          wv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at + 64 * j + 32 * half));
        for (int m = 0; m < M; ++m) {
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + m * K + k + 32 * half));
          for (int j = 0; j < BLOCK; ++j) acc[m][j] = _mm256_dpbusd_avx_epi32(acc[m][j], xv, wv[j]);
        }
      }
    }
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < BLOCK; ++j) {
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc[m][j]), _mm256_extracti128_si256(acc[m][j], 1));
        s = _mm_hadd_epi32(s, s);
        s = _mm_hadd_epi32(s, s);
        out[m * N + n + j] = _mm_cvtsi128_si32(s);
      }
#endif
  }
}

// rows (R, in) fp32; weight (N, K) int8 as StepKernel lays it out (N and K padded to multiples of BLOCK and 64);
// scales and offsets (N,): the activations' scale times each row's, and the zero point times each row's sum; bias
// (out_features,). Returns (R, out_features): bit for bit what Q8Linear has fbgemm give. Each row is divided by
// its peak (its largest magnitude, at least 1e-30), each value made 8-bit as x * inverse_scale + zero_point in one
// fused multiply-add, rounded to even; each result is (dot - offset) * scale in fp32, then times the peak plus
// the bias in one fused multiply-add, as torch's addcmul does.
at::Tensor q8_step(const at::Tensor& rows, const at::Tensor& weight, const at::Tensor& scales, const at::Tensor& offsets,
                   const at::Tensor& bias, int64_t out_features, double inverse_scale, int64_t zero_point) {
  TORCH_CHECK(rows.dim() == 2 && rows.scalar_type() == at::kFloat && rows.is_contiguous(), "rows: (R, in) fp32");
  const int64_t R = rows.size(0), width = rows.size(1), N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(width <= K && K % 64 == 0 && N % BLOCK == 0 && out_features <= N, "weight: StepKernel's layout");
  auto x = at::full({R, K}, zero_point, rows.options().dtype(at::kByte));  // the padding reads zero weights
  std::vector<float> peaks(R);
  const float* xp = rows.data_ptr<float>();
  uint8_t* q = x.data_ptr<uint8_t>();
  const float inverse = static_cast<float>(inverse_scale), zero = static_cast<float>(zero_point);
  for (int64_t r = 0; r < R; ++r) {
    const float* row = xp + r * width;
    float peak = 0.0f;
    for (int64_t k = 0; k < width; ++k) peak = std::max(peak, std::fabs(row[k]));
    peaks[r] = peak = std::max(peak, 1e-30f);
    for (int64_t k = 0; k < width; ++k) {
      const float v = std::nearbyint(std::fma(row[k] / peak, inverse, zero));
      q[r * K + k] = static_cast<uint8_t>(std::min(std::max(v, 0.0f), 255.0f));
    }
  }
  auto dot = at::empty({R, N}, rows.options().dtype(at::kInt));
  int32_t* d = dot.data_ptr<int32_t>();
  const int8_t* w = weight.data_ptr<int8_t>();
  // Each block of BLOCK weight rows is read from memory once, for the first ROWS activation rows; the next groups
  // of ROWS read it again while it is still in the core's cache (4 x K bytes: 6.4-25.6 KB on gpt2-xl's shape).
  at::parallel_for(0, N / BLOCK, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b)
      for (int64_t r0 = 0; r0 < R; r0 += ROWS) {
        const uint8_t* xr = q + r0 * K;
        int32_t* dr = d + r0 * N;
        switch (std::min(ROWS, R - r0)) {
          case 1: dots<1>(xr, K, w, b * BLOCK, (b + 1) * BLOCK, dr, N); break;
          case 2: dots<2>(xr, K, w, b * BLOCK, (b + 1) * BLOCK, dr, N); break;
          case 3: dots<3>(xr, K, w, b * BLOCK, (b + 1) * BLOCK, dr, N); break;
          default: dots<4>(xr, K, w, b * BLOCK, (b + 1) * BLOCK, dr, N); break;
        }
      }
  });
  auto out = at::empty({R, out_features}, rows.options());
  float* o = out.data_ptr<float>();
  const float* s = scales.data_ptr<float>();
  const int32_t* off = offsets.data_ptr<int32_t>();
  const float* b = bias.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t n = 0; n < out_features; ++n) {
      const float product = static_cast<float>(d[r * N + n] - off[n]) * s[n];
      o[r * out_features + n] = std::fma(product, peaks[r], b[n]);  // addcmul's one rounding
    }
  return out;
}

// A pass of few tokens through every layer: sizes[r] tokens for each of R reads, each into its own KV cache (keys[r]
// and values[r]: layer, head, position, head_dim) after the starts[r] it holds; x (N, E) their embeddings, N the
// sizes' sum, changed in place and returned. The same ATen calls with the same arguments, in the same order, as
// fast._forward_reads makes from Python for such a pass, so the same bits (fused_step.py says why); `params` holds
// each layer's 20 tensors in FusedStep's order.
at::Tensor decode_layers(at::Tensor x, const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& keys,
                         const std::vector<at::Tensor>& values, const std::vector<int64_t>& starts,
                         const std::vector<int64_t>& sizes, int64_t n_head, double eps, double inverse_scale,
                         int64_t zero_point) {
  const int64_t N = x.size(0), E = x.size(1), D = E / n_head, R = int64_t(keys.size()), layers = keys[0].size(0);
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  TORCH_CHECK(N >= 1 && total == N && int64_t(values.size()) == R && int64_t(starts.size()) == R &&
                  int64_t(sizes.size()) == R && int64_t(params.size()) == 20 * layers,
              "decode_layers: x (N, E) with N the sizes' sum, a cache, a start and a size per read, 20 tensors a layer");
  std::vector<c10::optional<at::Tensor>> masks;  // fast._causal_mask's: None for one token or a row read from 0
  for (int64_t r = 0; r < R; ++r) {
    if (sizes[r] == 1 || starts[r] == 0)
      masks.emplace_back(c10::nullopt);
    else
      masks.emplace_back(at::ones({sizes[r], starts[r] + sizes[r]}, x.options().dtype(at::kBool)).tril(starts[r]));
  }
  // p[0] the step kernel's matrix, then its scales, offsets and the linear's bias
  auto linear = [&](const at::Tensor& in, const at::Tensor* p) {
    return q8_step(in.contiguous(), p[0], p[1], p[2], p[3], p[3].size(0), inverse_scale, zero_point);
  };
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor* p = params.data() + 20 * l;  // ln_1, c_attn, c_proj, ln_2, c_fc, mlp's c_proj
    auto qkv = linear(at::layer_norm(x, {E}, p[0], p[1], eps), p + 2);
    auto parts = qkv.split(E, 1);
    auto q = parts[0].view({-1, n_head, D}).transpose(0, 1);  // (H, N, D)
    auto k = parts[1].view({-1, n_head, D}).transpose(0, 1);
    auto v = parts[2].view({-1, n_head, D}).transpose(0, 1);
    std::vector<at::Tensor> ys;
    int64_t offset = 0;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t start = starts[r], n = sizes[r], end = start + n;
      keys[r].select(0, l).slice(1, start, end).copy_(k.slice(1, offset, offset + n));
      values[r].select(0, l).slice(1, start, end).copy_(v.slice(1, offset, offset + n));
      ys.push_back(at::scaled_dot_product_attention(q.unsqueeze(0).slice(2, offset, offset + n),
                                                    keys[r].select(0, l).unsqueeze(0).slice(2, 0, end),
                                                    values[r].select(0, l).unsqueeze(0).slice(2, 0, end), masks[r],
                                                    0.0, !masks[r].has_value() && n > 1)[0]);
      offset += n;
    }
    auto y = R == 1 ? ys[0] : at::cat(ys, 1);  // (H, N, D)
    x.add_(linear(y.transpose(0, 1).reshape(x.sizes()), p + 6));
    auto h = linear(at::layer_norm(x, {E}, p[10], p[11], eps), p + 12);
    at::gelu_(h, "tanh");
    x.add_(linear(h, p + 16));
  }
  return x;
}

}  // namespace

TORCH_LIBRARY(gpt2_studio, m) {
  m.def("q8_step", &q8_step);
  m.def("decode_layers", &decode_layers);
}
