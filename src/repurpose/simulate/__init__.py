"""The registry simulator with planted truth: the demo input and the test bed.

Owns: simulated population, prescription and MS registry extracts and their ground truth. Imports only
the shared top-level modules, never an analysis stage (the truth must not be derived from the methods).
"""
