"""Cadence's shell: the `cadence` command and the settings every part reads.

This package holds no biometric logic; it wires the packages of the data flow
(modalities -> fusion -> server -> compliance, evaluation beside them) into one CLI.
"""

__version__ = "0.1.0"
