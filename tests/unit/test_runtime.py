"""flows.runtime.keep_freed_memory: the allocator settings of a one-shot flow command."""

import os
import subprocess
import sys

import pytest

from flows.warm_runner import warm_command

_PROBE = """
import ctypes, sys
{before}
from flows.runtime import keep_freed_memory
kept = keep_freed_memory() if {keep} else False
import numpy as np, pyarrow as pa


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
array = np.ones(40 * 2**20 // 8)
# bytes glibc holds in mmap'd chunks (handed back to the kernel when freed)
mapped = libc.mallinfo2().hblkhd
print(kept, pa.default_memory_pool().backend_name, mapped >= 40 * 2**20)
"""


def _probe(before: str, keep: bool) -> list[str]:
    # in a process of its own: the settings last for the whole process
    return subprocess.run(
        [sys.executable, "-c", _PROBE.format(before=before, keep=keep)],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"},
    ).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
@pytest.mark.parametrize("before", ["", "import pyarrow"])
def test_flow_commands_keep_freed_memory_and_arrow_shares_the_heap(before):
    # a 40 MB array comes from the heap, not from pages of its own unmapped when it is freed
    assert _probe(before, keep=True) == ["True", "system", "False"]
    # by default it does (and Arrow has a pool of its own)
    default = _probe(before, keep=False)
    assert default[0] == "False" and default[1] != "system" and default[2] == "True"


def test_only_flow_commands_get_them():
    # run_app applies them to the commands warm_command names (train, run, monitor)
    assert warm_command(["train", "--data", "x.csv"]) == "train"
    assert warm_command(["-v", "run"]) == "run"
    assert warm_command(["ui"]) is None and warm_command(["serve"]) is None
