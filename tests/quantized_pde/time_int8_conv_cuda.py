"""GPU timing of the int8 conv paths at the benchmark shapes (batch 8, 64 channels, 128 x 128, 1x1 and 3x3, ReLU +
requantise): the direct 1x1 and 3x3 kernels (PHASOR_QPDE_CUDA_KERNEL=mma1x1 / mma3x3), the prep + implicit GEMM (mma), dp4a, and the
cuDNN float16 conv (+ ReLU) on NCHW and channels_last tensors. Each time is a CUDA-graph replay of 20 calls (no
launch gaps), median of 5, in microseconds per call, with the DRAM bytes an ideal kernel moves (input + output) per
second. Not a test; one short run for a GPU session (~20 s).
Run: .venv/bin/python tests/quantized_pde/time_int8_conv_cuda.py
"""
import os

import torch
import torch.nn.functional as F

import phasor  # noqa: F401
from phasor.quantized_pde import ops

REPS, TRIALS = 20, 5


def time_graph(fn):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (cuDNN autotuning, allocations) outside the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPS):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(TRIALS):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / REPS)
    return sorted(ts)[TRIALS // 2]


def with_kernel(name, fn):
    old = os.environ.get("PHASOR_QPDE_CUDA_KERNEL")
    os.environ["PHASOR_QPDE_CUDA_KERNEL"] = name  # read on every call, i.e. at capture time
    try:
        return time_graph(fn), fn()
    finally:
        if old is None:
            del os.environ["PHASOR_QPDE_CUDA_KERNEL"]
        else:
            os.environ["PHASOR_QPDE_CUDA_KERNEL"] = old


def main():
    torch.backends.cudnn.benchmark = True
    print(torch.cuda.get_device_name(), torch.__version__)
    for N, C, H, k in ((8, 64, 128, 1), (8, 64, 128, 3)):
        g = torch.Generator().manual_seed(0)
        x = torch.randint(-128, 128, (N, C, H, H), generator=g, dtype=torch.int8).cuda()
        w = torch.randint(-127, 128, (C, C, k, k), generator=g, dtype=torch.int8).cuda()
        ws = (torch.rand(C, generator=g) * 0.002 + 0.001).cuda()
        b = torch.randn(C, generator=g).cuda()
        pad = k // 2
        run = lambda: ops.int8_conv2d(x, 0.02, -3, w, ws, b, 1, pad, 1, "relu", "int8", 0.5, -128)  # noqa: E731
        xh = ((x.float() + 3) * 0.02).half()
        wh = (w.float() * ws.view(-1, 1, 1, 1)).half()
        bh = b.half()
        xcl, wcl = xh.contiguous(memory_format=torch.channels_last), wh.contiguous(memory_format=torch.channels_last)
        int8_bytes = 2 * x.numel()  # in + out, int8
        res, outs = {}, {}
        for name in (["mma1x1"] if k == 1 else ["mma3x3"] if k == 3 else []) + ["mma", "dp4a"]:
            res[f"int8 {name}"], outs[name] = with_kernel(name, run)
        res["cuDNN fp16 NCHW"] = time_graph(lambda: torch.relu(F.conv2d(xh, wh, bh, 1, pad)))
        res["cuDNN fp16 channels_last"] = time_graph(lambda: torch.relu(F.conv2d(xcl, wcl, bh, 1, pad)))
        if k == 1:
            print("  mma1x1 == mma bitwise:", torch.equal(outs["mma1x1"], outs["mma"]))
        if k == 3:
            print("  mma3x3 == mma bitwise:", torch.equal(outs["mma3x3"], outs["mma"]))
        print("  mma vs dp4a max |diff|:", (outs["mma"].int() - outs["dp4a"].int()).abs().max().item())
        base = res["cuDNN fp16 NCHW"]
        print(f"N={N} C={C} {H}x{H} k={k}:")
        for name, t in res.items():
            nbytes = int8_bytes * (2 if "fp16" in name else 1)
            print(f"  {name:28s} {t:8.2f} us  {nbytes / t / 1e3:7.0f} GB/s  {base / t:5.2f}x vs cuDNN fp16 NCHW")


if __name__ == "__main__":
    main()
