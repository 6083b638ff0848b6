// The Mamba block's CPU kernels, built as one extension by recbole_hybrid/ops/cpp_extension.py:
// the selective scan (softplus, D skip and silu gate fused) and the causal depthwise
// convolution (with silu), forward and backward; and dropout with a counter-based mask. Both read their inputs in any layout and
// write theirs as (batch, channels, L) views of (batch, L, channels) tensors, the layout the
// Mamba block's Linear layers read and write, so no copy is made around them.
//
// Float: exp2 and log1p are inlined polynomials, and the build passes -fno-trapping-math, so
// that loops over time, channels or states vectorize (std::exp, std::log1p calls do not, and
// GCC keeps a select in a loop as a branch under -ftrapping-math); double (the tests'
// precision): the C library.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

// ---------------------------------------------------------------- shared

namespace {

// 2^x: x = k + f with k = round(x), |f| <= 1/2, 2^f by its Taylor series to degree 7
// (relative error below 1e-8), 2^k built in the exponent bits; below 2^-126 the result is
// 0, above 2^127 infinity.
inline double exp2_fast(double x) { return std::exp2(x); }

inline float exp2_fast(float x) {
  const bool underflow = x < -126.0f, overflow = x > 127.0f;
  x = underflow ? -126.0f : (overflow ? 127.0f : x);
  const float k = std::nearbyint(x);
  const float f = (x - k) * 0.693147180559945309f;  // 2^(x-k) = e^f
  float p = 1.0f / 5040.0f;
  p = p * f + 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return underflow ? 0.0f : (overflow ? INFINITY : p * scale);
}

// log(1 + e) for e in [0, 1]: 2 atanh(s) with s = e / (2 + e) <= 1/3, by the series of
// atanh to s^17 (truncation below 2e-10 relative).
inline double log1p_unit(double e) { return std::log1p(e); }

inline float log1p_unit(float e) {
  const float s = e / (2.0f + e), s2 = s * s;
  float p = 1.0f / 17.0f;
  p = p * s2 + 1.0f / 15.0f;
  p = p * s2 + 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}

constexpr double kLog2E = 1.4426950408889634;

// e^-|x|, in (0, 1]: the one exponential that sigmoid and softplus need.
template <typename scalar_t>
inline scalar_t exp_minus_abs(scalar_t x) {
  return exp2_fast(-std::abs(x) * static_cast<scalar_t>(kLog2E));
}

template <typename scalar_t>
inline scalar_t sigmoid(scalar_t x) {
  const scalar_t e = exp_minus_abs(x);
  return (x >= 0 ? scalar_t(1) : e) / (scalar_t(1) + e);
}

// log(1 + e^x) = max(x, 0) + log(1 + e^-|x|)
template <typename scalar_t>
inline scalar_t softplus(scalar_t x) {
  return std::max(x, scalar_t(0)) + log1p_unit(exp_minus_abs(x));
}

// (batch, channels, L) viewed from a (batch, L, channels) tensor.
torch::Tensor channels_last_like(const torch::Tensor& t) {
  return torch::empty({t.size(0), t.size(2), t.size(1)}, t.options()).transpose(1, 2);
}

}  // namespace

// ---------------------------------------------------------------- selective scan
//
// Selective scan on the CPU with softplus, the D skip and the silu gate fused in. One
// (batch row, channel) pair at a time, its d_state-long state in a small per-thread buffer,
// so no (batch, d_inner, d_state) tensor is ever written to memory:
//
//   dt_t = softplus(delta_t + bias)                        (each step optional)
//   h_t  = exp2(dt_t * A2) * h_{t-1} + dt_t * u_t * B_t    (A2 = A log2 e, h_0 = 0)
//   y_t  = <h_t, C_t> + D u_t,   out_t = y_t * z_t * sigmoid(z_t)
//
// Backward recomputes a row's states, then runs the adjoint recurrence in reverse.
// Layouts: u, delta, z (batch, d_inner, L) with any strides (the Mamba block passes views of
// its (batch, L, channels) Linear outputs); B, C (batch, d_state, L) with unit d_state
// stride; A (d_inner, d_state) contiguous. out and the gradients of u, delta and z are
// (batch, d_inner, L) views of (batch, L, d_inner) tensors, the layout out_proj reads.
// Threads split the batch.
namespace {

// Strides of a (batch, channels or states, L) tensor.
struct Layout {
  int64_t b, c, l;
  explicit Layout(const torch::Tensor& t) : b(t.stride(0)), c(t.stride(1)), l(t.stride(2)) {}
  Layout() : b(0), c(0), l(0) {}
  int64_t at(int64_t batch, int64_t channel, int64_t t) const {
    return batch * b + channel * c + t * l;
  }
};

// One call's inputs; D, z, bias are null when absent.
template <typename scalar_t>
struct Scan {
  const scalar_t *u, *delta, *A, *B, *C, *D, *z, *bias;
  Layout lu, ldelta, lz, lB, lC;
  int64_t batch, channels, length, states;
  bool softplus;
};

// One (batch row, channel)'s per-step inputs, gathered from any layout into contiguous
// buffers; the transcendental steps then run as vectorized loops over time.
template <typename scalar_t>
struct Row {
  std::vector<scalar_t> u, dt, dt_grad, z, z_sigmoid, a2;  // dt_grad = d dt / d delta

  Row(int64_t length, int64_t states)
      : u(length), dt(length), dt_grad(length), z(length), z_sigmoid(length), a2(states) {}

  void load(const Scan<scalar_t>& s, int64_t b, int64_t d, bool with_dt_grad) {
    const int64_t L = s.length;
    const scalar_t bias = s.bias ? s.bias[d] : scalar_t(0);
    for (int64_t t = 0; t < L; ++t) {
      u[t] = s.u[s.lu.at(b, d, t)];
      dt[t] = s.delta[s.ldelta.at(b, d, t)] + bias;
    }
    if (s.softplus) {
      scalar_t* raw = dt.data();
      scalar_t* grad = dt_grad.data();
      if (with_dt_grad) {
#pragma omp simd
        for (int64_t t = 0; t < L; ++t) grad[t] = sigmoid(raw[t]);
      }
#pragma omp simd
      for (int64_t t = 0; t < L; ++t) raw[t] = softplus(raw[t]);
    }
    if (s.z) {
      for (int64_t t = 0; t < L; ++t) z[t] = s.z[s.lz.at(b, d, t)];
      const scalar_t* zs = z.data();
      scalar_t* sig = z_sigmoid.data();
#pragma omp simd
      for (int64_t t = 0; t < L; ++t) sig[t] = sigmoid(zs[t]);
    }
    for (int64_t n = 0; n < s.states; ++n) {
      a2[n] = s.A[d * s.states + n] * static_cast<scalar_t>(kLog2E);
    }
  }
};

template <typename scalar_t, int kStates>
void scan_forward_rows(const Scan<scalar_t>& s, scalar_t* out, Layout lout, scalar_t* last,
                       int64_t b0, int64_t b1) {
  const int64_t N = kStates > 0 ? kStates : s.states, L = s.length;
  Row<scalar_t> row(L, N);
  std::vector<scalar_t> h(N);
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t d = 0; d < s.channels; ++d) {
      row.load(s, b, d, false);
      const scalar_t* a2 = row.a2.data();
      std::fill(h.begin(), h.end(), scalar_t(0));
      for (int64_t t = 0; t < L; ++t) {
        const scalar_t dt = row.dt[t];
        const scalar_t input = dt * row.u[t];
        const scalar_t* Bt = s.B + s.lB.at(b, 0, t);
        const scalar_t* Ct = s.C + s.lC.at(b, 0, t);
        scalar_t y = 0;
#pragma omp simd reduction(+ : y)
        for (int64_t n = 0; n < N; ++n) {
          h[n] = exp2_fast(dt * a2[n]) * h[n] + input * Bt[n];
          y += h[n] * Ct[n];
        }
        if (s.D) y += s.D[d] * row.u[t];
        if (s.z) y *= row.z[t] * row.z_sigmoid[t];
        out[lout.at(b, d, t)] = y;
      }
      std::copy(h.begin(), h.end(), last + (b * s.channels + d) * N);
    }
  }
}

// Gradients: u, delta, z in one layout; B, C (batch, L, d_state) contiguous, accumulated
// over channels by the thread that owns the batch row; A, D, bias: this thread's own rows.
template <typename scalar_t>
struct Grads {
  scalar_t *u, *delta, *z;  // z may be null
  Layout layout;
  scalar_t *B, *C;
  scalar_t *A, *D, *bias;  // (d_inner, d_state) / (d_inner); D, bias may be null
};

template <typename scalar_t, int kStates>
void scan_backward_rows(const Scan<scalar_t>& s, const scalar_t* grad_out, Layout lgrad_out,
                        const scalar_t* grad_last, const Grads<scalar_t>& g, int64_t b0,
                        int64_t b1) {
  const int64_t N = kStates > 0 ? kStates : s.states, L = s.length;
  Row<scalar_t> row(L, N);
  // states[t]: the state before step t; decays[t] = exp2(dt_t A2); y[t]: <h_t, C_t> + D u_t.
  std::vector<scalar_t> states((L + 1) * N), decays(L * N), y(L), adjoint(N);
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t d = 0; d < s.channels; ++d) {
      row.load(s, b, d, true);
      const scalar_t* a = s.A + d * N;
      const scalar_t* a2 = row.a2.data();
      std::fill(states.begin(), states.begin() + N, scalar_t(0));
      for (int64_t t = 0; t < L; ++t) {
        const scalar_t dt = row.dt[t];
        const scalar_t input = dt * row.u[t];
        const scalar_t* Bt = s.B + s.lB.at(b, 0, t);
        const scalar_t* Ct = s.C + s.lC.at(b, 0, t);
        const scalar_t* before = states.data() + t * N;
        scalar_t* after = states.data() + (t + 1) * N;
        scalar_t* decay = decays.data() + t * N;
        scalar_t yt = 0;
#pragma omp simd reduction(+ : yt)
        for (int64_t n = 0; n < N; ++n) {
          decay[n] = exp2_fast(dt * a2[n]);
          after[n] = decay[n] * before[n] + input * Bt[n];
          yt += after[n] * Ct[n];
        }
        y[t] = yt + (s.D ? s.D[d] * row.u[t] : scalar_t(0));
      }
      for (int64_t n = 0; n < N; ++n) {
        adjoint[n] = grad_last ? grad_last[(b * s.channels + d) * N + n] : scalar_t(0);
      }
      for (int64_t t = L - 1; t >= 0; --t) {
        const scalar_t dt = row.dt[t], u = row.u[t];
        const int64_t at = g.layout.at(b, d, t);
        scalar_t gy = grad_out[lgrad_out.at(b, d, t)];  // dL/dy_t, through the gate
        if (s.z) {
          const scalar_t zt = row.z[t], gate = row.z_sigmoid[t];
          g.z[at] = gy * y[t] * gate * (scalar_t(1) + zt * (scalar_t(1) - gate));
          gy *= zt * gate;
        }
        const scalar_t input = dt * u;
        const scalar_t* Bt = s.B + s.lB.at(b, 0, t);
        const scalar_t* Ct = s.C + s.lC.at(b, 0, t);
        scalar_t* gBt = g.B + (b * L + t) * N;
        scalar_t* gCt = g.C + (b * L + t) * N;
        scalar_t* gA = g.A + d * N;
        const scalar_t* after = states.data() + (t + 1) * N;
        const scalar_t* before = states.data() + t * N;
        const scalar_t* decay = decays.data() + t * N;
        scalar_t adjoint_B = 0, through_decay_A = 0;
#pragma omp simd reduction(+ : adjoint_B, through_decay_A)
        for (int64_t n = 0; n < N; ++n) {
          gCt[n] += gy * after[n];
          const scalar_t lam = adjoint[n] + gy * Ct[n];
          adjoint_B += lam * Bt[n];
          gBt[n] += lam * input;
          const scalar_t w = lam * before[n] * decay[n];
          through_decay_A += w * a[n];
          gA[n] += w * dt;
          adjoint[n] = lam * decay[n];
        }
        g.u[at] = dt * adjoint_B + (s.D ? gy * s.D[d] : scalar_t(0));
        if (s.D) g.D[d] += gy * u;
        scalar_t grad_dt = u * adjoint_B + through_decay_A;
        if (s.softplus) grad_dt *= row.dt_grad[t];
        g.delta[at] = grad_dt;
        if (g.bias) g.bias[d] += grad_dt;
      }
    }
  }
}

// Calls f(std::integral_constant<int, n>) for the common d_state values, whose inner loops
// then have a trip count known at compile time (no remainder loops, no runtime checks),
// f(std::integral_constant<int, 0>) for any other.
template <typename F>
void with_states(int64_t n, F&& f) {
  switch (n) {
    case 8: return f(std::integral_constant<int, 8>());
    case 16: return f(std::integral_constant<int, 16>());
    case 32: return f(std::integral_constant<int, 32>());
    case 64: return f(std::integral_constant<int, 64>());
    default: return f(std::integral_constant<int, 0>());
  }
}

template <typename scalar_t>
const scalar_t* optional_ptr(const c10::optional<torch::Tensor>& t) {
  return t.has_value() ? t->data_ptr<scalar_t>() : nullptr;
}

template <typename scalar_t>
Scan<scalar_t> scan_of(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                       const torch::Tensor& B, const torch::Tensor& C,
                       const c10::optional<torch::Tensor>& D, const c10::optional<torch::Tensor>& z,
                       const c10::optional<torch::Tensor>& bias, bool softplus) {
  TORCH_CHECK(A.is_contiguous() && B.stride(1) == 1 && C.stride(1) == 1,
              "scan: A must be contiguous, B and C contiguous over d_state");
  return {u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
          B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), optional_ptr<scalar_t>(D),
          optional_ptr<scalar_t>(z), optional_ptr<scalar_t>(bias), Layout(u), Layout(delta),
          z.has_value() ? Layout(*z) : Layout(), Layout(B), Layout(C),
          u.size(0), u.size(1), u.size(2), A.size(1), softplus};
}

}  // namespace

// Returns out (batch, d_inner, L) and the last state (batch, d_inner, d_state).
std::vector<torch::Tensor> scan_forward(torch::Tensor u, torch::Tensor delta, torch::Tensor A,
                                        torch::Tensor B, torch::Tensor C,
                                        c10::optional<torch::Tensor> D,
                                        c10::optional<torch::Tensor> z,
                                        c10::optional<torch::Tensor> delta_bias, bool softplus) {
  auto out = channels_last_like(u);
  auto last = torch::empty({u.size(0), u.size(1), A.size(1)}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "scan_forward", [&] {
    const auto s = scan_of<scalar_t>(u, delta, A, B, C, D, z, delta_bias, softplus);
    with_states(s.states, [&](auto states) {
      at::parallel_for(0, s.batch, 1, [&](int64_t b0, int64_t b1) {
        scan_forward_rows<scalar_t, decltype(states)::value>(
            s, out.data_ptr<scalar_t>(), Layout(out), last.data_ptr<scalar_t>(), b0, b1);
      });
    });
  });
  return {out, last};
}

// Returns the gradients of u, delta, A, B, C, D, z, delta_bias (None where absent).
std::vector<c10::optional<torch::Tensor>> scan_backward(
    torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B, torch::Tensor C,
    c10::optional<torch::Tensor> D, c10::optional<torch::Tensor> z,
    c10::optional<torch::Tensor> delta_bias, bool softplus, torch::Tensor grad_out,
    c10::optional<torch::Tensor> grad_last) {
  const int64_t threads = at::get_num_threads(), batch = u.size(0), channels = u.size(1),
                length = u.size(2), N = A.size(1);
  auto grad_u = channels_last_like(u);
  auto grad_delta = channels_last_like(u);
  auto grad_z = z.has_value() ? channels_last_like(u) : torch::Tensor();
  auto grad_B = torch::zeros({batch, length, N}, u.options());
  auto grad_C = torch::zeros({batch, length, N}, u.options());
  // Per-thread accumulators for the per-channel gradients, summed at the end.
  auto grad_A = torch::zeros({threads, channels, N}, A.options());
  auto grad_D = torch::zeros({threads, channels}, A.options());
  auto grad_bias = torch::zeros({threads, channels}, A.options());
  if (grad_last.has_value()) grad_last = grad_last->contiguous();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "scan_backward", [&] {
    const auto s = scan_of<scalar_t>(u, delta, A, B, C, D, z, delta_bias, softplus);
    with_states(s.states, [&](auto states) {
    at::parallel_for(0, s.batch, 1, [&](int64_t b0, int64_t b1) {
      const int64_t k = at::get_thread_num();
      const Grads<scalar_t> g{grad_u.data_ptr<scalar_t>(), grad_delta.data_ptr<scalar_t>(),
                              z.has_value() ? grad_z.data_ptr<scalar_t>() : nullptr,
                              Layout(grad_u), grad_B.data_ptr<scalar_t>(),
                              grad_C.data_ptr<scalar_t>(),
                              grad_A.data_ptr<scalar_t>() + k * channels * N,
                              grad_D.data_ptr<scalar_t>() + k * channels,
                              delta_bias.has_value() ? grad_bias.data_ptr<scalar_t>() + k * channels
                                                     : nullptr};
      scan_backward_rows<scalar_t, decltype(states)::value>(
          s, grad_out.data_ptr<scalar_t>(), Layout(grad_out), optional_ptr<scalar_t>(grad_last),
          g, b0, b1);
    });
    });
  });
  auto present = [](bool yes, torch::Tensor t) {
    return yes ? c10::optional<torch::Tensor>(t) : c10::nullopt;
  };
  return {grad_u, grad_delta, grad_A.sum(0), grad_B.transpose(1, 2), grad_C.transpose(1, 2),
          present(D.has_value(), grad_D.sum(0)), present(z.has_value(), grad_z),
          present(delta_bias.has_value(), grad_bias.sum(0))};
}

// ---------------------------------------------------------------- causal convolution
//
// Causal depthwise convolution on the CPU, optionally followed by silu:
//
//   pre[b, d, t] = bias[d] + sum_k weight[d, k] x[b, d, t - (W - 1) + k]   (x = 0 before t = 0)
//   out = silu(pre) or pre
//
// x (batch, channels, L) with unit channel stride and any other strides (the Mamba block
// passes a view of in_proj's (batch, L, 2 d_inner) output; anything else is copied to that
// layout first); out and grad_x are (batch, channels, L) views of (batch, L, channels)
// tensors, the layout the selective scan and x_proj read, so no copy is made on either
// side. Loops run over channels innermost; threads split the batch. Backward recomputes pre.
namespace {

template <typename scalar_t>
struct Conv {
  const scalar_t *x, *weight_t, *bias;  // weight_t: (W, channels); bias may be null
  int64_t x_b, x_l;                     // x's batch and time strides
  int64_t batch, channels, length, width;
  bool silu;
};

// pre of batch row b, all time steps, into a (L, channels) buffer.
template <typename scalar_t>
void preactivation(const Conv<scalar_t>& c, int64_t b, scalar_t* pre) {
  const int64_t D = c.channels;
  for (int64_t t = 0; t < c.length; ++t) {
    scalar_t* row = pre + t * D;
    if (c.bias) {
      std::copy(c.bias, c.bias + D, row);
    } else {
      std::fill(row, row + D, scalar_t(0));
    }
    for (int64_t k = std::max<int64_t>(0, c.width - 1 - t); k < c.width; ++k) {
      const scalar_t* x = c.x + b * c.x_b + (t - (c.width - 1) + k) * c.x_l;
      const scalar_t* w = c.weight_t + k * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) row[d] += w[d] * x[d];
    }
  }
}

template <typename scalar_t>
void conv_forward_rows(const Conv<scalar_t>& c, scalar_t* out, int64_t b0, int64_t b1) {
  const int64_t rows = c.length * c.channels;
  for (int64_t b = b0; b < b1; ++b) {
    scalar_t* o = out + b * rows;  // (L, channels) of batch row b
    preactivation(c, b, o);
    if (c.silu) {
#pragma omp simd
      for (int64_t i = 0; i < rows; ++i) o[i] *= sigmoid(o[i]);
    }
  }
}

// grad_out and grad_x (batch, L, channels) contiguous; grad_weight_t (W, channels) and
// grad_bias (channels): this thread's accumulators.
template <typename scalar_t>
void conv_backward_rows(const Conv<scalar_t>& c, const scalar_t* grad_out, scalar_t* grad_x,
                        scalar_t* grad_weight_t, scalar_t* grad_bias, int64_t b0, int64_t b1) {
  const int64_t D = c.channels, L = c.length, W = c.width;
  std::vector<scalar_t> grad_pre(L * D);  // (L, channels)
  scalar_t* gp = grad_pre.data();
  for (int64_t b = b0; b < b1; ++b) {
    preactivation(c, b, gp);  // pre, overwritten in place by dL/dpre
    const scalar_t* go = grad_out + b * L * D;
    if (c.silu) {
#pragma omp simd
      for (int64_t i = 0; i < L * D; ++i) {
        const scalar_t s = sigmoid(gp[i]);
        gp[i] = go[i] * s * (scalar_t(1) + gp[i] * (scalar_t(1) - s));
      }
    } else {
      std::copy(go, go + L * D, gp);
    }
    scalar_t* gx = grad_x + b * L * D;
    std::fill(gx, gx + L * D, scalar_t(0));
    for (int64_t t = 0; t < L; ++t) {
      const scalar_t* row = gp + t * D;
      if (grad_bias) {
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) grad_bias[d] += row[d];
      }
      // x[t - (W - 1) + k] fed pre[t] through weight[:, k].
      for (int64_t k = std::max<int64_t>(0, W - 1 - t); k < W; ++k) {
        const int64_t source = t - (W - 1) + k;
        const scalar_t* x = c.x + b * c.x_b + source * c.x_l;
        const scalar_t* w = c.weight_t + k * D;
        scalar_t* gw = grad_weight_t + k * D;
        scalar_t* g = gx + source * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          gw[d] += row[d] * x[d];
          g[d] += row[d] * w[d];
        }
      }
    }
  }
}

template <typename scalar_t>
Conv<scalar_t> conv_of(const torch::Tensor& x, const torch::Tensor& weight_t,
                       const c10::optional<torch::Tensor>& bias, bool silu) {
  return {x.data_ptr<scalar_t>(), weight_t.data_ptr<scalar_t>(),
          bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr, x.stride(0), x.stride(2),
          x.size(0), x.size(1), x.size(2), weight_t.size(0), silu};
}

// x with unit channel stride: itself, or a copy in the (batch, L, channels) layout.
torch::Tensor channel_contiguous(const torch::Tensor& x) {
  return x.stride(1) == 1 ? x : x.transpose(1, 2).contiguous().transpose(1, 2);
}

}  // namespace

// x (batch, channels, L), weight (channels, W), bias (channels): out (batch, channels, L).
torch::Tensor conv_forward(torch::Tensor x, torch::Tensor weight,
                           c10::optional<torch::Tensor> bias, bool silu) {
  x = channel_contiguous(x);
  const auto weight_t = weight.t().contiguous();
  if (bias.has_value()) bias = bias->contiguous();
  auto out = channels_last_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_forward", [&] {
    const auto c = conv_of<scalar_t>(x, weight_t, bias, silu);
    at::parallel_for(0, c.batch, 1, [&](int64_t b0, int64_t b1) {
      conv_forward_rows<scalar_t>(c, out.data_ptr<scalar_t>(), b0, b1);
    });
  });
  return out;
}

// Returns the gradients of x (batch, channels, L), weight (channels, W) and bias (None
// without one).
std::vector<c10::optional<torch::Tensor>> conv_backward(torch::Tensor x, torch::Tensor weight,
                                                        c10::optional<torch::Tensor> bias,
                                                        bool silu, torch::Tensor grad_out) {
  x = channel_contiguous(x);
  const auto weight_t = weight.t().contiguous();
  if (bias.has_value()) bias = bias->contiguous();
  const int64_t threads = at::get_num_threads(), channels = x.size(1), width = weight.size(1);
  const auto grad_out_rows = grad_out.transpose(1, 2).contiguous();  // (batch, L, channels)
  auto grad_x = channels_last_like(x);
  auto grad_weight_t = torch::zeros({threads, width, channels}, x.options());
  auto grad_bias = torch::zeros({threads, channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_backward", [&] {
    const auto c = conv_of<scalar_t>(x, weight_t, bias, silu);
    at::parallel_for(0, c.batch, 1, [&](int64_t b0, int64_t b1) {
      const int64_t k = at::get_thread_num();
      conv_backward_rows<scalar_t>(
          c, grad_out_rows.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(),
          grad_weight_t.data_ptr<scalar_t>() + k * width * channels,
          bias.has_value() ? grad_bias.data_ptr<scalar_t>() + k * channels : nullptr, b0, b1);
    });
  });
  return {grad_x, grad_weight_t.sum(0).t().contiguous(),
          bias.has_value() ? c10::optional<torch::Tensor>(grad_bias.sum(0)) : c10::nullopt};
}

// ---------------------------------------------------------------- dropout
//
// Element i of a contiguous tensor is kept iff hash(seed, i) >= threshold, where the hash is
// two rounds of the lowbias32 integer mixer keyed by the seed and i's high 32 bits:
//   key1 = mix(seed_lo ^ mix(seed_hi + 0x9e3779b9 * hi)),  key2 = mix(key1 ^ 0x85ebca6b),
//   r = mix(mix(lo ^ key1) + key2),
// and kept elements are scaled by 1 / (1 - p). The mask is a function of (seed, i) only: no
// state, any split over threads, and backward regenerates it instead of storing it.

namespace {

inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

template <typename scalar_t>
void dropout_range(const scalar_t* x, scalar_t* out, int64_t begin, int64_t end, uint64_t seed,
                   uint64_t threshold, scalar_t scale) {
  const uint32_t seed_lo = static_cast<uint32_t>(seed), seed_hi = static_cast<uint32_t>(seed >> 32);
  for (int64_t start = begin; start < end;) {
    const uint64_t hi = static_cast<uint64_t>(start) >> 32;  // constant over a 2^32 block
    const int64_t stop = std::min<int64_t>(end, static_cast<int64_t>((hi + 1) << 32));
    const uint32_t key1 = mix32(seed_lo ^ mix32(seed_hi + 0x9e3779b9U * static_cast<uint32_t>(hi)));
    const uint32_t key2 = mix32(key1 ^ 0x85ebca6bU);
#pragma omp simd
    for (int64_t i = start; i < stop; ++i) {
      const uint32_t r = mix32(mix32(static_cast<uint32_t>(i) ^ key1) + key2);
      out[i] = static_cast<uint64_t>(r) >= threshold ? x[i] * scale : scalar_t(0);
    }
    start = stop;
  }
}

}  // namespace

// x any shape (read as contiguous), p in [0, 1), seed: x with the mask of (seed, p) applied
// and kept elements scaled by 1 / (1 - p); also dropout's backward on the gradient.
torch::Tensor dropout(torch::Tensor x, double p, int64_t seed) {
  TORCH_CHECK(p >= 0 && p < 1, "dropout: p must be in [0, 1), got ", p);
  x = x.contiguous();
  auto out = torch::empty_like(x);
  const uint64_t threshold = static_cast<uint64_t>(std::ldexp(p, 32));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dropout", [&] {
    const scalar_t scale = static_cast<scalar_t>(1.0 / (1.0 - p));
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t b, int64_t e) {
      dropout_range<scalar_t>(in, o, b, e, static_cast<uint64_t>(seed), threshold, scale);
    });
  });
  return out;
}

// ---------------------------------------------------------------- module

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  const auto no_gil = py::call_guard<py::gil_scoped_release>();
  m.def("scan_forward", &scan_forward, "selective scan forward (CPU)", no_gil);
  m.def("scan_backward", &scan_backward, "selective scan backward (CPU)", no_gil);
  m.def("conv_forward", &conv_forward, "causal depthwise conv1d forward (CPU)", no_gil);
  m.def("conv_backward", &conv_backward, "causal depthwise conv1d backward (CPU)", no_gil);
  m.def("dropout", &dropout, "dropout with a counter-based mask (CPU)", no_gil);
}
