"""The version of lipcheck, which every report records and `lipcheck --version` prints."""

__version__ = "0.1.0"
