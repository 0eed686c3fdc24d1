"""xvtrace: capture, reconstruct, replay and regression-test virtio on Xen."""

__version__ = "0.1.0"

from xvtrace import kernel_cache as _kernel_cache

_kernel_cache.use()  # before any kernel is defined: numba's cache, named by this code's hash
