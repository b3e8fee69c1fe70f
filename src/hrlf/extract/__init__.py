"""Offline feature extraction from raw media into the field's MMSA format (``hrlf extract``).

The extractors come from the optional media extra (``make media``; see ``docs/extraction.md``) and are imported
only when used, so the core install and its tests never need them. Modules:

* :mod:`~hrlf.extract.align` — token intervals and frame pooling (numpy only);
* :mod:`~hrlf.extract.media` — decoding with PyAV;
* :mod:`~hrlf.extract.text`, :mod:`~hrlf.extract.speech`, :mod:`~hrlf.extract.audio`, :mod:`~hrlf.extract.vision`
  — the pretrained extractors;
* :mod:`~hrlf.extract.assets` — packaged models taken out of registry wheels at install time;
* :mod:`~hrlf.extract.pipeline` — per-clip extraction, availability, workers, resume and the MMSA writer.
"""

import os

from hrlf.errors import HrlfError


def offline() -> None:
    """Switch the model hubs off for this process (every model here loads from a local path anyway)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


class MediaUnavailable(HrlfError, RuntimeError):
    """A media extractor's package is not installed; the message says how to get it."""


def require(module: str) -> None:
    """Raise :class:`MediaUnavailable` naming ``module`` when it cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MediaUnavailable(
            f"the media extractors need the package '{module}', which is not installed: run `make media` and use "
            ".venv-media/bin/hrlf (or pip install 'hrlf[media]' in an environment of its own)"
        )
