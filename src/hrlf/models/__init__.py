"""Model files; importing this package registers every model (explicit imports, no auto-discovery)."""

from hrlf.models import (  # noqa: F401
    backbone,
    corrkd,
    cubemlp,
    dmd,
    gcnet,
    hrlf,
    mctn,
    self_mm,
    smil,
    transm,
)
