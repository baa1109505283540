"""``serve --trigger hardware``: put a GenICam camera into hardware-trigger mode before acquisition starts.

Standard SFNC features on the camera's node map (harvesters: ``acquirer.remote_device.node_map``):
TriggerSelector = FrameStart (when the camera has it), TriggerMode = On, TriggerSource = the chosen line
(``--trigger-source``, default Line0). The camera then delivers one frame per pulse on that line and
HarvesterSource.read() waits quietly between parts; serve judges every delivered frame (queue policy
"block": none is dropped). A camera that lacks a feature or refuses a value is a one-line SourceError.
"""
from __future__ import annotations

from protospect.errors import SourceError

DEFAULT_TRIGGER_SOURCE = "Line0"


def set_hardware_trigger(acquirer, trigger_source: str, name: str) -> None:
    node_map = acquirer.remote_device.node_map
    settings = [("TriggerSelector", "FrameStart")] if hasattr(node_map, "TriggerSelector") else []
    settings += [("TriggerMode", "On"), ("TriggerSource", trigger_source)]
    for feature, value in settings:
        node = getattr(node_map, feature, None)
        if node is None:
            raise SourceError(f"{name}: the camera has no {feature} feature: it cannot be hardware-triggered "
                              "(use --trigger free or plc)")
        try:
            node.value = value
        except Exception as err:  # genicam raises its own types (AccessException, InvalidArgumentException)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SourceError(f"{name}: cannot set {feature}={value}: {first}") from None
