"""The source distribution holds everything the extensions build from (CMakeLists.txt and every file of csrc/)."""

import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sdist_carries_the_kernel_sources(tmp_path):
    run = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    (archive,) = tmp_path.glob("nepenthe-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.is_file()}
    assert sources, "csrc/ holds the kernel sources"
    assert sources <= names, f"missing from the sdist: {sorted(sources - names)}"
    assert "CMakeLists.txt" in names
    assert not any(n.endswith((".o", ".so")) for n in names)
