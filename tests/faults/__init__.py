"""End-to-end fault-injection tests of the real daemon (DESIGN §9); see README.md here."""
