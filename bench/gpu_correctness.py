"""GPU correctness of the Triton kernels: fresh random logits, odd and realistic shapes, fp32/fp16/bf16,
against a float64 computation on the same device. Exits 1 on any failure. Used by gpu_check.sh."""
from __future__ import annotations

import sys

import torch

from klas.scoring.kl import kl_matrix

CASES = [(7, 5, 1001, 37), (3, 4, 513, 10), (41, 17, 4001, 1000), (36, 36, 50_000, 1000)]
TOL = {torch.float32: 1e-4, torch.float16: 1e-4, torch.bfloat16: 1e-4}  # abs and rel, vs float64


def oracle(src, tgt):
    ls = torch.log_softmax(src.double(), -1)
    lt = torch.log_softmax(tgt.double(), -1)
    p = ls.exp()
    k, n, _ = src.shape
    self_term = (p * ls).sum((1, 2))
    cross = torch.zeros(k, tgt.shape[0], dtype=torch.float64, device=src.device)
    for s in range(0, n, 2048):
        cross += p[:, s:s + 2048].reshape(k, -1) @ lt[:, s:s + 2048].reshape(tgt.shape[0], -1).T
    return (self_term[:, None] - cross) / n


def main() -> int:
    failures = 0
    print("| Ks | Kt | N | C | dtype | max error | ok |")
    print("|---:|---:|---:|---:|---|---:|---|")
    for ks, kt, n, c in CASES:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            src = (torch.randn(ks, n, c, device="cuda") * 3).to(dtype)
            tgt = (torch.randn(kt, n, c, device="cuda") * 3).to(dtype)
            got = kl_matrix(src, tgt, backend="triton").double()
            want = oracle(src.float(), tgt.float())
            err = (got - want).abs()
            ok = bool((err <= TOL[dtype] * (1 + want.abs())).all())
            failures += not ok
            print(f"| {ks} | {kt} | {n} | {c} | {str(dtype)[6:]} | {err.max():.1e} | {'yes' if ok else 'NO'} |")
    src = torch.randn(6, 20_000, 1000, device="cuda") * 10
    diag = kl_matrix(src, src + 1e-4 * torch.randn_like(src), backend="triton").diagonal()
    ok = bool(diag.min() >= -1e-5 and diag.abs().max() <= 1e-5)
    failures += not ok
    print(f"near-identical probes: diagonal in [{diag.min():.1e}, {diag.max():.1e}] -> {'ok' if ok else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
