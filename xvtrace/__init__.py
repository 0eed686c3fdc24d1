"""xvtrace: capture, reconstruct, replay and regression-test virtio on Xen."""

__version__ = "0.1.0"
