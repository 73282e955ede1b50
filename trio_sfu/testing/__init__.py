"""Test harness pieces that ship with the package: the network impairment relay."""

from __future__ import annotations
