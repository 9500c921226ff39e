"""End-to-end fault-injection tests of the real daemon (README: Guarantees); see README.md here."""
