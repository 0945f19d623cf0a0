"""The ``calico`` command-line entry point: the only package that imports every wing."""
__version__ = "0.1.0"
