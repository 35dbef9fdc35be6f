"""Decode behaviour from calcium imaging in NWB with language-model backbones."""

from ._version import __version__

__all__ = ["Decoder", "FitConfig", "__version__", "inspect_source", "load_session", "read_results"]


def __getattr__(name: str):  # lazy: `import nwb_llmdecode` stays cheap
    if name == "Decoder":
        from .estimator import Decoder

        return Decoder
    if name == "FitConfig":
        from .config import FitConfig

        return FitConfig
    if name == "read_results":
        from .io.results import read_results

        return read_results
    if name == "load_session":
        from .io.read import load_session

        return load_session
    if name == "inspect_source":
        from .io.read import inspect_source

        return inspect_source
    raise AttributeError(f"module 'nwb_llmdecode' has no attribute {name!r}")
