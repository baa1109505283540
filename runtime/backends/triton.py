"""Triton Inference Server backend (issue 18): frames go to a remote model over gRPC, verdicts stay local.

    backend = TritonBackend("flange", "gpu-server:8001")   # serve flange --backend triton --triton-url ...
    with backend:                      # connects, reads the model's config.pbtxt parameters
        amap, score = backend.infer(img)

The model is one written by `protospect export ART --triton-repo DIR`: its config ``parameters`` carry the
protospect.* metadata (input size, threshold, map range, metadata hash), so this backend judges without
the graph, exactly as the local backends do from the graph's metadata. Each frame is sent as a batch of
one; the server's dynamic batcher stacks concurrent frames (other cameras, other stations).

A server that cannot be reached at start, or that has no such model, is a one-line BackendUnavailable.
A server lost during a run is not a crash: the frame that failed is retried while the backend reconnects
(a fresh gRPC channel, with backoff, for up to ``retry_s``); if the server is still away the frame is
given up (BackendUnavailable: the pipeline logs it REJECTED with the reason) and the next frame tries
again. ``reconnects`` (connection re-established after a loss) and ``failed_frames`` are in describe()
and so in summary.json. Needs ``pip install 'protospect[triton]'`` (tritonclient[grpc]; no torch).
"""
from __future__ import annotations

import logging
import re
import time

import numpy as np

from protospect._optional import require
from protospect.errors import ArtifactError, BackendUnavailable, ConfigError
from protospect.runtime.backends.base import BackendBase
from protospect.runtime.model_info import ModelInfo

log = logging.getLogger(__name__)

INPUT = "image"
OUTPUTS = ("anomaly_map", "image_score")
URL_RE = re.compile(r"^(?:grpc://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def parse_url(url: str) -> str:
    """'HOST:PORT' (or grpc://HOST:PORT) -> 'HOST:PORT' for tritonclient.grpc; ConfigError otherwise."""
    m = URL_RE.match((url or "").strip())
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ConfigError(f"--triton-url {url!r}: give the server's gRPC address as HOST:PORT, e.g. 127.0.0.1:8001")
    return f"{m.group(1)}:{int(m.group(2))}"


def _message(err) -> str:
    """One line from a tritonclient InferenceServerException (its gRPC text can span lines)."""
    text = err.message() if hasattr(err, "message") and callable(err.message) else str(err)
    return " ".join(str(text).split())[:300]


def config_params(config: dict) -> dict:
    """config.pbtxt ``parameters`` (as tritonclient's as_json dict) -> {key: string value}."""
    return {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


def check_config(config: dict, hw: tuple[int, int], where: str) -> None:
    """The contract's I/O in the served model's config: uint8 image [H,W,3] (per item), the two outputs."""
    batched = int(config.get("max_batch_size", 0) or 0) > 0
    h, w = hw
    want = [h, w, 3] if batched else [1, h, w, 3]
    inputs = {i["name"]: i for i in config.get("input", [])}
    image = inputs.get(INPUT)
    if image is None or image.get("data_type") != "TYPE_UINT8":
        got = ", ".join(f"{n}:{i.get('data_type')}" for n, i in inputs.items())
        raise ArtifactError(f"{where} must take input '{INPUT}' TYPE_UINT8 {want}; it takes {got}")
    dims = [int(d) for d in image.get("dims", [])]
    if dims != want:
        raise ArtifactError(f"{where}: input '{INPUT}' has dims {dims}, its parameters say {want}")
    if len(inputs) > 1:
        raise ArtifactError(f"{where} takes inputs {', '.join(sorted(inputs))}; protospect feeds '{INPUT}' only")
    missing = [o for o in OUTPUTS if o not in {o["name"] for o in config.get("output", [])}]
    if missing:
        raise ArtifactError(f"{where} lacks output(s) {', '.join(missing)}")


class TritonBackend(BackendBase):
    name = "triton"

    def __init__(self, model_name: str, url: str, *, version: str = "", timeout_s: float = 10.0,
                 retry_s: float = 2.0, backoff_s: float = 0.1):
        super().__init__()
        self.model_name = model_name
        self.url = parse_url(url)
        self.version = str(version or "")
        self.timeout_s = timeout_s    # one inference (a hung server fails the frame after this)
        self.retry_s = retry_s        # how long one frame waits for a lost server to come back
        self.backoff_s = backoff_s
        self.reconnects = 0           # connection re-established after a loss
        self.failed_frames = 0        # frames given up (logged REJECTED by the pipeline)
        self.batched = False
        self._grpc = None
        self._client = None
        self._lost = False

    @property
    def where(self) -> str:
        return f"Triton model '{self.model_name}' at {self.url}"

    # -- connection -------------------------------------------------------------------------------------
    def _new_client(self):
        self._close_client()
        self._client = self._grpc.InferenceServerClient(self.url)
        return self._client

    def _close_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 (a channel to a dead server may fail to close; it is dropped anyway)
                pass
            self._client = None

    def activate(self) -> None:
        self._grpc = require("tritonclient.grpc", "triton")
        errors = require("tritonclient.utils", "triton")
        client = self._new_client()
        try:
            client.is_server_live(client_timeout=self.timeout_s)
        except errors.InferenceServerException as err:
            self._close_client()
            raise BackendUnavailable(f"no Triton server answers at {self.url} ({_message(err)}); start it or fix "
                                     "--triton-url (HOST:PORT of its gRPC endpoint, 8001 by default)") from err
        try:
            config = client.get_model_config(self.model_name, self.version, as_json=True,
                                             client_timeout=self.timeout_s)["config"]
            ready = client.is_model_ready(self.model_name, self.version, client_timeout=self.timeout_s)
        except errors.InferenceServerException as err:
            names = self._served_models(errors)
            self._close_client()
            raise BackendUnavailable(f"the Triton server at {self.url} has no model '{self.model_name}'"
                                     f"{' version ' + self.version if self.version else ''} ({_message(err)}); "
                                     f"it serves: {names or 'nothing'}") from err
        if not ready:
            self._close_client()
            raise BackendUnavailable(f"{self.where} is not ready (see the server's log: it failed to load or is "
                                     "still loading)")
        params = config_params(config)
        try:
            self.info = ModelInfo.from_metadata(params, f"{self.where} (config.pbtxt parameters)")
        except ArtifactError:
            self._close_client()
            raise
        check_config(config, self.info.input_hw, self.where)
        self.batched = int(config.get("max_batch_size", 0) or 0) > 0
        self._lost = False
        log.info("triton: %s (%s, max_batch_size %s), %s", self.where, config.get("platform") or config.get("backend"),
                 config.get("max_batch_size", 0), self.info.describe())

    def _served_models(self, errors) -> str:
        try:
            index = self._client.get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
        except errors.InferenceServerException:
            return ""
        return ", ".join(sorted({m.get("name", "?") for m in index.get("models", [])}))

    def deactivate(self) -> None:
        self._close_client()

    def _reconnect(self, errors, deadline: float) -> bool:
        """Fresh channels with backoff until the server and the model answer ready, or ``deadline`` passes."""
        delay = self.backoff_s
        while True:
            try:
                client = self._new_client()
                if client.is_server_ready(client_timeout=1.0) and \
                        client.is_model_ready(self.model_name, self.version, client_timeout=1.0):
                    self._lost = False
                    self.reconnects += 1
                    log.warning("triton: reconnected to %s (reconnect %d)", self.where, self.reconnects)
                    return True
            except errors.InferenceServerException:
                pass
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- inference ---------------------------------------------------------------------------------------
    def _send(self, image_u8: np.ndarray):
        shape = [1, *image_u8.shape]
        inp = self._grpc.InferInput(INPUT, shape, "UINT8")
        inp.set_data_from_numpy(image_u8.reshape(shape))
        outs = [self._grpc.InferRequestedOutput(name) for name in OUTPUTS]
        return self._client.infer(self.model_name, [inp], model_version=self.version, outputs=outs,
                                  client_timeout=self.timeout_s)

    def infer_impl(self, image_u8: np.ndarray):
        errors = require("tritonclient.utils", "triton")
        deadline = time.monotonic() + self.retry_s
        result, last = None, "connection lost"
        for _ in range(2):  # the frame, and once more after a reconnect
            if self._lost and not self._reconnect(errors, deadline):
                break
            try:
                result = self._send(image_u8)
                break
            except errors.InferenceServerException as err:
                last = _message(err)
                if not self._lost:
                    log.warning("triton: %s failed (%s); reconnecting", self.where, last)
                self._lost = True
        if result is None:
            self.failed_frames += 1
            raise BackendUnavailable(f"triton server {self.url} unavailable: {last}")
        return self._outputs(result)

    def _outputs(self, result):
        h, w = self.info.input_hw
        amap, score = result.as_numpy(OUTPUTS[0]), result.as_numpy(OUTPUTS[1])
        if amap is None or score is None or amap.size != h * w or score.size < 1:
            self.failed_frames += 1
            got = "missing" if amap is None or score is None else f"{amap.size} map values, {score.size} scores"
            raise BackendUnavailable(f"{self.where} answered with {got}, expected {h}x{w} map values and 1 score "
                                     "(a python-backend server whose Python has numpy 2 answers empty tensors: "
                                     "docs/runtime.md [fleet])")
        return amap, score

    def describe(self) -> dict:
        return {**super().describe(), "model": self.model_name, "url": self.url, "version": self.version or "latest",
                "reconnects": self.reconnects, "failed_frames": self.failed_frames}
