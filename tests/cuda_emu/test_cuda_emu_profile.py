"""Checks of the memory-access profile (tools/cuda_emu/runtime/cuda_emu_profile.h, access_profile.py)
on selftest kernels whose costs are known by hand: sectors of coalesced, strided and 16-byte global
accesses, bank conflicts of strided shared stores, and ldmatrix rows that collide on banks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cuda_emu, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "cuda_emu" / "selftest_kernels.cu"
STRIDES = (1, 8, 32, 33)

# Runs in a process of its own: the profiling build replaces torch's CPU allocator.
CHILD = """
import json, sys, torch
sys.path.insert(0, {tools!r})
import build
ns = getattr(torch.ops, build.load("selftest"))
x = torch.arange(32 * 40, dtype=torch.float32)
for stride in {strides!r}:
    with open({raw!r}, "a") as f:
        f.write(json.dumps({{"case": f"stride{{stride}}", "impl": "fused"}}) + "\\n")
    ns.emu_access_pattern(x, stride)
with open({raw!r}, "a") as f:
    f.write(json.dumps({{"case": "mma", "impl": "fused"}}) + "\\n")
ns.emu_mma(torch.randn(16, 16).half(), torch.randn(8, 16).half())
with open({raw!r}, "a") as f:
    f.write(json.dumps({{"case": "divergent", "impl": "fused"}}) + "\\n")
ns.emu_divergent_store(torch.empty(0))
"""


def _line_of(text: str) -> str:
    """selftest_kernels.cu:N of the (first) source line containing `text`."""
    for n, line in enumerate(SOURCE.read_text().splitlines(), 1):
        if text in line:
            return f"selftest_kernels.cu:{n}"
    raise AssertionError(f"{text!r} not in {SOURCE}")


def _run_profiled(raw: Path, **env) -> dict:
    sys.path.insert(0, str(ROOT / "tools" / "cuda_emu"))
    import access_profile
    raw.touch()
    env = {**{k: v for k, v in os.environ.items() if k not in ("PHASOR_CUDA_EMU_ASAN", "LD_PRELOAD")},
           "PHASOR_CUDA_EMU_PROFILE": str(raw), "PHASOR_CUDA_EMU_PROFILE_GROUPS": "1", **env}  # (not with ASan)
    code = CHILD.format(tools=str(ROOT / "tools" / "cuda_emu"), strides=STRIDES, raw=str(raw))
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=1800)
    return {r["case"]: r for r in access_profile.summarize(raw)}


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "tools" / "cuda_emu"))
    import build
    if not build.available():
        pytest.skip("the CUDA toolkit's headers are needed to build the emulated kernels")
    return _run_profiled(tmp_path_factory.mktemp("profile") / "selftest.jsonl")


def test_folding_requests_in_while_the_kernel_runs_changes_nothing(profile, tmp_path):
    # a flush after every scheduler pass: requests split across passes must still be whole
    assert _run_profiled(tmp_path / "flushed.jsonl", PHASOR_CUDA_EMU_PROFILE_FLUSH="1") == profile


def _site(record, line, op, space):
    rows = [s for s in record["sites"] if s["line"].endswith(line) and s["op"] == op and s["space"] == space]
    assert len(rows) == 1, (line, op, space, record["sites"])
    return rows[0]


@pytest.mark.parametrize("stride", STRIDES)
def test_global_sectors_and_shared_bank_conflicts(profile, stride):
    r = profile[f"stride{stride}"]
    assert r["kernel"] == "access_pattern_kernel" and r["launches"] == 1
    coalesced = _site(r, _line_of("const float a = x[t];"), "load", "global")
    assert (coalesced["units"], coalesced["ideal"], coalesced["requests"]) == (4, 4, 1)
    strided = _site(r, _line_of("const float b = x[t * stride];"), "load", "global")
    # one lane per 32-byte sector once lanes are >= 32 bytes apart
    assert (strided["units"], strided["ideal"]) == ((4 if stride == 1 else 32), 4)
    vec = _site(r, _line_of("reinterpret_cast<const float4*>(x)[t]"), "load", "global")
    assert (vec["size"], vec["units"], vec["ideal"]) == (16, 16, 16)
    # banks (stride * lane) % 32: stride 8 -> 8 words per bank used, 32 -> all lanes on bank 0, 33 -> none shared
    conflict = {1: 1, 8: 8, 32: 32, 33: 1}[stride]
    store = _site(r, _line_of("tile[(t * stride) % (32 * 33)] = a + b;"), "store", "shared")
    assert (store["units"], store["ideal"]) == (conflict, 1)
    # the strided read and tile[0] (a broadcast: 1 wavefront) share a line: its row sums the two requests
    reads = _site(r, _line_of("out[t] = tile["), "load", "shared")
    assert (reads["requests"], reads["units"], reads["ideal"]) == (2, conflict + 1, 2)
    out = _site(r, _line_of("out[t] = tile["), "store", "global")
    assert (out["units"], out["ideal"]) == (4, 4)
    # distinct 32-byte sectors of the block: x[t], x[t * stride], the float4 view of x, and out
    x_sectors = {4 * t // 32 for t in range(32)} | {4 * t * stride // 32 for t in range(32)} | set(range(16))
    assert r["l2_sectors"] == len(x_sectors) + 4


def test_ldmatrix_rows_32_bytes_apart_conflict_two_ways(profile):
    r = profile["mma"]
    # rows of 16 halves (32 bytes): rows i and i + 4 of each 8x8 matrix share banks -> 2 wavefronts per phase
    rows = [s for s in r["sites"] if s["space"] == "shared" and s["op"] == "load" and s["size"] == 16]
    assert len(rows) == 2, r["sites"]  # the A and the B ldmatrix.x4
    for s in rows:
        assert (s["requests"], s["units"], s["ideal"]) == (1, 8, 4)
    a_load = _site(r, _line_of("sa[i] = a[i]"), "load", "global")  # 8 requests of 32 halves: 2 sectors each
    assert (a_load["size"], a_load["requests"], a_load["units"], a_load["ideal"]) == (2, 8, 16, 16)


def test_a_branch_inside_a_loop_is_flagged_divergent(profile):
    store = _site(profile["divergent"], _line_of("if (t < 8 * i) out[32 * i + t] = 1.f;"), "store", "global")
    assert store["divergent"]
    assert not any(s["divergent"] for case in ("stride8", "mma") for s in profile[case]["sites"])
