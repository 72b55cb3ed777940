"""The selective scan and the 2-D scan orders it runs along; nothing model-specific."""

from ssm_jax.ssm.cross_scan import cross_merge, cross_scan
from ssm_jax.ssm.scan_orders import METHODS, inverse_orders, scan_orders
from ssm_jax.ssm.selective_scan import IMPLS, selective_scan

__all__ = ["IMPLS", "METHODS", "cross_merge", "cross_scan", "inverse_orders", "scan_orders", "selective_scan"]
