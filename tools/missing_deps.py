"""Print the pip requirements this environment still lacks, space separated.

`missing_deps.py [TORCH_SPEC] required`: what building and testing need (torch, build tools, pytest).
`missing_deps.py [TORCH_SPEC] optional`: extras for the repro jobs and sklearn cross-checks; a machine
without a package registry (the GPU machine) may skip them, and the tests that need them skip too.
Anything already importable is left alone, so a machine with everything preinstalled installs nothing.
"""
import importlib.util
import shutil
import subprocess
import sys


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def cmake_ok() -> bool:
    """scikit-build-core needs cmake >= 3.26; the system one may be older."""
    if have("cmake"):
        return True
    exe = shutil.which("cmake")
    if not exe:
        return False
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split()
    try:
        major, minor = (int(v) for v in out[2].split(".")[:2])
    except (IndexError, ValueError):
        return False
    return (major, minor) >= (3, 26)


def main() -> None:
    torch_spec = sys.argv[1] if len(sys.argv) > 1 else "torch==2.13.0"
    which = sys.argv[2] if len(sys.argv) > 2 else "required"
    need = []
    if which == "required":
        if not have("torch"):
            need.append(torch_spec)
        if not cmake_ok():
            need.append("cmake>=3.26")
        if not (have("ninja") or shutil.which("ninja")):
            need.append("ninja")
        modules = [("scikit_build_core", "scikit-build-core>=0.10"), ("pybind11", "pybind11>=2.12"), ("pytest", "pytest")]
    else:
        modules = [("numpy", "numpy"), ("sklearn", "scikit-learn"), ("matplotlib", "matplotlib"), ("tqdm", "tqdm"), ("h5py", "h5py")]
    need += [req for module, req in modules if not have(module)]
    sys.stdout.write(" ".join(need))


if __name__ == "__main__":
    main()
