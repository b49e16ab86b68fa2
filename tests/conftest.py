import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
CI_RUN = ROOT / "_build" / "ci"          # executed notebooks of the test run; the docs check renders them

os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))
os.environ["CONTRASTLAB_PLAIN"] = "1"

def pytest_configure(config):
    config.addinivalue_line("markers", "notebooks: executes notebooks with papermill (slow)")
