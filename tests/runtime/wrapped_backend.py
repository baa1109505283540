"""A backend wrapper for pipeline tests: subclasses change infer() (slow, broken) and keep the rest."""
from __future__ import annotations


class WrappedBackend:
    name = "wrapped"

    def __init__(self, inner):
        self.inner = inner

    def __enter__(self):
        self.inner.__enter__()
        self.info = self.inner.info
        self.last_device_ms, self.last_stage_ms = None, {}
        return self

    def __exit__(self, *exc):
        self.inner.__exit__(*exc)

    def infer(self, img):
        return self.inner.infer(img)

    def describe(self):
        return {"backend": self.name}
