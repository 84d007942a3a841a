"""Part 1 of 2: start a session, submit work, print its id, detach and exit.

python examples/detach_submit.py        # prints a session id
python examples/attach_collect.py ID    # later, from any interpreter
"""

from __future__ import annotations

import time

from starburst_executor import DetachedExecutor


def slow_square(x: int) -> int:
    time.sleep(0.05)
    return x * x


def main(n: int = 20) -> str:
    ex = DetachedExecutor(max_workers=2, session_timeout=120)
    for i in range(n):
        ex.submit(slow_square, i)
    session_id = ex.detach()
    print(session_id)
    return session_id


if __name__ == "__main__":
    main()
