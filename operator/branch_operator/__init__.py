"""OMS branch operator: Kubernetes control plane for OMS schema-branch lifecycle."""

__version__ = "0.1.0"
