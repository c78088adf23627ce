"""apigate: a clustered API gateway with exact distributed rate limits."""

__version__ = "0.1.0"
