"""
Tests of ReplayForge: unit tests per module, end-to-end tests of the daemons.
"""
