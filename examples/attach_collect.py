"""Part 2 of 2: attach to a session by id, wait for it, print results, clean up.

python examples/attach_collect.py SESSION_ID
"""

from __future__ import annotations

import sys

from starburst_executor import DetachedExecutor


def main(session_id: str) -> list[object]:
    ex = DetachedExecutor.attach(session_id)
    print(ex.status())
    outcomes = ex.collect(wait=True, timeout=600)
    values = [o.value for o in outcomes]
    print(f"{len(values)} results: {values}")
    ex.cleanup(force=True)
    return values


if __name__ == "__main__":
    main(sys.argv[1])
