"""Checks of tools/cuda_emu itself, on the small kernels of selftest_kernels.cu: the emulator must
compute warp and block collectives and tensor-core products correctly, and must expose the misuses
it claims to expose (reads of unwritten shared memory, deadlocks)."""
import pytest
import torch

from helpers import emulated_cuda_ops

pytestmark = [pytest.mark.cuda_emu, pytest.mark.slow]


@pytest.fixture(scope="module")
def emu():
    return emulated_cuda_ops("selftest")


def test_shuffles_and_block_barrier(emu):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    sums = emu.emu_block_sum(x)
    expected = torch.nn.functional.pad(x, (0, 96 * 11 - 1000)).view(11, 96).sum(1)
    torch.testing.assert_close(sums, expected, rtol=1e-5, atol=1e-5)


def test_unwritten_shared_memory_reads_as_nan(emu):
    assert torch.isnan(emu.emu_misuse(torch.empty(0), 0)).all()


def test_deadlock_is_an_error_not_a_hang(emu):
    with pytest.raises(RuntimeError, match="deadlock"):
        emu.emu_misuse(torch.empty(0), 1)


@pytest.mark.parametrize("schedule", ["forward", "reverse", "shuffle"])
def test_every_schedule_runs_correct_code_and_one_exposes_a_missing_barrier(emu, schedule, monkeypatch):
    monkeypatch.setenv("PHASOR_CUDA_EMU_SCHEDULE", schedule)
    x = torch.arange(128, dtype=torch.float32)
    assert torch.equal(emu.emu_reverse(x, True), x.flip(0))
    if schedule == "forward":  # thread 0 runs to its end before thread 127 has written
        assert not torch.equal(emu.emu_reverse(x, False), x.flip(0))


def test_ldmatrix_and_fp16_mma_give_the_matrix_product(emu):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(16, 16, generator=g).half()
    b = torch.randn(16, 8, generator=g).half()
    c = emu.emu_mma(a, b.t().contiguous())
    torch.testing.assert_close(c, a.float() @ b.float(), rtol=1e-6, atol=1e-5)


def test_int8_mma_gives_the_exact_product(emu):
    g = torch.Generator().manual_seed(2)
    a = torch.randint(-128, 128, (16, 32), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (32, 8), generator=g, dtype=torch.int8)
    c = emu.emu_mma_s8(a, b.t().contiguous())
    assert torch.equal(c, a.int() @ b.int())


def test_cluster_blocks_read_each_others_shared_memory(emu):
    out = emu.emu_cluster_ring(torch.empty(0), 12)
    block = torch.arange(12)
    rank = block % 4
    neighbour = block - rank + (rank + 1) % 4
    assert torch.equal(out, (neighbour * 100 + (neighbour % 4)).int())
