"""numba kernels: plain loops over C-contiguous float64/int64 arrays, no Python objects.

Every kernel is ``@njit(cache=True, nogil=True)``: compiled once per CPU into the cache directory
(see `forecaster.cache`) and run without the GIL so an agent can call it from a worker thread
while its event loop keeps serving. Shapes are in each docstring; the typed wrappers in the
package modules check them before a kernel runs, so a kernel never sees a wrong shape.
"""
