"""Let a new venv see the packages of the venv its interpreter lives in.

`python -m venv --system-site-packages NEW` links NEW to the *base* interpreter's site-packages. When
`python` is itself a venv's interpreter (the GPU machine's python3 is /opt/torch/.venv/bin/python3,
which holds torch, cmake, ninja, pybind11 and scikit-build-core, with no package registry to fetch
them again), NEW would not see any of them. This writes a .pth file into NEW that adds the parent
venv's site-packages with site.addsitedir (so the .pth files in it are processed too), after NEW's
own: what NEW installs still wins.

usage: python tools/inherit_venv.py NEW_VENV    (run with the interpreter NEW_VENV was made from)
"""
import subprocess
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "_phasor_parent_venv.pth"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    if sys.prefix == sys.base_prefix:
        return 0  # not inside a venv: --system-site-packages already sees this interpreter's packages
    new_python = Path(sys.argv[1]) / "bin" / "python"
    new_site = subprocess.run([str(new_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    parent = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    lines = [f"import site; site.addsitedir({p!r})" for p in parent if Path(p).is_dir()]
    Path(new_site, PTH_NAME).write_text("\n".join(lines) + "\n")
    print(f"{sys.argv[1]}: sees the packages of the venv at {sys.prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
