"""Byte stores a snapkit store sits on: the `Backend` protocol and its implementations."""
