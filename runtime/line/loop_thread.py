"""The PLC adapters' server thread (modbus.py, opcua.py): an asyncio loop of its own in a daemon thread."""
from __future__ import annotations

import asyncio
import threading


def start_loop_thread(owner, main, name: str, ready: threading.Event, started: dict, timeout: float) -> bool:
    """Run the coroutine ``main()`` on a new event loop in a daemon thread; ``owner._loop`` and ``owner._thread``
    are set. Wait up to ``timeout`` s for ``ready``; False (after joining the thread for 5 s) when it did not
    come or ``main`` put an "error" into ``started``."""

    def thread_main():
        owner._loop = asyncio.new_event_loop()
        try:
            owner._loop.run_until_complete(main())
        finally:
            owner._loop.close()

    owner._thread = threading.Thread(target=thread_main, name=name, daemon=True)
    owner._thread.start()
    if not ready.wait(timeout) or "error" in started:
        owner._thread.join(5)
        return False
    return True
