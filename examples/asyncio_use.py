"""Await remote calls from asyncio: futures wrap with asyncio.wrap_future.

python examples/asyncio_use.py
"""

from __future__ import annotations

import asyncio

from starburst_executor import StarburstExecutor


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


async def main() -> list[int]:
    loop = asyncio.get_running_loop()
    with StarburstExecutor(max_workers=2) as ex:
        # run_in_executor works as with any concurrent.futures executor...
        first = await loop.run_in_executor(ex, fib, 10)
        # ...and so does wrapping futures you already have.
        rest = await asyncio.gather(*(asyncio.wrap_future(ex.submit(fib, n)) for n in (20, 30)))
    values = [first, *rest]
    print(f"fib(10, 20, 30) = {values}")
    return values


if __name__ == "__main__":
    asyncio.run(main())
