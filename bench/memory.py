"""Memory that belongs to a *group* of processes: what the system gets back when they all end.

USS counts the pages mapped by one process only. A job is two processes (the
job process and the attempt it forked), and fork shares every page between
them until one writes it, so the USS of each undercounts the job: a page both
still share is unique to neither. ``group_uss`` counts each physical page
mapped by the group and by nothing else (Linux, root: /proc/PID/pagemap and
/proc/kpagecount). Elsewhere it falls back to the sum of PSS.
"""

from __future__ import annotations

import os
import struct
from collections import Counter

PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = 1 << 63
_PFN_MASK = (1 << 55) - 1


def _frames(pid: int) -> list[int]:
    """Physical frame numbers of the pages this process has in memory (one per mapping)."""
    frames = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            span = line.split(None, 1)[0]
            start, end = (int(x, 16) for x in span.split("-"))
            if line.rstrip().endswith("[vsyscall]"):
                continue
            pagemap.seek(start // PAGE * 8)
            data = pagemap.read((end - start) // PAGE * 8)
            for (entry,) in struct.iter_unpack("Q", data):
                if entry & _PRESENT and entry & _PFN_MASK:
                    frames.append(entry & _PFN_MASK)
    return frames


def group_uss(pids: list[int]) -> int:
    """Bytes of memory mapped by these processes and no other."""
    try:
        refs: Counter[int] = Counter()
        for pid in pids:
            refs.update(_frames(pid))
        unique = 0
        with open("/proc/kpagecount", "rb") as counts:
            for pfn, mine in refs.items():
                counts.seek(pfn * 8)
                (mapped,) = struct.unpack("Q", counts.read(8))
                if mapped <= mine:
                    unique += 1
        return unique * PAGE
    except (OSError, struct.error):
        import psutil

        return sum(psutil.Process(pid).memory_full_info().pss for pid in pids)
