"""One error family, so the CLI can tell a user mistake (exit 1, one line) from a bug (exit 3)."""


class ProtospectError(Exception):
    """Base of every error protospect raises on purpose. The message says what, where, and how to fix."""


class ConfigError(ProtospectError):
    """A setting or command-line value that cannot work."""


class DataError(ProtospectError):
    """A data folder, image or mask that is missing, unreadable or of the wrong shape."""


class ArtifactError(ProtospectError):
    """A model artifact (directory, ONNX, engine) that is missing, edited, or from another version."""


class MissingDependencyError(ProtospectError, ImportError):
    """An optional package is not installed; the message names the pip extra."""


class CudaError(ProtospectError):
    """A CUDA driver/runtime call failed."""


class EngineBuildError(ProtospectError):
    """TensorRT could not parse or build the network."""


class SourceError(ProtospectError):
    """A frame source (camera, stream, file, folder) cannot be opened or has gone away."""


class BackendUnavailable(ProtospectError):
    """A remote backend (a Triton server) that cannot be reached, or has not the model asked for.

    At start it is a one-line error; during a run the frame it failed on is logged REJECTED with the reason.
    """
