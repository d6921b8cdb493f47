"""Session-level continuous authentication.

* `continuous.env`: the Gymnasium environment of Bansal & Ouda 2024 (keystroke windows,
  corruption by other people's windows, accept/reject rewards);
* `continuous.agent`: their DDQN agent (torch; imported only where used);
* `continuous.evaluate`: their protocol reproduced and a held-out protocol (`cadence bench rl`);
* `continuous.session`: `SessionRiskTracker`, the sliding-window session risk the server uses.

Top-level imports stay light (no torch): the server imports `continuous.session`.
"""

from continuous.session import SessionRiskTracker, SessionState

__all__ = ["SessionRiskTracker", "SessionState"]
