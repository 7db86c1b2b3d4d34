"""Protobuf sources (ours, wire-compatible with upstream) and their generated modules.

Regenerate with scripts/gen-protos; never edit the *_pb2* files by hand.
"""
