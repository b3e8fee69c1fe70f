"""Model files; importing this package registers every model (explicit imports, no auto-discovery)."""

from hrlf.models import backbone, hrlf  # noqa: F401
