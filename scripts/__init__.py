"""Operator scripts that run against a live VoiceForge server and print figures (hostile.py, ...)."""
