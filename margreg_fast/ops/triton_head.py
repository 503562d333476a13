"""Triton kernels for the fused energy head (placeholder until the Triton backend lands)."""
import torch


def is_available(device: torch.device) -> bool:
    return False


def unavailable_reason(device: torch.device) -> str:
    return "not implemented yet"
