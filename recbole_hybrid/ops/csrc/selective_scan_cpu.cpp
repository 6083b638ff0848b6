// Selective scan on the CPU, with the D skip and the silu gate fused in. One (batch row,
// channel) pair at a time, its d_state-long state in a small per-thread buffer, so no
// (batch, d_inner, d_state) tensor is ever written to memory:
//
//   h_t  = exp2(dt_t * A2) * h_{t-1} + dt_t * u_t * B_t   (A2 = A log2 e, h_0 = 0)
//   y_t  = <h_t, C_t> + D u_t,   out_t = y_t * z_t * sigmoid(z_t)
//
// The caller computes dt = softplus(delta + bias), sigmoid(z) and softplus' (vectorised
// PyTorch beats scalar exp/log1p here); everything else, gradients included, happens here.
// Backward recomputes a row's states, then runs the adjoint recurrence in reverse.
// Layouts (contiguous): u, dt, z, out: (batch, d_inner, L); A, A2: (d_inner, d_state);
// B, C: (batch, L, d_state); D: (d_inner). Threads split the batch.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// 2^x. Double: the library's. Float: inlined so that loops over d_state vectorize:
// x = k + f with k = round(x), |f| <= 1/2, 2^f by its Taylor series to degree 7 (relative
// error below 1e-8), 2^k built in the exponent bits; below 2^-126 the result is 0, above
// 2^127 infinity. (With delta >= 0, as Mamba calls it, x = dt * A * log2 e is never positive.)
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

// Pointers to one call's tensors; optional ones are null.
template <typename scalar_t>
struct Scan {
  const scalar_t *u, *dt, *A, *A2, *B, *C, *D, *z, *z_sigmoid;
  int64_t batch, channels, length, states;
};

template <typename scalar_t>
void forward_rows(const Scan<scalar_t>& s, scalar_t* out, scalar_t* last, int64_t b0, int64_t b1) {
  const int64_t N = s.states, L = s.length;
  std::vector<scalar_t> h(N);
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t d = 0; d < s.channels; ++d) {
      const int64_t row = (b * s.channels + d) * L;
      const scalar_t* a2 = s.A2 + d * N;
      std::fill(h.begin(), h.end(), scalar_t(0));
      for (int64_t t = 0; t < L; ++t) {
        const scalar_t dt = s.dt[row + t];
        const scalar_t input = dt * s.u[row + t];
        const scalar_t* Bt = s.B + (b * L + t) * N;
        const scalar_t* Ct = s.C + (b * L + t) * N;
        scalar_t y = 0;
#pragma omp simd reduction(+ : y)
        for (int64_t n = 0; n < N; ++n) {
          h[n] = exp2_fast(dt * a2[n]) * h[n] + input * Bt[n];
          y += h[n] * Ct[n];
        }
        if (s.D) y += s.D[d] * s.u[row + t];
        if (s.z) y *= s.z[row + t] * s.z_sigmoid[row + t];
        out[row + t] = y;
      }
      std::copy(h.begin(), h.end(), last + (b * s.channels + d) * N);
    }
  }
}

// Gradients; the per-channel ones (A, D, bias) go to this thread's own accumulators.
template <typename scalar_t>
struct Grads {
  scalar_t *u, *delta, *B, *C, *z;  // z may be null
  scalar_t *A, *D, *bias;           // this thread's (d_inner, d_state) / (d_inner) rows
};

// dt_derivative: d dt / d delta (softplus'), or null; g.bias: null unless delta had a bias.
template <typename scalar_t>
void backward_rows(const Scan<scalar_t>& s, const scalar_t* dt_derivative, const scalar_t* grad_out,
                   const scalar_t* grad_last, const Grads<scalar_t>& g, int64_t b0, int64_t b1) {
  const int64_t N = s.states, L = s.length;
  // states[t]: the state before step t; decays[t] = exp2(dt_t A2); y[t]: <h_t, C_t> + D u_t.
  std::vector<scalar_t> states((L + 1) * N), decays(L * N), y(L), adjoint(N);
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t d = 0; d < s.channels; ++d) {
      const int64_t row = (b * s.channels + d) * L;
      const scalar_t* a = s.A + d * N;
      const scalar_t* a2 = s.A2 + d * N;
      std::fill(states.begin(), states.begin() + N, scalar_t(0));
      for (int64_t t = 0; t < L; ++t) {
        const scalar_t dt = s.dt[row + t];
        const scalar_t input = dt * s.u[row + t];
        const scalar_t* Bt = s.B + (b * L + t) * N;
        const scalar_t* Ct = s.C + (b * L + t) * N;
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
        y[t] = yt + (s.D ? s.D[d] * s.u[row + t] : scalar_t(0));
      }
      for (int64_t n = 0; n < N; ++n) {
        adjoint[n] = grad_last ? grad_last[(b * s.channels + d) * N + n] : scalar_t(0);
      }
      for (int64_t t = L - 1; t >= 0; --t) {
        const scalar_t dt = s.dt[row + t], u = s.u[row + t];
        scalar_t gy = grad_out[row + t];  // dL/dy_t, through the gate
        if (s.z) {
          const scalar_t zt = s.z[row + t], gate = s.z_sigmoid[row + t];
          g.z[row + t] = gy * y[t] * gate * (scalar_t(1) + zt * (scalar_t(1) - gate));
          gy *= zt * gate;
        }
        const scalar_t input = dt * u;
        const scalar_t* Bt = s.B + (b * L + t) * N;
        const scalar_t* Ct = s.C + (b * L + t) * N;
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
        g.u[row + t] = dt * adjoint_B + (s.D ? gy * s.D[d] : scalar_t(0));
        if (s.D) g.D[d] += gy * u;
        scalar_t grad_dt = u * adjoint_B + through_decay_A;
        if (dt_derivative) grad_dt *= dt_derivative[row + t];
        g.delta[row + t] = grad_dt;
        if (g.bias) g.bias[d] += grad_dt;
      }
    }
  }
}

template <typename scalar_t>
const scalar_t* optional_ptr(const c10::optional<torch::Tensor>& t) {
  return t.has_value() ? t->data_ptr<scalar_t>() : nullptr;
}

template <typename scalar_t>
Scan<scalar_t> scan_of(const torch::Tensor& u, const torch::Tensor& dt, const torch::Tensor& A,
                       const torch::Tensor& A2, const torch::Tensor& B, const torch::Tensor& C,
                       const c10::optional<torch::Tensor>& D, const c10::optional<torch::Tensor>& z,
                       const c10::optional<torch::Tensor>& z_sigmoid) {
  return {u.data_ptr<scalar_t>(), dt.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
          A2.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(),
          optional_ptr<scalar_t>(D), optional_ptr<scalar_t>(z), optional_ptr<scalar_t>(z_sigmoid),
          u.size(0), u.size(1), u.size(2), A.size(1)};
}

}  // namespace

// Returns out (batch, d_inner, L) and the last state (batch, d_inner, d_state).
std::vector<torch::Tensor> scan_forward(torch::Tensor u, torch::Tensor dt, torch::Tensor A,
                                        torch::Tensor A2, torch::Tensor B, torch::Tensor C,
                                        c10::optional<torch::Tensor> D,
                                        c10::optional<torch::Tensor> z,
                                        c10::optional<torch::Tensor> z_sigmoid) {
  auto out = torch::empty_like(u);
  auto last = torch::empty({u.size(0), u.size(1), A.size(1)}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "scan_forward", [&] {
    const auto s = scan_of<scalar_t>(u, dt, A, A2, B, C, D, z, z_sigmoid);
    at::parallel_for(0, s.batch, 1, [&](int64_t b0, int64_t b1) {
      forward_rows<scalar_t>(s, out.data_ptr<scalar_t>(), last.data_ptr<scalar_t>(), b0, b1);
    });
  });
  return {out, last};
}

// Returns the gradients of u, delta, A, B, C, D, z, delta_bias (None where absent): delta's
// is dt's times dt_derivative when given; delta_bias's its sum over batch and time.
std::vector<c10::optional<torch::Tensor>> scan_backward(
    torch::Tensor u, torch::Tensor dt, torch::Tensor A, torch::Tensor A2, torch::Tensor B,
    torch::Tensor C, c10::optional<torch::Tensor> D, c10::optional<torch::Tensor> z,
    c10::optional<torch::Tensor> z_sigmoid, c10::optional<torch::Tensor> dt_derivative,
    bool with_delta_bias, torch::Tensor grad_out, c10::optional<torch::Tensor> grad_last) {
  const int64_t threads = at::get_num_threads(), channels = u.size(1), N = A.size(1);
  auto grad_u = torch::empty_like(u);
  auto grad_delta = torch::empty_like(u);
  auto grad_B = torch::zeros_like(B);
  auto grad_C = torch::zeros_like(C);
  auto grad_z = z.has_value() ? torch::empty_like(u) : torch::Tensor();
  // Per-thread accumulators for the per-channel gradients, summed at the end.
  auto grad_A = torch::zeros({threads, channels, N}, A.options());
  auto grad_D = torch::zeros({threads, channels}, A.options());
  auto grad_bias = torch::zeros({threads, channels}, A.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "scan_backward", [&] {
    const auto s = scan_of<scalar_t>(u, dt, A, A2, B, C, D, z, z_sigmoid);
    at::parallel_for(0, s.batch, 1, [&](int64_t b0, int64_t b1) {
      const int64_t k = at::get_thread_num();
      const Grads<scalar_t> g{grad_u.data_ptr<scalar_t>(), grad_delta.data_ptr<scalar_t>(),
                              grad_B.data_ptr<scalar_t>(), grad_C.data_ptr<scalar_t>(),
                              z.has_value() ? grad_z.data_ptr<scalar_t>() : nullptr,
                              grad_A.data_ptr<scalar_t>() + k * channels * N,
                              grad_D.data_ptr<scalar_t>() + k * channels,
                              with_delta_bias ? grad_bias.data_ptr<scalar_t>() + k * channels
                                              : nullptr};
      backward_rows<scalar_t>(s, optional_ptr<scalar_t>(dt_derivative),
                              grad_out.data_ptr<scalar_t>(), optional_ptr<scalar_t>(grad_last), g,
                              b0, b1);
    });
  });
  auto present = [](bool yes, torch::Tensor t) {
    return yes ? c10::optional<torch::Tensor>(t) : c10::nullopt;
  };
  return {grad_u, grad_delta, grad_A.sum(0), grad_B, grad_C, present(D.has_value(), grad_D.sum(0)),
          present(z.has_value(), grad_z), present(with_delta_bias, grad_bias.sum(0))};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_forward", &scan_forward, "selective scan forward (CPU)",
        py::call_guard<py::gil_scoped_release>());
  m.def("scan_backward", &scan_backward, "selective scan backward (CPU)",
        py::call_guard<py::gil_scoped_release>());
}
