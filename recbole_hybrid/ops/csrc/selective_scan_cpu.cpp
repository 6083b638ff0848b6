// Selective scan on the CPU: the recurrence of one (batch row, channel) pair at a time, its
// d_state-long state kept in a small per-thread buffer, so no (batch, d_inner, d_state)
// tensor is ever written to memory.
//
//   h_t = exp2(dt_t * A2) * h_{t-1} + dt_t * u_t * B_t,   y_t = <h_t, C_t>     (A2 = A log2 e)
//
// Layouts (contiguous): dt, u, grad_y: (batch, d_inner, L); A, A2: (d_inner, d_state);
// B, C: (batch, L, d_state). Threads split the batch.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// 2^x for x <= 0. Double: the library's. Float: inlined so that loops over d_state vectorize:
// x = k + f with k = round(x), |f| <= 1/2, 2^f by its Taylor series to degree 7 (relative
// error below 1e-8), 2^k built in the exponent bits; below 2^-126 the result is 0.
inline double exp2_nonpositive(double x) { return std::exp2(x); }

inline float exp2_nonpositive(float x) {
  const bool underflow = x < -126.0f;
  x = underflow ? -126.0f : x;
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
  return underflow ? 0.0f : p * scale;
}

template <typename scalar_t>
void forward_rows(const scalar_t* dt, const scalar_t* u, const scalar_t* A2, const scalar_t* B,
                  const scalar_t* C, scalar_t* y, scalar_t* last, int64_t b0, int64_t b1,
                  int64_t D, int64_t L, int64_t N) {
  std::vector<scalar_t> h(N);
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t d = 0; d < D; ++d) {
      const int64_t row = (b * D + d) * L;
      const scalar_t* a2 = A2 + d * N;
      std::fill(h.begin(), h.end(), scalar_t(0));
      for (int64_t t = 0; t < L; ++t) {
        const scalar_t step = dt[row + t];
        const scalar_t input = step * u[row + t];
        const scalar_t* Bt = B + (b * L + t) * N;
        const scalar_t* Ct = C + (b * L + t) * N;
        scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          h[n] = exp2_nonpositive(step * a2[n]) * h[n] + input * Bt[n];
          acc += h[n] * Ct[n];
        }
        y[row + t] = acc;
      }
      std::copy(h.begin(), h.end(), last + (b * D + d) * N);
    }
  }
}

template <typename scalar_t>
void backward_rows(const scalar_t* dt, const scalar_t* u, const scalar_t* A, const scalar_t* A2,
                   const scalar_t* B, const scalar_t* C, const scalar_t* grad_y,
                   const scalar_t* grad_last, scalar_t* grad_dt, scalar_t* grad_u,
                   scalar_t* grad_A, scalar_t* grad_B, scalar_t* grad_C, int64_t b0, int64_t b1,
                   int64_t D, int64_t L, int64_t N) {
  // states[t] is the state before step t (states[0] = 0); decays[t] = exp2(dt_t * A2).
  std::vector<scalar_t> states((L + 1) * N), decays(L * N), adjoint(N);
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t d = 0; d < D; ++d) {
      const int64_t row = (b * D + d) * L;
      const scalar_t* a = A + d * N;
      const scalar_t* a2 = A2 + d * N;
      scalar_t* gA = grad_A + d * N;
      std::fill(states.begin(), states.begin() + N, scalar_t(0));
      for (int64_t t = 0; t < L; ++t) {
        const scalar_t step = dt[row + t];
        const scalar_t input = step * u[row + t];
        const scalar_t* Bt = B + (b * L + t) * N;
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t decay = exp2_nonpositive(step * a2[n]);
          decays[t * N + n] = decay;
          states[(t + 1) * N + n] = decay * states[t * N + n] + input * Bt[n];
        }
      }
      for (int64_t n = 0; n < N; ++n) {
        adjoint[n] = grad_last ? grad_last[(b * D + d) * N + n] : scalar_t(0);
      }
      for (int64_t t = L - 1; t >= 0; --t) {
        const scalar_t step = dt[row + t];
        const scalar_t input = step * u[row + t];
        const scalar_t g = grad_y[row + t];
        const scalar_t* Bt = B + (b * L + t) * N;
        const scalar_t* Ct = C + (b * L + t) * N;
        scalar_t* gBt = grad_B + (b * L + t) * N;
        scalar_t* gCt = grad_C + (b * L + t) * N;
        const scalar_t* after = states.data() + (t + 1) * N;
        const scalar_t* before = states.data() + t * N;
        const scalar_t* decay = decays.data() + t * N;
        scalar_t adjoint_B = 0, through_decay_A = 0;
#pragma omp simd reduction(+ : adjoint_B, through_decay_A)
        for (int64_t n = 0; n < N; ++n) {
          gCt[n] += g * after[n];
          const scalar_t lam = adjoint[n] + g * Ct[n];
          adjoint_B += lam * Bt[n];
          gBt[n] += lam * input;
          const scalar_t w = lam * before[n] * decay[n];
          through_decay_A += w * a[n];
          gA[n] += w * step;
          adjoint[n] = lam * decay[n];
        }
        grad_dt[row + t] = u[row + t] * adjoint_B + through_decay_A;
        grad_u[row + t] = step * adjoint_B;
      }
    }
  }
}

}  // namespace

// Returns y (batch, d_inner, L) and the last state (batch, d_inner, d_state).
std::vector<torch::Tensor> scan_forward(torch::Tensor dt, torch::Tensor u, torch::Tensor A2,
                                        torch::Tensor B, torch::Tensor C) {
  const int64_t batch = dt.size(0), D = dt.size(1), L = dt.size(2), N = A2.size(1);
  auto y = torch::empty_like(dt);
  auto last = torch::empty({batch, D, N}, dt.options());
  AT_DISPATCH_FLOATING_TYPES(dt.scalar_type(), "scan_forward", [&] {
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      forward_rows<scalar_t>(dt.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                             A2.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(),
                             C.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                             last.data_ptr<scalar_t>(), b0, b1, D, L, N);
    });
  });
  return {y, last};
}

// Returns the gradients of dt, u (batch, d_inner, L), A (d_inner, d_state), B, C
// (batch, L, d_state). grad_last may be undefined (no gradient for the last state).
std::vector<torch::Tensor> scan_backward(torch::Tensor dt, torch::Tensor u, torch::Tensor A,
                                         torch::Tensor A2, torch::Tensor B, torch::Tensor C,
                                         torch::Tensor grad_y, c10::optional<torch::Tensor> grad_last) {
  const int64_t batch = dt.size(0), D = dt.size(1), L = dt.size(2), N = A.size(1);
  auto grad_dt = torch::empty_like(dt);
  auto grad_u = torch::empty_like(dt);
  auto grad_B = torch::zeros_like(B);
  auto grad_C = torch::zeros_like(C);
  // One grad_A accumulator per thread; summed at the end.
  auto grad_A_parts = torch::zeros({at::get_num_threads(), D, N}, A.options());
  AT_DISPATCH_FLOATING_TYPES(dt.scalar_type(), "scan_backward", [&] {
    const scalar_t* last_ptr = grad_last.has_value() ? grad_last->data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      scalar_t* grad_A = grad_A_parts.data_ptr<scalar_t>() + at::get_thread_num() * D * N;
      backward_rows<scalar_t>(dt.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                              A.data_ptr<scalar_t>(), A2.data_ptr<scalar_t>(),
                              B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(),
                              grad_y.data_ptr<scalar_t>(), last_ptr,
                              grad_dt.data_ptr<scalar_t>(), grad_u.data_ptr<scalar_t>(), grad_A,
                              grad_B.data_ptr<scalar_t>(), grad_C.data_ptr<scalar_t>(), b0, b1, D,
                              L, N);
    });
  });
  return {grad_dt, grad_u, grad_A_parts.sum(0), grad_B, grad_C};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_forward", &scan_forward, "selective scan forward (CPU)",
        py::call_guard<py::gil_scoped_release>());
  m.def("scan_backward", &scan_backward, "selective scan backward (CPU)",
        py::call_guard<py::gil_scoped_release>());
}
