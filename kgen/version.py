"""kgen's version: part of the build identity the tuning DB and exports key timings by."""
__version__ = "0.1.0"
