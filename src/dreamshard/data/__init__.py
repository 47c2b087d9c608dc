"""Data: tables and their statistics, synthetic pools, DLRM dataset files, the ids a
backend feeds, the features the networks read, and placement tasks and suites.

Imports only the core modules (types, errors, constants, units, fileio)."""
