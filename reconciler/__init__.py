"""reconciler: GitOps for Oystehr Project settings."""

__version__ = "0.1.0"
