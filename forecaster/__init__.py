"""Site load forecasting, flexibility envelope and allocation: numba kernels over numpy arrays.

Pure numerics without I/O. It imports nothing from `agent`, `uftp` or `ocpp_bridge`.
"""
