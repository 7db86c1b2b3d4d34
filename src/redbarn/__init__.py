"""redbarn: a remote execution cluster for Bazel and every REAPI v2 client."""

__version__ = "0.1.0"
