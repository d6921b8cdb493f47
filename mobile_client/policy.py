"""The consent texts the person agrees to, and their versions (the compliance package's files).

The server refuses a consent that names another version than its current policy, so the app
shows and sends exactly what `compliance/policies/<purpose>.yaml` says (bundled in the APK).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

POLICY_DIR = Path(__file__).resolve().parents[1] / "compliance" / "policies"
FALLBACK_VERSION = "1"


@dataclass(frozen=True)
class Policy:
    purpose: str
    version: str
    title: str
    text: str


@lru_cache
def policy(purpose: str) -> Policy:
    path = POLICY_DIR / f"{purpose}.yaml"
    if not path.exists():
        return Policy(purpose, FALLBACK_VERSION, purpose.replace("_", " ").capitalize(), "")
    import yaml

    d = yaml.safe_load(path.read_text())
    return Policy(purpose, str(d.get("version", FALLBACK_VERSION)), str(d.get("title", "")), str(d.get("text", "")))
