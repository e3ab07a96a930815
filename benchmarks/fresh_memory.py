"""What a first touch of memory costs on this machine, against memory the process has just freed.

The prepare stage's times follow the memory it touches as well as its work, and how much a first
touch costs depends on the page size. numpy asks the kernel for transparent huge pages (`madvise`)
for every array over 4 MiB; on these VMs a fresh 2 MiB page is rarely at hand (the guest hands
free memory back to its host) and assembling one costs several times what 4 KiB pages do. This
script allocates and fills the same amount of memory several times in one process and prints each
round's time and its ratio to the last (recycled) round:

    python benchmarks/fresh_memory.py [--mib 1024] [--rounds 4]
    NUMPY_MADVISE_HUGEPAGE=0 python benchmarks/fresh_memory.py     # the same with 4 KiB pages

Run it in a fresh process, after a few seconds of quiet: the first round is the fresh one.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def fill_seconds(mib: int) -> float:
    """Seconds to allocate `mib` MiB and write every byte once (the array is freed on return)."""
    start = time.perf_counter()
    block = np.ones(mib << 17)  # 8-byte floats: 2**17 per MiB
    seconds = time.perf_counter() - start
    del block
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="memory per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds; the last is the recycled reference")
    args = parser.parse_args()
    times = [fill_seconds(args.mib) for _ in range(args.rounds)]
    for number, seconds in enumerate(times, start=1):
        print(f"round {number}: {seconds:.2f} s for {args.mib} MiB, {seconds / times[-1]:.1f}x the last round")


if __name__ == "__main__":
    main()
