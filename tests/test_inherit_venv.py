"""tools/inherit_venv.py: a venv made from another venv's interpreter sees that venv's packages.

The GPU machine's python3 lives in a venv holding torch and the build tools, with no registry to
fetch them again; `make` builds .venv from it, so without this step the GPU build would fail.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True).stdout


def _purelib(python):
    return Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())


def test_child_venv_sees_the_parent_venvs_packages_and_its_own_first(tmp_path):
    parent, child = tmp_path / "parent", tmp_path / "child"
    _run(sys.executable, "-m", "venv", "--without-pip", parent)
    parent_py = parent / "bin" / "python"
    (_purelib(parent_py) / "phasor_probe_parent.py").write_text("WHERE = 'parent'\n")
    _run(parent_py, "-m", "venv", "--without-pip", "--system-site-packages", child)
    child_py = child / "bin" / "python"
    probe = "import phasor_probe_parent as m; print(m.WHERE)"
    # Without the step the child does not see it: venv links to the base interpreter only.
    assert subprocess.run([str(child_py), "-c", probe], capture_output=True).returncode != 0
    _run(parent_py, ROOT / "tools" / "inherit_venv.py", child)
    assert _run(child_py, "-c", probe).strip() == "parent"
    # The child's own packages come first.
    (_purelib(child_py) / "phasor_probe_parent.py").write_text("WHERE = 'child'\n")
    assert _run(child_py, "-c", probe).strip() == "child"


def test_no_op_outside_a_venv(tmp_path):
    base = _run(sys.executable, "-c", "import sys; print(sys.base_prefix)").strip()
    base_py = Path(base) / "bin" / "python3"
    child = tmp_path / "child"
    _run(sys.executable, "-m", "venv", "--without-pip", child)
    _run(base_py, ROOT / "tools" / "inherit_venv.py", child)
    assert not (_purelib(child / "bin" / "python") / "_phasor_parent_venv.pth").exists()
