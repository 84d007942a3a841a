"""What failures look like: remote exceptions keep their type; collect keeps failures.

python examples/error_handling.py
"""

from __future__ import annotations

import threading

from starburst_executor import DetachedExecutor
from starburst_executor.errors import PicklingError, StarburstError


def parse(text: str) -> int:
    return int(text)  # raises ValueError for "x"


def main() -> dict[str, int]:
    counts = {"completed": 0, "failed": 0}
    with DetachedExecutor(max_workers=2) as ex:
        futures = [ex.submit(parse, t) for t in ["1", "2", "x", "4"]]
        try:
            futures[2].result(timeout=300)
        except ValueError as err:  # the original type, remote traceback as __cause__
            print(f"task {futures[2].task_id} raised ValueError: {err}")
            print(f"remote traceback ends with: {str(err.__cause__).strip().splitlines()[-2]}")
        for outcome in ex.collect(wait=True, timeout=300):
            counts[outcome.state] += 1
            shown = outcome.value if outcome.ok else repr(outcome.error)
            print(f"  {outcome.task_id}: {outcome.state:<9} {shown}")
        try:
            ex.submit(parse, threading.Lock())  # a lock cannot travel to another machine
        except PicklingError as err:
            print(f"refused at submit: {err}")
        print(ex.status())
        ex.cleanup(force=True)
    try:
        DetachedExecutor.attach("session-not-valid")
    except StarburstError as err:
        print(f"typed error: {type(err).__name__}: {err}")
    return counts


if __name__ == "__main__":
    main()
