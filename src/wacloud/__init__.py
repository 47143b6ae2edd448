"""wacloud: a multi-tenant WhatsApp messaging gateway (Meta Cloud API, Whapi, Chakra)."""

from importlib.metadata import PackageNotFoundError, version

try:
    # pyproject.toml is the one place the version is written; the installed metadata has it.
    __version__ = version("wacloud")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
