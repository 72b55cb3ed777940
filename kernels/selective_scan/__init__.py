"""Fused Pallas (Triton) selective scan, forward and backward; see NOTES.md for the design."""

from kernels.selective_scan.ops import selective_scan_pallas

__all__ = ["selective_scan_pallas"]
