"""Helpers shared by the test suites: free ports, real peer processes."""
