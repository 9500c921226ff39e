"""The HTTP output (``[api]``): ``nixlog.api_client`` is its module, kept under its old name
for scripts and tests that import it; this name makes it easy to find among the outputs."""

from nixlog.api_client import ApiClient, PublishResult, classify_status

__all__ = ["ApiClient", "PublishResult", "classify_status"]
