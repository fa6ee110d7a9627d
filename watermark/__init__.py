"""Watermark embedding, decoding and detection (learned and classical methods).

The methods arrive with the watermark subsystem issue; this package imports nothing above it.
"""
