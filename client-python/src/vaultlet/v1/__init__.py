"""Generated messages and stubs of the vaultlet.v1 wire API (proto/vaultlet/v1).

Written by client-python/scripts/generate.py; do not edit.
"""
