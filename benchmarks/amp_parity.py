"""The selective scan's precision per path and dtype, against float64: the table of the mixed
precision tests, in one run.

    TRITON_INTERPRET=1 .venv/bin/python benchmarks/amp_parity.py      # CPU: about a minute
    .venv/bin/python benchmarks/amp_parity.py                         # CUDA: the compiled paths

For each path (CPU: the C++ core, the PyTorch core, Triton under its interpreter; CUDA:
mamba_ssm's kernel where installed, Triton, this package's PyTorch path) and dtype (float32,
float16, bfloat16): the scan's inputs as the Mamba block makes them under autocast (u, delta,
B, C, z in the dtype; A, D, delta_bias float32; scan_common.make_inputs), the output and the
gradients of every input of a fixed random loss, each against the float64 reference
(scan_common.reference, a loop over time through autograd) on the same rounded inputs:
relative errors (norm of the difference / norm of the reference), the output's and the
largest of the eight gradients'.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scan_common import import_without_recbole, make_inputs, reference  # noqa: E402

import_without_recbole()
from recbole_hybrid.ops import backend, selective_scan  # noqa: E402
from recbole_hybrid.ops.selective_scan import CppCore  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def out_and_grads(scan, inputs):
    out = scan(*inputs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1),
                          dtype=torch.float64).to(out.device)
    loss = (out.double() * weights).sum()
    return out.detach().double().cpu(), [g.double().cpu() for g in torch.autograd.grad(loss, inputs)]


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def paths(device):
    """{name: scan(*inputs) -> out} of the paths that run on `device` here."""
    def on(impl):
        return lambda *x: selective_scan(*x, delta_softplus=True, impl=impl)

    if device == "cuda":
        found = {"PyTorch": on("torch")}
        if backend.kernel_available("triton"):
            found["Triton"] = on("triton")
        if backend.kernel_available(backend.SCAN_KERNEL):
            found["mamba_ssm kernel"] = on("kernel")
        return found

    def pytorch_core(*x):
        serves = CppCore.serves
        CppCore.serves = staticmethod(lambda tensor: False)
        try:
            return on("torch")(*x)
        finally:
            CppCore.serves = serves

    found = {"C++": on("torch"), "PyTorch": pytorch_core}
    if os.environ.get("TRITON_INTERPRET") == "1" and backend.kernel_available("triton"):
        found["Triton (interpreter)"] = on("triton")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--d_state", type=int, default=16)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, batch {args.batch}, length {args.length}, d_inner 128, d_state "
          f"{args.d_state}; relative errors against float64 on the same rounded inputs")
    print("| path | dtype | output | largest gradient (which) |")
    print("| --- | --- | --- | --- |")
    for name, scan in paths(device).items():
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            inputs = make_inputs(args.batch, args.length, device, args.d_state, dtype)
            exact = [x.detach().double().cpu().requires_grad_() for x in inputs]
            ref_out, ref_grads = out_and_grads(reference, exact)
            out, grads = out_and_grads(scan, inputs)
            errors = {n: relative(g, r) for n, g, r in zip(NAMES, grads, ref_grads)}
            worst = max(errors, key=errors.get)
            print(f"| {name} | {str(dtype).replace('torch.', '')} | {relative(out, ref_out):.1e} "
                  f"| {errors[worst]:.1e} ({worst}) |")


if __name__ == "__main__":
    main()
