"""Process-wide settings: the CPU lists of WACLOUD_SERVER_CPUS / WACLOUD_WORKER_CPUS."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from wacloud.hosting.process import parse_cpus, resolve_auto_cpus


def test_cpu_lists_take_ids_ranges_and_mixes() -> None:
    assert parse_cpus("") == set()
    assert parse_cpus("0") == {0}
    assert parse_cpus("1, 3") == {1, 3}
    assert parse_cpus("0,2-4") == {0, 2, 3, 4}


@pytest.mark.parametrize("spec", ["a", "1-", "-2", "1;2", "0-x"])
def test_a_bad_cpu_list_is_refused_with_an_example(spec: str) -> None:
    with pytest.raises(ValueError, match=re.escape("use e.g. 0 or 1,3 or 2-5")):
        parse_cpus(spec)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_a_worker_started_by_a_pinned_server_is_unpinned_when_it_has_no_list() -> None:
    code = ("import os; from wacloud.hosting.process import pin_to_cpus; "
            "pin_to_cpus('0'); print(sorted(os.sched_getaffinity(0)));"
            "pin_to_cpus('', unpin_if_empty=True); print(sorted(os.sched_getaffinity(0)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "[0]"
    assert out[1] == str(list(range(os.cpu_count() or 1)))


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and two CPUs")
def test_auto_gives_the_server_one_cpu_and_the_workers_the_others() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    rest = ",".join(map(str, allowed[1:]))
    assert resolve_auto_cpus("auto", "") == (str(allowed[0]), rest)
    assert resolve_auto_cpus("auto", "auto") == (str(allowed[0]), rest)
    assert resolve_auto_cpus("auto", "7") == (str(allowed[0]), "7")
    assert resolve_auto_cpus("", "") == ("", "")
    assert resolve_auto_cpus("1", "0") == ("1", "0")
