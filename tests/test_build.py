"""The build itself: build info, the import-time torch check, the wheel, the CUDA compile check."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import phasor

ROOT = Path(__file__).resolve().parents[1]


def test_build_info_describes_the_binary():
    info = phasor.build_info
    assert info["torch_version"] == torch.__version__
    assert isinstance(info["with_cuda"], bool)
    assert info["with_cuda"] == (torch.version.cuda is not None and bool(info["cuda_archs"]))
    for key in ("cxx_compiler", "cxx_flags", "build_type", "openmp", "cpu_isas", "nvcc_version"):
        assert key in info
    assert phasor._C.cpu_isa() in info["cpu_isas"].split(",")
    # at::parallel_for only runs in parallel in code compiled with OpenMP: the kernels must be
    assert info["openmp"] is True


def test_every_op_is_a_torch_op():
    for name in ("rot_bn_fwd", "rot_bn_bwd", "rot_ln_fwd", "rot_ln_bwd"):
        assert hasattr(torch.ops.phasor, name)


def test_import_under_another_torch_says_how_to_rebuild():
    code = textwrap.dedent("""
        import torch
        torch.__version__ = "0.0.0+other"
        try:
            import phasor
        except ImportError as e:
            print("MSG:", e)
        else:
            print("MSG: imported")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    msg = out.stdout
    assert "built for torch" in msg and "0.0.0+other" in msg and "--no-build-isolation" in msg, out.stdout + out.stderr


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_an_op(tmp_path):
    """`make wheel` equivalent, then a brand-new venv that sees only torch (no editable phasor)."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(dist),
                    str(ROOT)], check=True, timeout=1800)
    wheels = list(dist.glob("phasor-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # torch and its dependencies stay visible through plain path entries: the .pth files inside those
    # directories (the editable phasor's among them) are not run, so only the wheel provides phasor
    host_sites = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "host_packages.pth").write_text("\n".join(host_sites) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheels[0])], check=True, timeout=600)
    code = textwrap.dedent("""
        import torch, phasor
        assert "venv" in phasor.__file__, phasor.__file__
        psi, chi, rb = torch.randn(2, 4, 3, 5, 5), torch.rand(2, 3, 5, 5), torch.randn(4, 3)
        rf = phasor.rotating_features
        out = rf.rot_bn_epilogue(psi, chi, rb, torch.ones(3), torch.zeros(3), None, None, True)
        ref = rf.reference.rot_bn_epilogue_ref(psi, chi, rb, torch.ones(3), torch.zeros(3), None, None, True)
        torch.testing.assert_close(out, ref)
        print("OK", phasor.__file__)
    """)
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists(),
                    reason="no nvcc on this machine")
def test_cuda_sources_compile():
    """`make cuda-check`: every .cu file compiles for sm_80 and sm_90a (compile only on a CPU torch)."""
    if torch.version.cuda is not None and phasor.build_info["with_cuda"]:
        pytest.skip("a CUDA build of phasor compiled every .cu already")
    env = dict(os.environ)
    out = subprocess.run(["bash", str(ROOT / "tools" / "cuda_check.sh"), sys.executable], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=3000)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]


def test_repro_help_lists_the_systems(capsys):
    from phasor import cli

    assert cli.main(["repro", "--help"]) == 0
    text = capsys.readouterr().out
    assert all(system in text for system in cli.REPROS)
