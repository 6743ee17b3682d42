"""The fault-injection suite: vendor fakes under random faults, crashes, a bad-input corpus and security checks.

See README.md in this folder for the figures it prints and the command that reproduces them.
"""
