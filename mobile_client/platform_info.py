"""Where the app runs, without importing Kivy (python-for-android sets these variables)."""

from __future__ import annotations

import os
import sys


def is_android() -> bool:
    """True inside a python-for-android build."""
    return "ANDROID_ARGUMENT" in os.environ or "ANDROID_PRIVATE" in os.environ or hasattr(sys, "getandroidapilevel")


def can_run_flower() -> bool:
    """Flower's SuperNode needs grpcio, which python-for-android does not provide."""
    if is_android():
        return False
    try:
        import flwr  # noqa: F401
    except ImportError:
        return False
    return True
