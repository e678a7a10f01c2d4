"""mobilemoe: a reproducible pipeline for on-device Mixture-of-Experts LMs (MobileMoE).

Kept import-light: the interpreter start-up hook imports this package.
"""

__version__ = "0.1.0"
