"""What the line adapters counted, in one dict: ``summary.json`` ("line") and the live page (state.json "line").

    {"state": "READY", "triggers": 12, "triggers_refused": 3, "acks_without_result": 1, "stray_results": 0,
     "modbus": {"clients": 1, "disconnects": 0, "disconnects_mid_handshake": 0, "errors": 0, "requests": 480},
     "opcua":  {"clients": 1, "disconnects": 1, "disconnects_mid_handshake": 1, "errors": 0, "calls": 25},
     "mqtt":   {"published": 250, "spooled": 250, "publish_failures": 7, "connects": 2, "reconnects": 1,
                "disconnects": 1, "connect_failures": 4, "refused": 0, "overflow": 0, "spool_failures": 0,
                "pending_bytes": 0}}

The handshake keys appear with --trigger plc, an adapter's block when it runs. None of these failures stops the
inspection or loses a line of verdicts.jsonl (docs/integration.md, "When something fails").
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# the counters that mean something went wrong (line_text names them; the rest are activity)
FAILURES = ("triggers_refused", "acks_without_result", "stray_results", "disconnects_mid_handshake", "errors",
            "publish_failures", "disconnects", "connect_failures", "refused", "overflow", "spool_failures")


class LineStatus:
    def __init__(self, handshake=None):
        self.handshake = handshake
        self.adapters: dict = {}

    def add(self, name: str, adapter) -> None:
        """``adapter.stats()`` -> dict of counters, read at every snapshot."""
        if adapter is not None:
            self.adapters[name] = adapter

    def __bool__(self) -> bool:
        return self.handshake is not None or bool(self.adapters)

    def snapshot(self) -> dict:
        out: dict = {}
        if self.handshake is not None:
            s = self.handshake.snapshot()
            out.update(state=s.state, triggers=s.trigger_count, triggers_refused=s.refused_triggers,
                       acks_without_result=s.ignored_acks, stray_results=s.stray_results)
        for name, adapter in self.adapters.items():
            try:
                out[name] = dict(adapter.stats())
            except Exception as err:  # noqa: BLE001 - the counters never stop the page or the summary
                out[name] = {"stats_error": str(err)}
        return out


def line_text(line: dict) -> str:
    """One line for serve's printed summary: the non-zero failure counters (or that there were none)."""
    parts = [f"{k.replace('_', ' ')} {line[k]}" for k in FAILURES if line.get(k)]
    for name, block in line.items():
        if isinstance(block, dict):
            bad = [f"{k.replace('_', ' ')} {block[k]}" for k in FAILURES if block.get(k)]
            if bad:
                parts.append(f"{name}: " + ", ".join(bad))
    return "line I/O: " + ("; ".join(parts) if parts else "no failures counted") + " (summary.json \"line\")"
