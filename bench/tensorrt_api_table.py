"""Every TensorRT name the project uses, checked in the real Python bindings of 10.3, 10.13 and 11.4
(no GPU, no TensorRT libraries: the wheels import over stand-in libraries); prints a markdown table.

    python bench/tensorrt_api_table.py [WHEELS_FOLDER]      # default .whl/tensorrt, as .ci/run fetches

A cell reads "ok", or why the real name cannot serve as the project uses it (missing, read-only, other
arguments). The same check runs in the suite: tests/stages/deploy/test_tensorrt_api.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.stages.deploy.test_tensorrt_api import USED, VERSIONS, fits, used_with  # noqa: E402
from tests.tensorrt_api import bindings_environment  # noqa: E402


def main(wheels: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for version, prefix in VERSIONS.items():
            found = sorted(wheels.glob(prefix + "*.whl"))
            if not found:
                sys.exit(f"{wheels}: no {prefix}*.whl; fetch the wheels as .ci/run does")
            env = bindings_environment(found[0], version.split(".")[0], Path(scratch) / version, compiler)
            done = subprocess.run([sys.executable, str(REPO / "tests" / "tensorrt_api.py"), *USED],
                                  capture_output=True, text=True, env={**os.environ, **env}, check=True)
            results[version] = json.loads(done.stdout)
    versions = list(VERSIONS)
    print("| name | used as | " + " | ".join(f"{results[v]['version']}" for v in versions) + " |")
    print("| --- | --- |" + " --- |" * len(versions))
    for name, expected in USED.items():
        used = expected[0] + (f" ({', '.join(expected[1])})" if expected[0] in ("method", "class") else
                              f" ({expected[1]})" if len(expected) > 1 else "")
        cells = [(fits(expected, results[v]["names"][name]) or "ok") if name in used_with(v) else "not used"
                 for v in versions]
        print(f"| `{name}` | {used} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / ".whl" / "tensorrt")
